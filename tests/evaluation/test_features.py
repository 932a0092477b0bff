"""The unpaired protocol's features, on signals whose values are known."""
import numpy as np
import pytest

from mixdaemon.evaluation.features import (
    BAND_CENTRES_HZ,
    LOUDNESS_FLOOR,
    band_levels_db,
    feature_distances,
    loudness_range,
    stem_features,
    width_db,
)

RATE = 44100


@pytest.fixture
def noise():
    """Four seconds of decorrelated stereo noise."""
    return 0.05 * np.random.default_rng(11).standard_normal((4 * RATE, 2))


def test_the_bands_are_third_octaves_from_31_5_hz_to_16_khz():
    assert len(BAND_CENTRES_HZ) == 28
    assert BAND_CENTRES_HZ[0] == pytest.approx(31.5, rel=0.01) and BAND_CENTRES_HZ[-1] == pytest.approx(16000, rel=0.01)
    np.testing.assert_allclose(BAND_CENTRES_HZ[1:] / BAND_CENTRES_HZ[:-1], 10 ** 0.1)


def test_spectral_shape_ignores_level_and_sees_a_tilt(noise):
    shape = band_levels_db(noise)
    assert shape.mean() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(band_levels_db(0.1 * noise), shape, atol=1e-6)
    # white noise: the power of a third octave grows with its width, 1 dB per band
    assert np.polyfit(np.arange(len(shape)), shape, 1)[0] == pytest.approx(1.0, abs=0.05)
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(len(noise)) / RATE)[:, None].repeat(2, axis=1)
    assert np.argmax(band_levels_db(tone)) == int(np.argmin(np.abs(BAND_CENTRES_HZ - 1000.0)))


def test_width_loudness_range_and_silence(noise):
    mono = noise[:, :1].repeat(2, axis=1)
    assert width_db(mono) == -40.0
    assert width_db(noise) == pytest.approx(0.0, abs=0.2)  # uncorrelated: as much side as mid
    assert width_db(mono * [1.0, -1.0]) == 20.0  # out of phase: side only
    steady = np.concatenate([noise, noise])
    stepped = np.concatenate([noise, 0.1 * noise])  # 20 dB down halfway
    assert loudness_range(steady) < 1.0
    assert loudness_range(stepped) == pytest.approx(20.0, abs=1.5)
    assert loudness_range(noise[: 2 * RATE]) == 0.0  # shorter than one 3-s window
    silent = stem_features(np.zeros((RATE, 2)))
    assert silent.loudness_lufs == LOUDNESS_FLOOR and silent.plr_db == 0.0


def test_distances_are_zero_on_the_same_stem_and_measure_gain_in_lufs(noise):
    features = stem_features(noise)
    assert feature_distances(features, features) == {"loudness": 0.0, "spectral": 0.0, "dynamics": 0.0, "width": 0.0}
    quieter = feature_distances(stem_features(0.5 * noise), features)
    assert quieter["loudness"] == pytest.approx(20 * np.log10(2), abs=0.01)
    assert quieter["spectral"] < 1e-6 and quieter["width"] < 1e-6 and quieter["dynamics"] < 0.01
