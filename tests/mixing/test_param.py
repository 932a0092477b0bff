"""The param engine: `transfer --engine param` on real stems writes the stems and an fx_params.json
that describes what was done, in user units; settings of FXmanipulator draws are recovered on
held-out real stems (never trained on)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from mixdaemon.audio.io import read_audio
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import MixdaemonError, ModelFileError
from mixdaemon.evaluation.recovery import parameter_recovery, recovery_errors
from mixdaemon.fx import features as fxfeatures
from mixdaemon.fx.chain import CompressorSettings, EqBand, ReverbSend, StemChain, render
from mixdaemon.fx.features import gated_level_db
from mixdaemon.mixing.param import ParamEngine
from mixdaemon.mixing.param_estimation import (
    ParamPredictor,
    fit_eq,
    fit_eq_with_coloration,
)
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.mixing.transfer import transfer


@pytest.fixture(scope="module")
def predictor():
    return ParamPredictor.load("params-default")  # the shipped predictor (engines/params-default.safetensors)


def stem_files(folder):
    return [str(folder / f"{name}.wav") for name in STEM_NAMES]


# The ranges a DAW accepts for each setting (ReaEQ, ReaComp, track volume/pan/width).
DAW_RANGES = {"freq_hz": (10.0, 22000.0), "gain_db": (-48.0, 48.0), "q": (0.05, 20.0), "threshold_db": (-100.0, 0.0),
              "ratio": (1.0, 100.0), "attack_ms": (0.01, 1000.0), "release_ms": (1.0, 10000.0), "width": (0.0, 8.0),
              "pan": (-1.0, 1.0), "send_db": (-100.0, 24.0), "room_size": (0.0, 1.0)}


def _in_daw_ranges(entry: dict, where: str) -> None:
    values = [(k, v) for band in entry["eq"] for k, v in band.items() if k != "type"]
    values += list(entry["compressor"].items()) + [("width", entry["width"]), ("pan", entry["pan"])]
    values += [(k, v) for k, v in entry["reverb"].items() if v is not None]
    for key, value in values:
        low, high = DAW_RANGES[key]
        assert np.isfinite(value) and low <= value <= high, f"{where}: {key} {value} outside [{low}, {high}]"
    assert np.isfinite(entry["gain_db"]) and -96.0 <= entry["gain_db"] <= 48.0, where


def read_chains(path) -> dict[str, StemChain]:
    """The chains an fx_params.json describes, read as a DAW script reads them (key by key, in user
    units), each setting inside the range a DAW accepts."""
    stems = json.loads(Path(path).read_text())["stems"]
    for name, entry in stems.items():
        _in_daw_ranges(entry, name)
    return {name: StemChain([EqBand(b["type"], b["freq_hz"], b["gain_db"], b["q"]) for b in entry["eq"]],
                            CompressorSettings(**entry["compressor"]), entry["width"], entry["pan"],
                            ReverbSend(**entry["reverb"]), entry["gain_db"])
            for name, entry in stems.items()}


def test_transfer_writes_stems_and_fx_params_that_reproduce_them(real_stems, tmp_path):
    out = tmp_path / "out"
    result = transfer(stem_files(real_stems / "song_a"), stem_files(real_stems / "song_b"), out,
                      TransferSettings(engine="param"))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.wav" for n in (*STEM_NAMES, "mixture")] + ["fx_params.json"])
    assert result.fx_params == str(out / "fx_params.json") and result.model["predictor_sha256"]
    chains = read_chains(result.fx_params)
    assert sorted(chains) == sorted(STEM_NAMES)
    for name, chain in chains.items():
        low_hz = [30, 200, 1000, 3000, 5000]
        high_hz = [200, 1000, 3000, 8000, 10000]
        assert all(lo <= b.freq_hz <= hi and -15 <= b.gain_db <= 15 for b, lo, hi in zip(chain.eq, low_hz, high_hz))
        assert chain.compressor.threshold_db <= 0 and chain.compressor.ratio >= 1 and -1 <= chain.pan <= 1
    outputs = {name: read_audio(out / f"{name}.wav").samples for name in (*STEM_NAMES, "mixture")}
    assert max(true_peak_dbtp(y) for y in outputs.values()) <= -0.9  # never clips: limited under -1 dBTP
    inputs = {name: read_audio(real_stems / "song_a" / f"{name}.wav").samples for name in STEM_NAMES}
    references = {name: read_audio(real_stems / "song_b" / f"{name}.wav").samples for name in STEM_NAMES}
    rendered = {}
    for name in STEM_NAMES:
        # the settings file describes the conversion: rendering it gives the written stem up to the limiter
        rendered[name] = render(inputs[name], chains[name])
        correlation = np.corrcoef(rendered[name].ravel(), outputs[name].ravel())[0, 1]
        assert correlation > 0.98, name
    # the output gain gives each stem the reference stem's level, so the balance between stems follows
    # (before the linked limiter, which then turns the loudest passages of the mix down)
    balance = lambda stems: np.array([gated_level_db(stems[n]) - gated_level_db(stems["drums"]) for n in STEM_NAMES])  # noqa: E731
    np.testing.assert_allclose(balance(rendered), balance(references), atol=0.5)
    np.testing.assert_allclose(balance(outputs), balance(references), atol=1.0)


def test_existing_fx_params_are_not_replaced_without_overwrite(real_stems, tmp_path):
    (tmp_path / "fx_params.json").write_text("{}")
    with pytest.raises(MixdaemonError, match="fx_params.json: already exists"):
        transfer(stem_files(real_stems / "song_a"), stem_files(real_stems / "song_b"), tmp_path,
                 TransferSettings(engine="param"))


def test_a_stem_with_a_silent_reference_keeps_its_sound(predictor, real_stems):
    x = read_audio(real_stems / "song_a" / "bass.wav").samples[:44100 * 4]
    conversion = ParamEngine(predictor).convert({"bass": x}, {"bass": np.zeros_like(x)})
    converted, chains = conversion.stems, conversion.chains
    np.testing.assert_array_equal(converted["bass"], x)
    assert chains["bass"] == StemChain()


def test_the_same_stems_get_the_same_settings_whatever_the_machine_load(predictor, real_stems):
    """Estimation is bounded by a fixed amount of work, not by a clock: a busy machine must not change
    the settings (nor the audio) a job writes."""
    x = {n: read_audio(real_stems / "song_c" / f"{n}.wav").samples[:44100 * 6] for n in STEM_NAMES}
    ref = {n: read_audio(real_stems / "song_a" / f"{n}.wav").samples[:44100 * 6] for n in STEM_NAMES}
    conversion = ParamEngine(predictor, workers=2).convert(x, ref)
    first_audio, first = conversion.stems, conversion.chains
    stop = threading.Event()

    def keep_a_core_busy():
        a = np.ones((300, 300))
        while not stop.is_set():
            a @ a

    hog = threading.Thread(target=keep_a_core_busy)
    hog.start()
    try:
        conversion = ParamEngine(predictor, workers=1).convert(x, ref)
        second_audio, second = conversion.stems, conversion.chains
    finally:
        stop.set()
        hog.join()
    assert first == second
    for name in STEM_NAMES:
        np.testing.assert_array_equal(first_audio[name], second_audio[name])


def test_a_missing_predictor_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelFileError, match="mixdaemon train params"):
        ParamPredictor.load(tmp_path / "none.safetensors")


def test_drawn_settings_are_recovered_on_held_out_real_stems(predictor, real_stems):
    # x = normalized first half of each song, reference = an FXmanipulator draw applied to the
    # normalized second half; the draw's own settings are the truth (evaluation.parameter_recovery).
    report = parameter_recovery(real_stems, predictor, seeds=(0,))
    refined = report["refined"]
    assert refined["eq_curve_rms_db"] <= 3.5            # EQ curve within 3.5 dB RMS (offset-free)
    assert refined["eq_gain_offset_free_abs_db"] <= 4.0  # band gains within 4 dB on average
    assert refined["eq_curve_rms_db"] < report["predicted"]["eq_curve_rms_db"]  # refinement helps
    assert refined["compressor_detected"] >= 0.75 and refined["reverb_detected"] >= 0.75


@pytest.mark.parametrize("name", ["bass", "drums"])
def test_the_eq_is_not_blamed_for_a_heavy_compressors_harmonics(predictor, real_stems, name):
    # The reference is the input through a fast, heavy compressor and nothing else: its spectrum
    # moves (harmonics), but the EQ that goes in front of that compressor should stay flat. This
    # checks the refit's mechanism (the chain's own coloration measured and taken out), given the
    # compressor; how well the whole estimate does is the recovery test's job.
    x = read_audio(real_stems / "song_a" / f"{name}.wav").samples[:44100 * 10]
    fx = fxfeatures.measure(x)
    chain = StemChain(compressor=CompressorSettings(fx.level_db - 20.0, 20.0, 2.0, 60.0))
    fr = fxfeatures.measure(render(x, chain))
    unit = predictor.predict(fxfeatures.pair_vector(fx, fr))[0]

    def curve_rms(bands):  # offset-free RMS of the EQ curve against flat, 40 Hz–16 kHz
        return recovery_errors(StemChain(eq=bands), StemChain())["eq_curve_rms_db"]

    assert curve_rms(fit_eq(unit, fr.shape_db - fx.shape_db)) > 3.0   # the whole change, blamed on the EQ
    assert curve_rms(fit_eq_with_coloration(unit, chain, fr.shape_db - fx.shape_db, x, fx)) < 1.0
