"""The last stage of every engine: remix the converted stems and make the result safe to play.

Users expect converted stems that never clip and that sum, in their DAW, to exactly the mix we
write. So the limiter is *linked*: one gain curve, computed from the true-peak envelopes of the
mixture and of every stem together, is applied to every stem, and the mixture is the sum of the
limited stems. Each output therefore stays under the ceiling (−1 dBTP by default) and the stems
still add up to the mix.

The gain curve: required gain r(t) = min(1, ceiling / true-peak envelope(t)); a lookahead minimum
filter followed by a box average of at most the same width (so the smoothed gain never exceeds r and
never clips) and a one-pole release. A final measurement confirms the ceiling; any residual overshoot
(from gain changes between samples) is removed by running again with the ceiling lowered by it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
from scipy import ndimage, signal

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE, db

TRUE_PEAK_CEILING_DBTP = -1.0
OVERSAMPLING = 4  # BS.1770-4 annex 2: 4x oversampling for true-peak measurement at 44.1/48 kHz
# Interpolation filter for the oversampling: 193 taps (~48 per phase), Kaiser β=8, cut just below
# the original Nyquist. Flat to 0.99 up to 20 kHz, so it does not underestimate overs from bright
# material the way a short filter does (a 48-tap filter reads a 19 kHz full-scale sine 2 dB low).
# An odd length gives a whole-point group delay, so the oversampled points fall exactly at n + k/4;
# an even length shifts them by 1/8 sample and reads an 11 kHz peak 0.17 dB low.
_INTERPOLATOR = (signal.firwin(193, 0.247, window=("kaiser", 8.0)) * OVERSAMPLING).astype(np.float32)


# What the interpolation can make of a signal, at most: each oversampled point is one phase of the
# filter (about 49 taps, centred on its sample) applied to the samples around it, so it is at most
# that phase's L1 norm times the largest |x| within _REACH samples.
_WORST_CASE_GAIN = float(max(np.abs(_INTERPOLATOR[r::OVERSAMPLING]).sum() for r in range(OVERSAMPLING)))
_REACH = len(_INTERPOLATOR) // (2 * OVERSAMPLING) + 2
_BLOCK = 8192          # samples measured exactly at a time where the bound says it may matter
_CONTEXT = 2 * _REACH  # samples read on each side of a block, so its points are those of the whole signal


def true_peak_envelope(x: np.ndarray, above: float = 0.0) -> np.ndarray:
    """Per-sample maximum of |x| over channels and over the 4x-oversampled points that follow
    each sample: the level a D/A converter can actually reach.

    Exact wherever it could reach `above`. Elsewhere it is an upper bound below `above` (the
    interpolator's worst case around that sample), which spares the oversampling of the quiet
    parts: the limiter only needs the envelope where it may exceed its target, a peak meter only
    where it may exceed the loudest sample."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    sample_peak = _channel_abs_max(x) if x.size else np.zeros(x.shape[0], np.float32)
    bound = np.maximum(ndimage.maximum_filter1d(sample_peak, 2 * _REACH + 1) * _WORST_CASE_GAIN, sample_peak)
    n_blocks = -(-x.shape[0] // _BLOCK)
    needed = [b for b in range(n_blocks) if bound[b * _BLOCK:(b + 1) * _BLOCK].max() >= above]
    out = bound.astype(np.float64)
    for first, last in _runs(needed):
        start, stop = first * _BLOCK, min(x.shape[0], (last + 1) * _BLOCK)
        lo, hi = max(0, start - _CONTEXT), min(x.shape[0], stop + _CONTEXT)
        out[start:stop] = _oversampled_envelope(x[lo:hi])[start - lo:stop - lo]
    return out


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs in a sorted list of block indices, as (first, last) pairs."""
    runs = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _oversampled_envelope(x: np.ndarray) -> np.ndarray:
    # Oversampled point k of sample n (k = 0..3) is one polyphase branch of the interpolator
    # applied around n; each branch is a float32 FFT convolution of all channels at once (2.3x
    # faster than the direct upsampling filter, same points to float32 rounding).
    out = _channel_abs_max(x)
    delay = (len(_INTERPOLATOR) - 1) // 2  # the filter's group delay in oversampled points
    for k in range(OVERSAMPLING):
        shift, branch = divmod(k + delay, OVERSAMPLING)
        points = signal.oaconvolve(x, _INTERPOLATOR[branch::OVERSAMPLING, None], axes=0)[shift:shift + x.shape[0]]
        np.maximum(out[:points.shape[0]], _channel_abs_max(points), out=out[:points.shape[0]])
    return out.astype(np.float64)


def _channel_abs_max(x: np.ndarray) -> np.ndarray:
    """Per sample, the largest |value| over channels (column by column: numpy's max over rows of
    two is several times slower)."""
    out = np.abs(x[:, 0])
    for c in range(1, x.shape[1]):
        np.maximum(out, np.abs(x[:, c]), out=out)
    return out


def true_peak_dbtp(x: np.ndarray) -> float:
    """BS.1770-4 true peak of a signal in dBTP."""
    if x.size == 0:
        return float("-inf")
    x = np.asarray(x, dtype=np.float32)
    return float(db(true_peak_envelope(x, above=float(np.max(np.abs(x)))).max()))


@numba.njit(cache=True)
def _release(gain, alpha):
    out = np.empty_like(gain)
    g = 1.0
    for n in range(gain.shape[0]):
        target = gain[n]
        g = target if target < g else alpha * g + (1.0 - alpha) * target
        out[n] = g
    return out


def limiter_gain(envelope: np.ndarray, ceiling: float, sr: int = WORKING_RATE,
                 lookahead_ms: float = 2.0, release_ms: float = 150.0) -> np.ndarray:
    """Gain curve that keeps envelope·gain ≤ ceiling, ramping down over the lookahead before a peak
    and recovering with the release time constant afterwards."""
    required = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
    if required.min() >= 1.0:
        return required
    half = max(1, int(sr * lookahead_ms / 1000))
    held = ndimage.minimum_filter1d(required, size=2 * half + 1, mode="nearest")
    smoothed = ndimage.uniform_filter1d(held, size=2 * half + 1, mode="nearest")
    # The box average of a min-filtered curve of equal half-width never exceeds `required`, up to
    # rounding; the final minimum makes that exact.
    smoothed = np.minimum(smoothed, required)
    return _release(smoothed, float(np.exp(-1.0 / (0.001 * sr * release_ms))))


class Limited(NamedTuple):
    stems: dict[str, np.ndarray]
    mixture: np.ndarray       # the sum of the limited stems
    true_peak_dbtp: float     # the mixture's, measured by the limiter's own last pass


def limit_linked(stems: dict[str, np.ndarray], ceiling_dbtp: float = TRUE_PEAK_CEILING_DBTP,
                 sr: int = WORKING_RATE) -> Limited:
    """Limit the stems with one shared gain curve: the limited stems, their sum (the mix) and its
    true peak."""
    # Aim a hair under the ceiling so that float32 rounding, 24-bit quantization and resampling
    # back to the file's rate cannot push the written file over it.
    ceiling = 10.0 ** ((ceiling_dbtp - 0.05) / 20.0)
    stems = {k: np.asarray(v, dtype=np.float32) for k, v in stems.items()}

    target = ceiling * 0.995

    def envelope() -> tuple[np.ndarray, float]:
        """The envelope over the mix and every stem, exact wherever it may reach the target (below
        it the gain is 1 either way), and the mix's true peak (its envelope also exact near its
        loudest sample, so the meter reading costs no pass of its own). The signals in parallel:
        the oversampling releases the GIL."""
        mix = np.sum(list(stems.values()), axis=0)
        mix_above = min(target, float(np.max(np.abs(mix), initial=0.0)))
        # a lone stem is its own mix: its envelope once (exact from mix_above ≤ target up)
        jobs = [(mix, mix_above), *((s, target) for s in stems.values() if len(stems) > 1)]
        with ThreadPoolExecutor(max_workers=min(len(jobs), defaults.job_threads())) as pool:
            envelopes = pool.map(lambda job: true_peak_envelope(*job), jobs)
            # a running maximum: stacking five song-long float64 envelopes first costs more than the max
            out = next(envelopes)
            mix_peak = float(out.max(initial=0.0))
            for env in envelopes:
                np.maximum(out, env, out=out)
            return out, mix_peak

    env, mix_peak = envelope()
    if env.max() > ceiling:
        gain = limiter_gain(env, target, sr)[:, None].astype(np.float32)
        stems = {k: v * gain for k, v in stems.items()}
        # The smooth gain scales the envelope almost exactly; what gain changes between samples
        # add to intersample peaks is removed by a static trim (a few hundredths of a dB at most).
        env, mix_peak = envelope()
        worst = env.max()
        if worst > ceiling:
            stems = {k: v * np.float32(ceiling / worst) for k, v in stems.items()}
            mix_peak *= ceiling / worst  # the envelope scales with the signal
    mix = np.sum(list(stems.values()), axis=0)
    return Limited(stems, mix, float(db(mix_peak)))
