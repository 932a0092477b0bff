"""FXmanipulator (docs/ALGORITHMS.md §2): shared draws, RMS matching, the fixed probabilities, scheduling,
deterministic re-application and the reverb variants."""
import json

import numpy as np
import pytest
import soundfile as sf

from mixdaemon.audio import dsp
from mixdaemon.errors import ConfigError
from mixdaemon.fx.manipulator import (
    FX_NAMES,
    MARGIN_SAMPLES,
    STEMS,
    FXManipulator,
    Imager,
    Panner,
    ParametricEQ,
    schedule_from_losses,
)

SR = dsp.WORKING_RATE


def noise(seed: int, seconds: float = 1.0, level: float = 0.05) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((int(seconds * SR), 2)) * level).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def read_stem(folder, stem: str, seconds: float = 2.0) -> np.ndarray:
    audio, sr = sf.read(folder / f"{stem}.wav", dtype="float32", start=SR, frames=int(seconds * SR), always_2d=True)
    assert sr == SR
    return audio


def decaying_noise_ir(seed: int, seconds: float, predelay: int = 0) -> np.ndarray:
    """Exponentially decaying stereo noise (RT60 = seconds), its first sample the largest."""
    n = int(seconds * SR)
    decay = np.exp(-6.9 * np.arange(n) / n)
    tail = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 2)) * decay[:, None]
    tail[0] = 1.0
    return np.concatenate([np.zeros((predelay, 2)), tail])


# --- one draw, every signal ------------------------------------------------------------------------

@pytest.mark.parametrize("stem", STEMS)
def test_one_draw_is_applied_to_every_signal(real_stems, stem):
    a, b = read_stem(real_stems / "song_a", stem), read_stem(real_stems / "song_b", stem)
    manipulator = FXManipulator(stem)
    for seed in range(3):
        outputs, drawn = manipulator.manipulate([a, a, b], np.random.default_rng(seed))
        assert np.array_equal(outputs[0], outputs[1])
        assert not np.array_equal(outputs[0], outputs[2])
        # B received exactly the parameters A did, and the draw does not depend on the signals.
        assert np.array_equal(manipulator.apply_params([b], drawn)[0], outputs[2])
        assert manipulator.manipulate([b], np.random.default_rng(seed))[1] == drawn


def test_same_seed_same_output_other_seed_other_output():
    x = noise(1)
    manipulator = FXManipulator("vocals")
    first = manipulator.manipulate([x], np.random.default_rng(7))[0][0]
    again = manipulator.manipulate([x], np.random.default_rng(7))[0][0]
    other = manipulator.manipulate([x], np.random.default_rng(8))[0][0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_apply_params_reproduces_manipulate_through_json(rng):
    x, y = noise(2), noise(3)
    for stem in STEMS:
        manipulator = FXManipulator(stem)
        outputs, drawn = manipulator.manipulate([x, y], rng)
        replayed = manipulator.apply_params([x, y], json.loads(json.dumps(drawn)))
        assert all(np.array_equal(o, r) for o, r in zip(outputs, replayed))


# --- RMS matching, gain, clamping -------------------------------------------------------------------

@pytest.mark.parametrize("fx", ["eq", "comp", "pan", "imager", "reverb"])
@pytest.mark.parametrize("stem", ["drums", "vocals"])
def test_every_processor_but_gain_keeps_the_rms(stem, fx):
    # A 0.3 s fade-in: an abrupt start passes the compressor's first attack time uncompressed (its
    # state starts at zero), and after the RMS match those samples can exceed full scale and be
    # clamped — that is what the 2048-sample margins are for; here it would hide the RMS match.
    x = noise(4) * np.minimum(1.0, np.arange(SR) / (0.3 * SR))[:, None].astype(np.float32)
    manipulator = FXManipulator(stem, single_fx=fx)
    matched = changed = 0
    for seed in range(6):
        [y], drawn = manipulator.manipulate([x], np.random.default_rng(seed))
        assert [name for name, fired in drawn["fired"].items() if fired] == [fx]
        changed += not np.allclose(y, x, atol=1e-4)     # (a threshold above the peaks changes nothing)
        raw = manipulator.effects[fx].apply(x.astype(np.float64), drawn["params"][fx])
        if np.mean(raw ** 2) < 1e-7:
            # The spec's match divides by max(1e-7, mean y²): a compressor squashing the input
            # below −70 dBFS RMS is only raised to rms(x)·rms(raw)/1e-3.5, so it comes out quieter.
            assert rms(y) == pytest.approx(rms(x) * rms(raw) / np.sqrt(1e-7), rel=1e-4)
        else:
            assert rms(y) == pytest.approx(rms(x), rel=1e-4)
            matched += 1
    assert matched >= 3 and changed >= 4


def test_gain_stage_gain_and_polarity_within_range():
    x = noise(5, level=0.01)
    manipulator = FXManipulator("bass", single_fx="gain")
    polarities = set()
    for seed in range(30):
        [y], drawn = manipulator.manipulate([x], np.random.default_rng(seed))
        params = drawn["params"]["gain"]
        assert -6.0 <= params["gain_db"] <= 9.0
        ratio = float(np.sum(y.astype(np.float64) * x) / np.sum(x.astype(np.float64) ** 2))
        assert np.sign(ratio) == params["polarity"]
        assert dsp.db(ratio) == pytest.approx(params["gain_db"], abs=1e-4)
        polarities.add(params["polarity"])
    assert polarities == {-1, 1}


def test_output_is_clamped_and_padding_margins_are_cropped():
    loud = np.random.default_rng(6).uniform(-1.0, 1.0, (SR + 2 * MARGIN_SAMPLES, 2)).astype(np.float32)
    manipulator = FXManipulator("other")
    for seed in range(5):
        [y], _ = manipulator.manipulate([loud], np.random.default_rng(seed), padded=True)
        assert y.shape == (SR, 2) and y.dtype == np.float32
        assert np.max(np.abs(y)) <= 1.0
    # Gain alone shows which samples survive the crop: the middle ones.
    [y], drawn = FXManipulator("other", single_fx="gain").manipulate([loud], np.random.default_rng(0), padded=True)
    gain = drawn["params"]["gain"]
    expected = np.clip(loud[MARGIN_SAMPLES:-MARGIN_SAMPLES] * gain["polarity"] * dsp.db_to_amp(gain["gain_db"]), -1, 1)
    np.testing.assert_allclose(y, expected, atol=1e-6)


# --- probabilities ------------------------------------------------------------------------------------

def firing_rate(manipulator: FXManipulator, draws: int, seed: int, fired) -> float:
    rng = np.random.default_rng(seed)
    return sum(bool(fired(manipulator.draw(rng))) for _ in range(draws)) / draws


def fires(fx: str):
    """Whether a draw fires `fx` (for drums' reverb block, whether its high-band reverb was drawn)."""
    if fx == "reverb":
        return lambda d: d["fired"]["reverb"] and (d["stem"] != "drums" or d["params"]["reverb"]["high_band"] is not None)
    return lambda d: d["fired"][fx]


def assert_fires_with(manipulator: FXManipulator, fx: str, expected: float, draws: int = 10000) -> None:
    rate = firing_rate(manipulator, draws, 5, fires(fx))
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / draws), (fx, rate, expected)


@pytest.mark.parametrize("stem, expected, draws", [("bass", 0.01, 20000), ("vocals", 0.9, 4000),
                                                   ("other", 0.7, 4000), ("drums", 0.5, 4000)])
def test_reverb_fires_with_p_times_stem_weight_once(stem, expected, draws):
    """The original's shared dict gave bass/other/vocals 0.05; the intended values are restored."""
    manipulator = FXManipulator(stem)
    if stem == "drums":   # the block always runs (shelves); its high-band reverb is the Bernoulli draw
        rate = firing_rate(manipulator, draws, 0, lambda d: d["params"]["reverb"]["high_band"] is not None)
    else:
        rate = firing_rate(manipulator, draws, 0, lambda d: d["fired"]["reverb"])
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert abs(rate - expected) < 4 * sigma
    assert abs(rate - 0.05) > 10 * sigma


def test_default_probabilities_of_the_other_fx():
    rates = {fx: firing_rate(FXManipulator("vocals"), 3000, 1, lambda d, fx=fx: d["fired"][fx])
             for fx in ("eq", "comp", "pan", "imager", "gain")}
    for fx, expected in {"eq": 0.9, "comp": 0.9, "pan": 0.3, "imager": 0.8, "gain": 0.5}.items():
        assert rates[fx] == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / 3000))


def test_set_probabilities_applies_the_stem_weight_once():
    bass = FXManipulator("bass")
    bass.set_probabilities({"reverb": 0.9})
    assert_fires_with(bass, "reverb", 0.09)
    bass.set_probabilities({"pan": 0.2})                   # a later update must not weight reverb again
    assert_fires_with(bass, "reverb", 0.09)
    assert_fires_with(bass, "pan", 0.2)
    assert_fires_with(bass, "eq", 0.9)
    assert_fires_with(FXManipulator("drums", {"reverb": 0.9}), "reverb", 0.45)
    assert_fires_with(FXManipulator("other", {"reverb": 0.9}), "reverb", 0.9)
    silent = FXManipulator("vocals", {fx: 0.0 for fx in FX_NAMES})
    assert firing_rate(silent, 200, 2, lambda d: any(d["fired"].values())) == 0.0


def test_schedule_from_losses_rule():
    losses = {"eq": 2.0, "comp": 1.0, "pan": 3.0, "imager": 1.5, "reverb": 2.5, "gain": 1.0, "full": 9.0}
    assert schedule_from_losses(losses) == pytest.approx(
        {"eq": 0.5, "comp": 0.1, "pan": 0.9, "imager": 0.3, "reverb": 0.7, "gain": 0.1})
    assert schedule_from_losses({"eq": 1.0, "gain": 1.0}) == {"eq": 0.5, "gain": 0.5}
    with pytest.raises(ConfigError, match="reverb"):
        schedule_from_losses({"eq": 1.0, "reverb": float("nan")})
    manipulator = FXManipulator("bass")
    manipulator.set_probabilities(schedule_from_losses(losses))
    assert_fires_with(manipulator, "reverb", 0.07)      # 0.7 × bass weight 0.1


def test_single_fx_mode_fires_only_that_fx():
    x = noise(7)
    for fx in FX_NAMES:
        manipulator = FXManipulator("drums", single_fx=fx)
        rng = np.random.default_rng(3)
        for _ in range(20):
            drawn = manipulator.draw(rng)
            assert [name for name, fired in drawn["fired"].items() if fired] == [fx]
    # For drums the reverb block's shelves stay out of the other single-FX modes: pan alone is all there is.
    [y], drawn = FXManipulator("drums", single_fx="pan").manipulate([x], np.random.default_rng(0))
    panned = dsp.rms_match(Panner().apply(x.astype(np.float64), drawn["params"]["pan"]), x)
    np.testing.assert_allclose(y, panned, atol=1e-7)


def test_drums_are_refiltered_without_reverb_by_default(real_stems):
    drums = read_stem(real_stems / "song_a", "drums")
    nothing = {fx: 0.0 for fx in FX_NAMES}
    [refiltered], drawn = FXManipulator("drums", nothing).manipulate([drums], np.random.default_rng(0))
    assert drawn["params"]["reverb"] == {"refilter_without_reverb": True, "low_band": None, "high_band": None}
    # §2.2: stage 1 mixes in 20 % of the RMS-matched "low-pass" (high shelf −50 dB at 100 Hz), stage 2
    # 40 % of the "high-pass" (low shelf −50 dB at 100 Hz); then the block is RMS-matched.
    x = drums.astype(np.float64)
    stage1 = 0.8 * x + 0.2 * dsp.rms_match(dsp.apply_sos(x, dsp.high_shelf(100.0, -50.0)), x)
    stage2 = 0.6 * stage1 + 0.4 * dsp.apply_sos(stage1, dsp.low_shelf(100.0, -50.0))
    np.testing.assert_allclose(refiltered, dsp.rms_match(stage2, x), atol=1e-6)
    assert not np.allclose(refiltered, drums, atol=1e-3)
    [untouched], _ = FXManipulator("drums", nothing, drums_refilter_without_reverb=False).manipulate(
        [drums], np.random.default_rng(0))
    assert np.array_equal(untouched, drums)


def test_bad_configuration_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="stem 'piano'"):
        FXManipulator("piano")
    with pytest.raises(ConfigError, match="'chorus'"):
        FXManipulator("bass", {"chorus": 0.5})
    with pytest.raises(ConfigError, match=r"probabilities\['eq'\]"):
        FXManipulator("bass", {"eq": 1.5})
    with pytest.raises(ConfigError, match="single_fx"):
        FXManipulator("bass", single_fx="flanger")
    with pytest.raises(ConfigError, match="no .wav or .flac"):
        FXManipulator("vocals", ir_folder=tmp_path)
    drawn = FXManipulator("bass").draw(np.random.default_rng(0))
    with pytest.raises(ConfigError, match="'bass'"):
        FXManipulator("vocals").apply_params([noise(0)], drawn)


def test_a_draw_with_impulse_responses_replays_through_json(tmp_path):
    sf.write(tmp_path / "hall.wav", decaying_noise_ir(0, 0.3), SR, subtype="FLOAT")
    sf.write(tmp_path / "room.flac", decaying_noise_ir(1, 0.2)[:, :1], SR)      # mono IR on stereo audio
    manipulator = FXManipulator("vocals", single_fx="reverb", ir_folder=tmp_path)
    x = noise(9, seconds=0.5)
    files = set()
    for seed in range(6):
        [y], drawn = manipulator.manipulate([x], np.random.default_rng(seed))
        files.add(drawn["params"]["reverb"]["ir_file"])
        assert np.array_equal(manipulator.apply_params([x], json.loads(json.dumps(drawn)))[0], y)
    assert files == {"hall.wav", "room.flac"}


# --- the effects themselves ------------------------------------------------------------------------------

def test_eq_peak_boosts_its_centre_frequency_by_its_gain():
    eq = ParametricEQ()
    flat = {key: 0.0 if key.endswith("gain_db") else value for key, value in eq.draw(np.random.default_rng(0)).items()}
    params = {**flat, "peak2_gain_db": 12.0, "peak2_freq_hz": 1000.0, "peak2_q": 1.0}
    x = np.random.default_rng(10).standard_normal((4 * SR, 2))
    y = eq.apply(x, params)
    freqs = np.fft.rfftfreq(x.shape[0], 1.0 / SR)
    response_db = dsp.db(np.abs(np.fft.rfft(y[:, 0]) / np.fft.rfft(x[:, 0])))
    around = lambda hz: float(np.median(response_db[np.abs(freqs - hz) < 3.0]))  # noqa: E731
    assert around(1000.0) == pytest.approx(12.0, abs=0.1)
    assert around(30.0) == pytest.approx(0.0, abs=0.3)
    assert around(15000.0) == pytest.approx(0.0, abs=0.5)


def test_pan_laws_at_the_centre():
    assert Panner.gains(0.5, "linear") == pytest.approx((0.5, 0.5))
    assert Panner.gains(0.5, "constant_power") == pytest.approx((np.sqrt(0.5), np.sqrt(0.5)))
    assert dsp.db(Panner.gains(0.5, "minus_4_5_db")[0]) == pytest.approx(-4.5, abs=0.05)
    assert Panner.gains(0.0, "constant_power") == pytest.approx((1.0, 0.0), abs=1e-12)


def test_imager_width_extremes():
    x = noise(11).astype(np.float64)
    mono = Imager().apply(x, {"width": 0.0})
    assert np.allclose(mono[:, 0], mono[:, 1])
    assert np.allclose(Imager().apply(x, {"width": 1.0}), x, rtol=0, atol=1e-6)
    side = Imager().apply(x, {"width": 2.0})
    assert dsp.mid_energy_fraction(side) < 1e-4             # the 1e-3 regularisers leave a trace of mid
    assert np.sum(side ** 2) == pytest.approx(np.sum(x ** 2), rel=1e-4)   # energy kept


def test_impulse_response_reverb_is_peak_aligned_and_mixed(tmp_path):
    predelay = 300
    ir = decaying_noise_ir(2, 0.4, predelay)
    sf.write(tmp_path / "plate.wav", ir, SR, subtype="FLOAT")
    click = np.zeros((SR, 2), dtype=np.float32)
    click[10000] = 0.5
    manipulator = FXManipulator("vocals", single_fx="reverb", ir_folder=tmp_path)
    [y], drawn = manipulator.manipulate([click], np.random.default_rng(0))
    params = drawn["params"]["reverb"]
    assert params["kind"] == "impulse_response" and params["ir_file"] == "plate.wav"
    assert 0.0 <= params["dry_weight"] < 0.5
    assert y.shape == click.shape
    assert np.abs(y[:10000]).max() < 1e-5                  # nothing before the click: aligned at the IR's peak
    tail = y[10001:10001 + 8000, 0]
    expected = ir[predelay + 1:predelay + 1 + 8000, 0]
    assert np.corrcoef(tail, expected)[0, 1] > 0.999       # the wet part is the IR itself
    assert rms(y) == pytest.approx(rms(click), rel=1e-4)


def test_impulse_responses_are_drawn_by_rt60_class(tmp_path):
    for name in ("rt60_400ms/a.wav", "rt60_3500ms/b.wav", "rt60_5000ms/c.wav", "rt60_5000ms/d.flac"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, decaying_noise_ir(0, 0.05), SR)
    manipulator = FXManipulator("vocals", single_fx="reverb", ir_folder=tmp_path)
    rng = np.random.default_rng(0)
    files = [manipulator.draw(rng)["params"]["reverb"]["ir_file"] for _ in range(3000)]
    share = {name: files.count(name) / len(files) for name in set(files)}
    # two classes: 400 ms, and everything ≥ 3000 ms merged (three files sharing one half)
    assert share["rt60_400ms/a.wav"] == pytest.approx(0.5, abs=0.04)
    for name in ("rt60_3500ms/b.wav", "rt60_5000ms/c.wav", "rt60_5000ms/d.flac"):
        assert share[name] == pytest.approx(1 / 6, abs=0.03)


def test_algorithmic_reverb_adds_a_tail():
    burst = np.zeros((SR, 2), dtype=np.float32)
    burst[1000:1441] = noise(12, seconds=0.01, level=0.3)
    [y], drawn = FXManipulator("other", single_fx="reverb").manipulate([burst], np.random.default_rng(0))
    assert drawn["params"]["reverb"]["kind"] == "algorithmic"
    assert rms(y[5000:20000]) > 1e-3                       # sound after the burst ended
    assert rms(y) == pytest.approx(rms(burst), rel=1e-4)
