"""audio.dsp: the long-term average spectra a job's report draws."""
import numpy as np

from mixdaemon.audio import dsp

SR = dsp.WORKING_RATE


def test_average_spectrum_shows_a_tone_in_its_band_and_a_gain_as_a_shift(rng):
    """A 1 kHz tone: the curve peaks in the band holding 1 kHz, far above the bands an octave
    away. Noise at twice the amplitude (+6.02 dB) lifts every band by 6.02 dB."""
    t = np.arange(2 * SR) / SR
    tone = 0.25 * np.sin(2 * np.pi * 1000.0 * t)
    x = np.stack([tone, tone], axis=1)
    curve = dsp.average_spectrum_db(x)
    edges, centres = dsp.SPECTRUM_BAND_EDGES_HZ, dsp.SPECTRUM_BAND_CENTRES_HZ
    assert curve.shape == centres.shape == (len(edges) - 1,)
    band = int(np.searchsorted(edges, 1000.0)) - 1
    assert int(np.argmax(curve)) == band
    octave_away = [int(np.argmin(np.abs(centres - hz))) for hz in (500.0, 2000.0)]
    assert all(curve[band] - curve[k] > 40.0 for k in octave_away)
    noise = rng.standard_normal((2 * SR, 2)) * 0.1
    lifted = dsp.average_spectrum_db(2.0 * noise) - dsp.average_spectrum_db(noise)
    np.testing.assert_allclose(lifted, 20 * np.log10(2.0), atol=1e-9)
