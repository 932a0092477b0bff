"""The neural engine under the user's controls, with a small model pair in a temporary model store:
each converted stem lands at its reference stem's loudness (the balance is the reference's), amount 0
returns the input (and runs no network), amount 0.5 lands halfway between the input and the network's
output and halfway to the reference's loudness, per-stem amounts override the amount, a partial
--match takes only those aspects, and a silent reference stem leaves its input stem as it was."""
import numpy as np
import pytest
import torch

from mixdaemon.audio.dsp import loudness_lufs
from mixdaemon.audio.examples import synth_song
from mixdaemon.mixing import neural
from mixdaemon.mixing.neural import NeuralEngine
from mixdaemon.mixing.settings import TransferSettings
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import ENGINES_ENV
from mixdaemon.nets.store import save_pair
from tests.support.models import v2_model

torch.set_num_threads(2)
ENCODER = EncoderConfig(channels=(4, 8, 16), kernels=(9, 5, 5), strides=(16, 8, 4))
CLONER = ClonerConfig(nblocks=2, channel_width=4, kernel_size=3, cond_dim=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    save_pair(folder / "tiny.safetensors", v2_model(FXencoder(ENCODER)), v2_model(MixFXcloner(CLONER)))
    return folder


@pytest.fixture
def engine_with(store, monkeypatch):
    monkeypatch.setenv(ENGINES_ENV, str(store))

    def make(**settings) -> NeuralEngine:
        settings = {"refine_steps": 0, **settings}
        return NeuralEngine.from_settings(TransferSettings(engine="neural", model="tiny", backend="torch", **settings))
    return make


@pytest.fixture(scope="module")
def song():
    return synth_song(2.0, seed=0), synth_song(2.0, seed=1)


def test_amount_0_returns_the_input_and_runs_no_network(engine_with, song, monkeypatch):
    stems, reference = song
    engine = engine_with(amount=0.0)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the network ran for a stem at amount 0")
    monkeypatch.setattr(neural, "convert", must_not_run)
    monkeypatch.setattr(neural, "embed_reference", must_not_run)
    out = engine.convert(stems, reference).stems
    assert set(out) == set(stems)
    for name, x in stems.items():
        assert np.array_equal(out[name], x), name


def _blend_residual(y: np.ndarray, x: np.ndarray, full: np.ndarray) -> float:
    """How far y is from the nearest a·x + b·full, relative to y's RMS: 0 when y is a gain times a
    blend of the input and the full conversion."""
    basis = np.stack([x.ravel(), full.ravel()], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, y.ravel(), rcond=None)
    return float(np.sqrt(np.mean((basis @ coef - y.ravel()) ** 2) / np.mean(y.astype(np.float64) ** 2)))


def test_every_stem_lands_at_its_reference_stems_loudness(engine_with, song):
    """The balance between the stems is the reference's, whatever level the network left."""
    stems, reference = song
    out = engine_with().convert(stems, reference).stems
    for name in stems:
        assert abs(loudness_lufs(out[name]) - loudness_lufs(reference[name])) < 0.1, name


def test_amount_half_lands_halfway_between_the_input_and_the_network(engine_with, song):
    stems, reference = song
    full = engine_with().convert(stems, reference).stems
    half = engine_with(amount=0.5).convert(stems, reference).stems
    for name, x in stems.items():
        assert np.sqrt(np.mean((full[name] - x) ** 2)) > 1e-3, f"{name}: the network changed nothing to halve"
        assert _blend_residual(half[name], x, full[name]) < 1e-4, name
        halfway = (loudness_lufs(x) + loudness_lufs(reference[name])) / 2
        assert abs(loudness_lufs(half[name]) - halfway) < 0.1, name


def test_a_stem_amount_overrides_the_amount(engine_with, song):
    stems, reference = song
    full = engine_with().convert(stems, reference).stems
    out = engine_with(stem_amount={"vocals": 0.0, "bass": 0.25}).convert(stems, reference).stems
    assert np.array_equal(out["vocals"], stems["vocals"])
    bass = stems["bass"]
    assert _blend_residual(out["bass"], bass, full["bass"]) < 1e-4
    quarter = loudness_lufs(bass) + 0.25 * (loudness_lufs(reference["bass"]) - loudness_lufs(bass))
    assert abs(loudness_lufs(out["bass"]) - quarter) < 0.1
    for name in ("drums", "other"):
        np.testing.assert_array_equal(out[name], full[name])


def test_match_level_takes_only_the_references_balance(engine_with, song):
    """--match level: each stem is the input times one gain, landing at its reference stem's
    loudness; the network's changes (tone, dynamics, width) are not taken."""
    stems, reference = song
    full = engine_with().convert(stems, reference).stems
    out = engine_with(match=("level",)).convert(stems, reference).stems
    for name, x in stems.items():
        gain = out[name][np.abs(x) > 1e-3] / x[np.abs(x) > 1e-3]
        np.testing.assert_allclose(gain, gain[0], rtol=1e-4, err_msg=name)    # one gain for the whole stem
        assert abs(loudness_lufs(out[name]) - loudness_lufs(reference[name])) < 0.1, name
        assert not np.allclose(out[name], full[name], atol=1e-3), name


def test_a_partial_match_is_scaled_by_the_amount(engine_with, song):
    stems, reference = song
    reference = {**reference, "drums": reference["drums"] * np.float32(0.5)}  # 6 dB to move
    x = stems["drums"]
    moved = engine_with(match=("level",), amount=0.5).convert(stems, reference).stems["drums"]
    full = engine_with(match=("level",)).convert(stems, reference).stems["drums"]
    half_db, all_db = (loudness_lufs(y) - loudness_lufs(x) for y in (moved, full))
    assert abs(all_db) > 0.5 and half_db == pytest.approx(all_db / 2, abs=0.05)


@pytest.mark.parametrize("peak", [0.0, 3e-4])  # digital silence; noise peaking at −70 dBFS
def test_a_silent_reference_stem_keeps_its_input_stem(engine_with, song, peak):
    """Not the FX-normalized stem, not a failed job: the input stem as it came."""
    stems, reference = song
    noise = np.random.default_rng(0).uniform(-1, 1, reference["vocals"].shape).astype(np.float32)
    silent = peak * noise
    engine = engine_with()
    full = engine.convert(stems, reference).stems
    out = engine.convert(stems, {**reference, "vocals": silent}).stems
    assert np.array_equal(out["vocals"], stems["vocals"])
    for name in ("drums", "bass", "other"):
        np.testing.assert_array_equal(out[name], full[name])


def test_a_fade_to_reference_b_is_blended_by_the_amount_too(engine_with, song):
    """The style and the loudness fade from reference A's at the start to B's at the end."""
    stems, reference = song
    reference_b = synth_song(2.0, seed=2)
    for name in stems:  # B's stems 6 dB quieter, so that the fade is heard in the level
        reference_b[name] = reference_b[name] * np.float32(0.5)
    full = engine_with().convert(stems, reference, reference_b_stems=reference_b).stems
    half = engine_with(amount=0.5).convert(stems, reference, reference_b_stems=reference_b).stems
    quarter = len(stems["drums"]) // 4
    for name, x in stems.items():
        assert np.sqrt(np.mean((full[name] - x) ** 2)) > 1e-3, name
        start_db, end_db = (loudness_lufs(full[name][s]) for s in (slice(0, quarter), slice(-quarter, None)))
        assert end_db < start_db - 2.0, name
        first = slice(0, quarter)
        assert _blend_residual(half[name][first], x[first], full[name][first]) < 0.05, name


def test_the_tone_lands_on_the_reference_stems_tone(song):
    """A darker reference stem (the input's own part low-passed at 800 Hz: the content is the same,
    the tone not) gives an output stem as dark: its upper middle (1.5–4 kHz) against its lows
    (200–600 Hz) lands within 3 dB of the reference's, 15 dB under the input's."""
    from scipy.signal import butter, sosfilt

    from mixdaemon.fx.matching import EQ_GRID_HZ, long_term_spectrum, smoothed_spectrum_db
    stems, reference = song
    dark = sosfilt(butter(2, 800, fs=44100, output="sos"), stems["other"], axis=0).astype(np.float32)
    shipped = NeuralEngine.from_settings(TransferSettings(engine="neural", backend="torch"))  # the default pair
    out = shipped.convert(stems, {**reference, "other": dark}).stems["other"]

    def treble_db(a):
        spectrum = smoothed_spectrum_db(long_term_spectrum(a))
        treble, middle = ((EQ_GRID_HZ > lo) & (EQ_GRID_HZ < hi) for lo, hi in ((1500, 4000), (200, 600)))
        return float(spectrum[treble].mean() - spectrum[middle].mean())
    assert treble_db(dark) < treble_db(stems["other"]) - 15.0
    assert abs(treble_db(out) - treble_db(dark)) < 3.0, (treble_db(out), treble_db(dark), treble_db(stems["other"]))


def test_refine_steps_change_the_conversion_and_keep_the_balance(engine_with, song):
    stems, reference = song
    plain = engine_with().convert(stems, reference).stems
    refined = engine_with(refine_steps=2).convert(stems, reference).stems
    assert any(not np.allclose(refined[name], plain[name], atol=1e-4) for name in stems)
    for name in stems:
        assert abs(loudness_lufs(refined[name]) - loudness_lufs(reference[name])) < 0.1, name
