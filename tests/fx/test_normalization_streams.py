"""FX normalization fitted once and applied as a stream: on real stems the fitted chain fed in blocks
of any sizes gives what it gives on the whole stem and what normalize_stems gives; fitted on an
excerpt it still lands the whole stem near the statistics' loudness; it holds only a bounded
look-ahead; a silent stem passes as it is."""
from __future__ import annotations

import numpy as np
import pytest

from mixdaemon.audio.dsp import WORKING_RATE, loudness_lufs
from mixdaemon.audio.stems import STEM_NAMES, load_song
from mixdaemon.audio.streams import in_blocks
from mixdaemon.fx import normalization as fxnorm
from mixdaemon.fx.matching import EQ_FFT_BLOCK
from mixdaemon.fx.stats import FxStats, default_stats_path

PARTITIONS = ([1, 4095, 13, 100_000], [44_100])


@pytest.fixture(scope="module")
def stats():
    return FxStats.load(default_stats_path("mst"))


@pytest.fixture(scope="module")
def song(real_stems):
    return load_song([real_stems / "song_a" / f"{name}.wav" for name in STEM_NAMES]).stems


@pytest.mark.parametrize("stem", STEM_NAMES)
def test_the_fitted_chain_in_any_blocks_equals_the_whole_stem_and_normalize_stems(song, stats, stem):
    x = song[stem]
    chain, rendered = fxnorm.fit_normalizer(stem, x, stats)
    normalized = fxnorm.normalize_stems({stem: x}, stats)[stem]
    assert rendered.dtype == np.float32 and rendered.shape == x.shape
    edge = WORKING_RATE // 20  # the Haas copy's reach at the ends is the only allowed difference
    np.testing.assert_allclose(rendered[edge:-edge], normalized[edge:-edge], atol=1e-4)
    assert np.max(np.abs(rendered - x)) > 1e-2  # the normalization did something
    np.testing.assert_allclose(chain(x), rendered, atol=1e-4)
    for sizes in PARTITIONS:
        np.testing.assert_allclose(in_blocks(chain, x, sizes), rendered, atol=1e-4, err_msg=str(sizes))


def test_a_near_mono_stem_gets_the_haas_copy_and_still_streams(song, stats):
    # the bass is near mono: the imager step widens it with a delayed copy, in one direction or the other
    x = np.repeat(song["bass"][:6 * WORKING_RATE, :1], 2, axis=1)
    chain, rendered = fxnorm.fit_normalizer("bass", x, stats)
    imager = [e for e in chain.effects if isinstance(e, fxnorm.ChainOf)
              and any(isinstance(part, fxnorm.Haas) for part in e.effects)]
    assert imager, "no Haas copy on a mono stem"
    assert not np.allclose(rendered[:, 0], rendered[:, 1], atol=1e-3)  # it is stereo now
    for sizes in PARTITIONS:
        np.testing.assert_allclose(in_blocks(chain, x, sizes), rendered, atol=1e-4, err_msg=str(sizes))


@pytest.mark.parametrize("delay", [-300, 300])
def test_the_haas_copy_is_delayed_or_ahead_with_zeros_beyond_the_ends(delay):
    x = np.random.default_rng(0).standard_normal((5000, 2)).astype(np.float32)
    y = fxnorm.Haas(1, delay, 0.5)(x)
    shifted = np.zeros(5000, np.float32)
    if delay > 0:
        shifted[delay:] = x[:-delay, 1]
    else:
        shifted[:delay] = x[-delay:, 1]
    np.testing.assert_allclose(y[:, 1], x[:, 1] + 0.5 * shifted, atol=1e-6)
    np.testing.assert_allclose(y[:, 0], x[:, 0])
    np.testing.assert_allclose(in_blocks(fxnorm.Haas(1, delay, 0.5), x, [7, 1000, 1]), y, atol=1e-6)


def test_fitted_on_an_excerpt_the_whole_stem_lands_near_the_target_loudness(song, stats):
    x = song["other"]
    excerpt = np.concatenate([x[2 * WORKING_RATE:7 * WORKING_RATE], x[10 * WORKING_RATE:15 * WORKING_RATE]])
    chain, _ = fxnorm.fit_normalizer("other", excerpt, stats, lufs=loudness_lufs(x))
    applied = in_blocks(chain, x, [WORKING_RATE])
    assert applied.shape == x.shape and applied.dtype == np.float32
    assert abs(loudness_lufs(applied) - stats.stems["other"].loudness) < 1.0
    assert abs(loudness_lufs(x) - stats.stems["other"].loudness) > 3.0  # it had to move
    assert np.max(np.abs(applied / np.sqrt(np.mean(applied ** 2)) - x / np.sqrt(np.mean(x ** 2)))) > 0.1  # not a gain


def test_a_stream_returns_output_after_a_bounded_look_ahead(song, stats):
    # a near-mono bass gets both look-aheads: the EQ kernel's and the Haas copy's
    x = np.repeat(song["bass"][:, :1], 2, axis=1)
    chain, rendered = fxnorm.fit_normalizer("bass", x, stats)
    assert any(isinstance(part, fxnorm.Haas) for e in chain.effects if isinstance(e, fxnorm.ChainOf)
               for part in e.effects)
    # what the FIR holds (its half length and, at most, one overlap-save FFT block) and the copy ahead
    held_at_most = fxnorm.EQ_TAPS + EQ_FFT_BLOCK + fxnorm.HAAS_MAX_DELAY
    stream, pushed, out = chain.stream(len(x)), 0, []
    for start in range(0, len(x), WORKING_RATE):
        block = x[start:start + WORKING_RATE]
        pushed += len(block)
        out.append(stream.push(block, last=pushed == len(x)))
        assert len(out[0]) > 0  # the first one-second push already gives output
        assert sum(map(len, out)) >= pushed - held_at_most, f"held back more than the look-ahead at {pushed}"
    np.testing.assert_allclose(np.concatenate(out), rendered, atol=1e-4)


def test_a_silent_stem_passes_unchanged(stats):
    silence = np.zeros((3 * WORKING_RATE, 2), np.float32)
    chain, rendered = fxnorm.fit_normalizer("drums", silence, stats)
    assert chain.effects == [] and not np.any(rendered)
    assert not np.any(in_blocks(chain, silence, [1000]))


def test_a_stem_under_the_gate_passes_unchanged(song, stats):
    # peaks at −45 dBFS, under MST's −40 dB gate: every step passes it, in one call or in blocks
    x = song["vocals"] * np.float32(10.0 ** (-45.0 / 20.0) / np.max(np.abs(song["vocals"])))
    chain, rendered = fxnorm.fit_normalizer("vocals", x, stats)
    np.testing.assert_allclose(rendered, x, atol=1e-7)
    np.testing.assert_allclose(in_blocks(chain, x, [4095, 13]), x, atol=1e-7)
    np.testing.assert_allclose(fxnorm.normalize_stems({"vocals": x}, stats)["vocals"], x, atol=1e-7)
