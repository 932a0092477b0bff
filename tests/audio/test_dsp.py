"""audio.dsp: the long-term average spectra a job's report draws, and the loudness and spectrum
meters fed block by block reading what they read on the whole signal."""
import numpy as np
import pytest
import soundfile as sf

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


# blocks of one sample, odd sizes, a job's 10 s
PARTITIONS = ([1, 4095, 13, 100000], [441000])


def metered(meter, x, sizes):
    start, i = 0, 0
    while start < x.shape[0]:
        meter.push(x[start:start + sizes[i % len(sizes)]])
        start, i = start + sizes[i % len(sizes)], i + 1
    return meter


@pytest.fixture(scope="module")
def vocals(real_stems):
    """Real vocals: phrases and silences, so both gates matter."""
    return sf.read(real_stems / "song_a" / "vocals.wav", dtype="float32")[0]


@pytest.mark.parametrize("sizes", PARTITIONS)
def test_the_loudness_meter_in_blocks_reads_the_whole_signal_s_loudness(vocals, sizes):
    """The K-weighting carries its state across blocks and the gating windows are counted from the
    first sample: the integrated loudness and every short-term (3 s) reading are the whole
    signal's, at a rate whose 100 ms hop does not divide the 400 ms window too."""
    whole = dsp.loudness_lufs(vocals)
    assert -40.0 < whole < -20.0
    assert metered(dsp.LoudnessMeter(), vocals, sizes).lufs == pytest.approx(whole, abs=1e-9)
    short_term = dsp.block_loudness(vocals, 3.0, 0.1)
    np.testing.assert_allclose(metered(dsp.LoudnessMeter(window_s=3.0, hop_s=0.1), vocals, sizes).block_loudness,
                               short_term, rtol=0, atol=1e-9)
    assert metered(dsp.LoudnessMeter(11025), vocals, sizes).integrated == pytest.approx(
        dsp.integrated_loudness(vocals, 11025), abs=1e-9)
    # too short to gate: the absolute gate, however it came
    assert metered(dsp.LoudnessMeter(), vocals[:17000], sizes).lufs == dsp.loudness_lufs(vocals[:17000]) == -70.0


@pytest.mark.parametrize("sizes", PARTITIONS)
def test_the_spectrum_meter_in_blocks_reads_the_whole_signal_s_spectrum(vocals, sizes):
    """Welch's segments are counted from the first sample, whatever the blocks; a signal shorter
    than one segment is measured padded, as on the whole."""
    for x in (vocals, vocals[:3000]):
        np.testing.assert_allclose(metered(dsp.SpectrumMeter(), x, sizes).spectrum_db(), dsp.average_spectrum_db(x),
                                   rtol=0, atol=1e-6)
