"""The match engine moves each aspect of a stem toward the reference stem, and only the aspects asked
for, by the amount asked for: constructed references whose difference from the input is known."""
from __future__ import annotations

import numpy as np
import pedalboard
import pytest
from scipy import signal

from mixdaemon.audio.dsp import WORKING_RATE, integrated_loudness
from mixdaemon.audio.mastering import true_peak_dbtp
from mixdaemon.audio.stems import STEM_NAMES, load_song
from mixdaemon.fx.matching import space_profile_db
from mixdaemon.mixing.match import MatchingEngine
from mixdaemon.mixing.settings import Controls

SECONDS = 8


@pytest.fixture(scope="module")
def stems(real_stems):
    """8 s of song_a's real stems, and 8 s of its drums from later in the song (the same player and
    kit, other bars: content differs as a reference's does)."""
    song = load_song([real_stems / "song_a" / f"{name}.wav" for name in STEM_NAMES])
    n = SECONDS * WORKING_RATE
    return {name: x[:n] for name, x in song.stems.items()}, song.stems["drums"][n:2 * n]


def convert(x: np.ndarray, reference: np.ndarray, **controls) -> np.ndarray:
    engine = MatchingEngine(controls=Controls(**controls))
    return engine.convert({"other": x}, {"other": reference}).stems["other"]


def band_db(x: np.ndarray, lo: float, hi: float) -> float:
    freqs, power = signal.welch(x.mean(axis=1), WORKING_RATE, nperseg=8192)
    return float(10 * np.log10(power[(freqs >= lo) & (freqs < hi)].mean()))


def tilt_db(x: np.ndarray) -> float:
    """High (4–12 kHz) minus low-mid (200–1000 Hz) level."""
    return band_db(x, 4000, 12000) - band_db(x, 200, 1000)


def side_mid_db(x: np.ndarray) -> float:
    mid, side = x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]
    return float(10 * np.log10(np.dot(side, side) / np.dot(mid, mid)))


def short_term_spread_db(x: np.ndarray) -> float:
    """90th minus 20th percentile of 10-ms levels of the audible part."""
    n = x.shape[0] // 441 * 441
    levels = 10 * np.log10(np.mean(x[:n].reshape(-1, 441 * 2) ** 2, axis=1) + 1e-12)
    levels = levels[levels > levels.max() - 50]
    return float(np.percentile(levels, 90) - np.percentile(levels, 20))


def widen(x: np.ndarray, side_gain: float) -> np.ndarray:
    mid, side = (x[:, 0] + x[:, 1]) / 2, (x[:, 0] - x[:, 1]) / 2 * side_gain
    return np.stack([mid + side, mid - side], axis=1).astype(np.float32)


def squash(x: np.ndarray) -> np.ndarray:
    """A hard, fast compression of x (peaks down ~12 dB)."""
    env = signal.lfilter([0.01], [1, -0.99], np.abs(x).max(axis=1))
    threshold = np.percentile(env, 50)
    gain = np.minimum(1.0, (threshold / np.maximum(env, 1e-9)) ** 0.8)
    return (x * gain[:, None]).astype(np.float32)


def test_a_quieter_reference_gives_its_loudness(stems):
    x = stems[0]["other"]
    y = convert(x, stems[0]["other"] * np.float32(10 ** (-10 / 20)))
    assert integrated_loudness(y) == pytest.approx(integrated_loudness(x) - 10.0, abs=0.3)


def test_a_brighter_reference_brightens_the_stem(stems):
    x = stems[0]["other"]
    sos = signal.butter(2, 3000, "highpass", fs=WORKING_RATE, output="sos")
    brighter = (x + 2.0 * signal.sosfilt(sos, x, axis=0)).astype(np.float32)
    y = convert(x, brighter)
    assert tilt_db(brighter) - tilt_db(x) > 5.0
    assert abs(tilt_db(y) - tilt_db(brighter)) < 0.3 * abs(tilt_db(brighter) - tilt_db(x))


def test_a_narrower_reference_narrows_the_stem(stems):
    x = stems[0]["other"]
    narrower = widen(x, 0.3)
    y = convert(x, narrower)
    assert abs(side_mid_db(y) - side_mid_db(narrower)) < 1.5
    assert side_mid_db(x) - side_mid_db(narrower) > 8.0


def test_a_more_compressed_reference_evens_the_stem_out(stems):
    x, later_drums = stems[0]["drums"], stems[1]
    reference = squash(later_drums)
    y = convert(x, reference)
    before, after, target = (short_term_spread_db(s) for s in (x, y, reference))
    assert target < before - 3.0
    assert abs(after - target) < 0.5 * abs(before - target)


def peak_to_loudness(x: np.ndarray) -> float:
    return true_peak_dbtp(x) - integrated_loudness(x)


def test_a_limited_reference_brings_the_peaks_down(stems):
    x, later_drums = stems[0]["drums"], stems[1]
    ceiling = np.float32(np.max(np.abs(later_drums)) * 10 ** (-9 / 20))
    reference = (np.tanh(later_drums / ceiling) * ceiling).astype(np.float32)  # peaks clipped softly by 9 dB
    y = convert(x, reference)
    before, after, target = (peak_to_loudness(s) for s in (x, y, reference))
    assert target < before - 3.0
    assert abs(after - target) < 0.5 * (before - target)


def test_amount_zero_returns_the_input_and_half_goes_part_way(stems):
    x = stems[0]["other"]
    reference = stems[0]["other"] * np.float32(10 ** (-10 / 20))
    np.testing.assert_array_equal(convert(x, reference, amount=0.0), x)
    half = convert(x, reference, amount=0.5)
    assert integrated_loudness(half) == pytest.approx(integrated_loudness(x) - 5.0, abs=0.3)


def test_match_level_only_changes_only_the_level(stems):
    x = stems[0]["other"]
    sos = signal.butter(2, 3000, "highpass", fs=WORKING_RATE, output="sos")
    reference = widen((x + 2.0 * signal.sosfilt(sos, x, axis=0)).astype(np.float32), 0.3) * np.float32(0.2)
    y = convert(x, reference, aspects=frozenset({"level"}))
    ratio = float(np.dot(y.ravel(), x.ravel()) / np.dot(x.ravel(), x.ravel()))
    np.testing.assert_allclose(y, x * np.float32(ratio), rtol=1e-4, atol=1e-6)
    assert integrated_loudness(y) == pytest.approx(integrated_loudness(reference), abs=0.3)


def test_per_stem_amount_and_a_silent_reference_stem_keep_stems(stems):
    inputs = stems[0]
    reference = {name: x * np.float32(0.3) for name, x in inputs.items()}
    reference["bass"] = np.zeros_like(reference["bass"])
    engine = MatchingEngine(controls=Controls(stem_amount={"vocals": 0.0}))
    out = engine.convert(inputs, reference).stems
    np.testing.assert_array_equal(out["vocals"], inputs["vocals"])
    np.testing.assert_array_equal(out["bass"], inputs["bass"])
    assert integrated_loudness(out["drums"]) == pytest.approx(integrated_loudness(reference["drums"]), abs=0.3)


WITHOUT_SPACE = frozenset({"level", "eq", "dynamics", "width"})


def profile_gap_db(x: np.ndarray, reference: np.ndarray) -> float:
    """Mean over delays of how far x's space profile lies below the reference's."""
    return float(np.mean(space_profile_db(reference) - space_profile_db(x)))


def test_a_reverberant_reference_adds_space_and_a_dry_one_none(stems):
    x, later_drums = stems[0]["drums"], stems[1]
    # a reverb that is not the engine's own (pedalboard's Freeverb), on other bars of the same kit
    reverb = pedalboard.Reverb(room_size=0.7, wet_level=0.25, dry_level=0.5)
    reverberant = reverb(np.ascontiguousarray(later_drums.T), WORKING_RATE).T.astype(np.float32)
    y, y_without = convert(x, reverberant), convert(x, reverberant, aspects=WITHOUT_SPACE)
    assert profile_gap_db(x, reverberant) > 10.0
    assert abs(profile_gap_db(y, reverberant)) < 0.2 * profile_gap_db(x, reverberant)
    # without "space" no reverb is added: the other steps leave the stem well drier than the reference
    assert profile_gap_db(y_without, reverberant) > 4.0
    # the send neither clips nor bursts: the peaks stay where the reference's are
    assert true_peak_dbtp(y) < true_peak_dbtp(reverberant) + 2.0
    # a dry reference gets no send at all
    np.testing.assert_array_equal(convert(x, later_drums), convert(x, later_drums, aspects=WITHOUT_SPACE))
