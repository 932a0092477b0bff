"""The match engine's effects as streams: fitted on real stems (song_a's toward song_b's), each one fed
block by block, in blocks of any sizes, gives what it gives on the whole stem, keeps only a bounded
look-ahead of the song, and still does its job (an EQ aligned with the stem, peaks under the
limiter's ceiling, a reverb tail that rings on after the stem stops)."""
from __future__ import annotations

import numpy as np
import pytest

from mixdaemon.audio.dsp import WORKING_RATE, loudness_lufs
from mixdaemon.audio.stems import STEM_NAMES, load_song
from mixdaemon.audio.streams import ChainOf, in_blocks
from mixdaemon.fx import matching

PARTITIONS = ([1, 4095, 13, 100000], [44100])


@pytest.fixture(scope="module")
def songs(real_stems):
    return [load_song([real_stems / song / f"{name}.wav" for name in STEM_NAMES]).stems
            for song in ("song_a", "song_b")]


def fitted(x: np.ndarray, reference: np.ndarray) -> dict[str, object]:
    """Every streamable effect the match engine fits, fitted on x toward the reference."""
    spectra = [matching.smoothed_spectrum_db(matching.long_term_spectrum(s)) for s in (x, reference)]
    effects = {"eq": matching.EqCurve.between(*spectra),
               "width": matching.StereoMatch.between(matching.frame_covariances(x),
                                                     matching.frame_covariances(reference)),
               # a send of the level the fit picks where the reference is wetter: the fit itself
               # may find song_b's stem no wetter
               "reverb": matching.SyntheticReverb(1.6, -14.0)}
    for detector, name in ((matching.PHRASE, "phrase"), (matching.NOTE, "note")):
        effects[name] = matching.LevelMap.between(x, reference, detector)
    # 3 dB less peak-to-loudness than the reference's: a limiter on every stem
    effects["peaks"] = matching.PeakCeiling(matching.peak_to_loudness_db(reference) - 3.0).limiter_for(x)
    return effects


@pytest.mark.parametrize("stem", ["drums", "vocals"])
def test_streams_equal_the_whole_stem_whatever_the_blocks(songs, stem):
    x, reference = songs[0][stem], songs[1][stem]
    effects = fitted(x, reference)
    assert None not in effects.values() and effects["reverb"].send_db is not None
    for name, effect in effects.items():
        whole = effect(x)
        assert whole.shape == x.shape and whole.dtype == np.float32
        assert np.max(np.abs(whole - x)) > 1e-3, f"{name} left {stem} as it was: nothing checked"
        for sizes in PARTITIONS:
            np.testing.assert_allclose(in_blocks(effect, x, sizes), whole, atol=1e-4, err_msg=f"{name} {sizes}")


def test_fitted_effects_chained_in_blocks_equal_them_one_after_the_other(songs):
    x, reference = songs[0]["other"], songs[1]["other"]
    effects = list(fitted(x, reference).values())
    y = x
    for effect in effects:
        y = effect(y)
    np.testing.assert_allclose(in_blocks(ChainOf(effects), x, [30000, 7]), y, atol=1e-4)


@pytest.mark.parametrize("n", [0, 1, 300, 441 + 109, 3 * WORKING_RATE + 1])
def test_short_signals_stream_as_whole(rng, n):
    """Shorter than a window, an FIR, a reverb block: the same ends as on the whole signal."""
    x = (0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    curve = np.array([-6.0, 0.0, 6.0])
    for effect in (matching.EqCurve(np.linspace(-6.0, 6.0, matching.EQ_GRID_HZ.size)),
                   matching.LevelMap(matching.PHRASE, curve, -curve / 2, -20.0),
                   matching.LevelMap(matching.NOTE, curve, -curve / 2, -20.0),
                   matching.PeakLimiter(-26.0), matching.SyntheticReverb(0.4, -12.0)):
        whole = effect(x)
        assert whole.shape == x.shape
        np.testing.assert_allclose(in_blocks(effect, x, [1, 97]), whole, atol=1e-4)


def test_a_stream_holds_a_bounded_look_ahead(rng):
    """Fed a minute in 0.1-s blocks, each stream gives back all but its look-ahead after every
    block: what a job holds of a song does not grow with the song."""
    n, block = 60 * WORKING_RATE, WORKING_RATE // 10
    x = (0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    curve = np.array([-6.0, 0.0, 6.0])
    looks = {"eq": (matching.EqCurve(np.full(matching.EQ_GRID_HZ.size, 3.0)),
                    matching.EQ_TAPS // 2 + matching.EQ_FFT_BLOCK + block),
             "phrase": (matching.LevelMap(matching.PHRASE, curve, -curve / 2, -20.0),
                        matching.PHRASE.window + matching.PHRASE.hop),
             "limiter": (matching.PeakLimiter(-30.0), WORKING_RATE // 100),
             "reverb": (matching.SyntheticReverb(0.8, -12.0), 2 ** 17 + block)}
    for name, (effect, look_ahead) in looks.items():
        stream, given = effect.stream(n), 0
        for start in range(0, n, block):
            given += stream.push(x[start:start + block], last=start + block >= n).shape[0]
            assert min(n, start + block) - given <= look_ahead, name
        assert given == n


def test_the_eq_stays_aligned_with_the_stem(songs):
    """A curve of +6 dB everywhere is a gain of 2 at every sample: no delay, streamed or not."""
    x = songs[0]["vocals"]
    effect = matching.EqCurve(np.full(matching.EQ_GRID_HZ.size, 6.0))
    streamed = in_blocks(effect, x, [5000, 3])
    inner = slice(matching.EQ_TAPS, -matching.EQ_TAPS)  # the FIR's first and last taps see zeros
    np.testing.assert_allclose(streamed[inner], 10 ** 0.3 * x[inner], atol=2e-3 * np.abs(x).max())


def test_the_limiter_fitted_on_the_stem_keeps_its_peaks_under_the_ceiling(songs):
    x, reference = songs[0]["drums"], songs[1]["drums"]
    ceiling = matching.PeakCeiling(matching.peak_to_loudness_db(reference) - 3.0)
    limiter = ceiling.limiter_for(x)
    limited = in_blocks(limiter, x, [1000, 1])
    assert np.max(np.abs(limited)) <= 10 ** (limiter.ceiling_db / 20) * 1.001
    assert np.max(np.abs(x)) > 10 ** (limiter.ceiling_db / 20) * 1.2  # the peaks did come down
    # the ceiling sits where the whole-stem call puts it: relative to the stem's loudness
    np.testing.assert_array_equal(ceiling(x), limiter(x))
    assert limiter.ceiling_db - loudness_lufs(x) == pytest.approx(ceiling.ceiling_re_loudness_db(x))
    # a stem already no peakier than the reference gets no limiter
    assert matching.PeakCeiling(matching.peak_to_loudness_db(x) + 3.0).limiter_for(x) is None


def test_the_reverb_tail_rings_on_across_blocks(songs):
    """A stem that stops: the reverb's tail rings on after it, the same in small blocks."""
    x = songs[0]["vocals"].copy()
    frame = WORKING_RATE // 10
    power = np.mean(x[:x.shape[0] // frame * frame].reshape(-1, frame * 2) ** 2, axis=1)
    stop = (int(np.argmax(power[:-20])) + 1) * frame  # right after the loudest 100 ms
    x[stop:] = 0.0
    streamed = in_blocks(matching.SyntheticReverb(1.6, -12.0), x, [4410])
    tail = streamed[stop + frame:stop + 5 * frame]  # 0.1 to 0.5 s on: -12 dB, falling 60 dB in 1.6 s
    assert np.sqrt(np.mean(tail ** 2)) > 1e-2 * np.sqrt(power.max())
    # and dies away where the impulse response ends (1.2 s and its pre-delay on)
    assert np.max(np.abs(streamed[stop + int(1.25 * WORKING_RATE):])) < 1e-5 * np.max(np.abs(x))
