"""The mixing chains of cloner training pairs (train/effects.py): one draw on target and reference,
a wide family, no clipping, and the FXmanipulator's draws kept where it is chosen."""
import numpy as np
import pytest

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.fx.manipulator import MARGIN_SAMPLES
from mixdaemon.train.data import manipulators
from mixdaemon.train.effects import MAX_PEAK, MixingChains, TrainingFx

PLAIN = {"eq": [], "compressor": None, "compressor_first": False, "space": None, "side_gain": 1.0, "pan": 0.0,
         "gain_db": 0.0}


def noise(seed: int, seconds: float = 2.0, level: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal((int(seconds * WORKING_RATE), 2))).astype(np.float32)


def band_gains_db(x: np.ndarray, y: np.ndarray, bands: int = 12) -> np.ndarray:
    """y's level over x's in log-spaced bands from 60 Hz to 12 kHz, mid signal."""
    fx, fy = (np.abs(np.fft.rfft(s.mean(axis=1))) ** 2 for s in (x, y))
    freqs = np.fft.rfftfreq(len(x), 1.0 / WORKING_RATE)
    edges = np.geomspace(60.0, 12000.0, bands + 1)
    return np.array([10 * np.log10(fy[(freqs >= lo) & (freqs < hi)].sum() / fx[(freqs >= lo) & (freqs < hi)].sum())
                     for lo, hi in zip(edges[:-1], edges[1:])])


def test_a_plain_chain_passes_the_audio_and_pan_keeps_power():
    x = noise(0)
    np.testing.assert_allclose(MixingChains.apply(x, PLAIN), x, atol=1e-6)
    panned = MixingChains.apply(np.repeat(x[:, :1], 2, axis=1), {**PLAIN, "pan": 0.6})
    assert np.sqrt(np.mean(panned[:, 0] ** 2)) < 0.5 * np.sqrt(np.mean(panned[:, 1] ** 2))  # right of centre
    assert np.mean(panned ** 2) == pytest.approx(np.mean(x[:, 0] ** 2), rel=1e-3)  # constant power
    mono = MixingChains.apply(x, {**PLAIN, "side_gain": 0.0})
    np.testing.assert_allclose(mono[:, 0], mono[:, 1], atol=1e-6)


def test_one_draw_gives_target_and_reference_the_same_chain():
    chains, rng = MixingChains(), np.random.default_rng(3)
    for _ in range(8):
        a, b = noise(1), noise(2)
        (a2, b2), drawn = chains.manipulate([a, b], rng)
        if drawn["compressor"] is None and drawn["space"] is None:
            np.testing.assert_allclose(band_gains_db(a, a2), band_gains_db(b, b2), atol=1.5)  # noise: ~1 dB
        # the level change is the same within what the compressor and reverb make of different noise
        assert 10 * np.log10(np.mean(a2 ** 2) / np.mean(a ** 2)) == pytest.approx(
            10 * np.log10(np.mean(b2 ** 2) / np.mean(b ** 2)), abs=1.0)


def test_the_family_is_wide_and_never_clips():
    chains, rng = MixingChains(), np.random.default_rng(0)
    quiet = noise(4, seconds=1.0, level=0.01)  # no draw takes it near full scale
    levels, spaces, compressed, mono, pans = [], set(), 0, 0, []
    for _ in range(60):
        (y,), drawn = chains.manipulate([quiet], rng)
        assert y.dtype == np.float32
        levels.append(10 * np.log10(np.mean(y ** 2) / np.mean(quiet ** 2)))
        spaces.add(drawn["space"]["kind"] if drawn["space"] else None)
        compressed += drawn["compressor"] is not None
        mono += drawn["side_gain"] < 0.2
        pans.append(drawn["pan"])
    assert min(levels) < -10 and max(levels) > 5
    assert spaces == {None, "reverb", "delay"} and 20 < compressed < 60 and mono >= 1
    assert min(pans) < -0.3 and max(pans) > 0.3
    loud = noise(4, seconds=1.0, level=0.3)
    for _ in range(20):
        (y,), _ = chains.manipulate([loud], rng)
        assert np.max(np.abs(y)) <= MAX_PEAK + 1e-6


def test_clipping_is_avoided_by_one_gain_on_both_signals():
    chains = MixingChains()
    loud, quiet = noise(5, level=0.3), noise(6, level=0.03)
    drawn = {**PLAIN, "gain_db": 12.0}

    class Fixed(MixingChains):
        def draw(self, rng, level_dbfs):
            return drawn

    (y_loud, y_quiet), _ = Fixed().manipulate([loud, quiet], np.random.default_rng(0))
    assert np.max(np.abs(y_loud)) == pytest.approx(MAX_PEAK, rel=1e-5)
    scale = np.max(np.abs(y_loud)) / np.max(np.abs(chains.apply(loud, drawn)))
    np.testing.assert_allclose(y_quiet, chains.apply(quiet, drawn) * scale, atol=1e-6)  # the same gain down


def test_padded_signals_are_cropped_after_the_chain():
    x = noise(7, seconds=1.0)
    (y,), _ = MixingChains().manipulate([x], np.random.default_rng(1), padded=True)
    assert y.shape == (len(x) - 2 * MARGIN_SAMPLES, 2)


def test_the_family_choice_keeps_the_fxmanipulator_draws_where_chosen():
    manipulator = manipulators()["drums"]
    a, b = noise(8, seconds=1.0), noise(9, seconds=1.0)
    ours, _ = TrainingFx(manipulator, "fxmanipulator").manipulate([a, b], np.random.default_rng(5))
    paper, _ = manipulator.manipulate([a, b], np.random.default_rng(5))
    np.testing.assert_array_equal(ours[0], paper[0])
    rng, kinds = np.random.default_rng(0), []
    for _ in range(40):
        _, drawn = TrainingFx(manipulator, "both").manipulate([a], rng)
        kinds.append("eq" in drawn and "side_gain" in drawn)
    assert 10 < sum(kinds) < 30  # about half are mixing chains
    _, drawn = TrainingFx(manipulator, "mixing-chains").manipulate([a], rng)
    assert "side_gain" in drawn
    with pytest.raises(ValueError, match="one of"):
        TrainingFx(manipulator, "distortion")
