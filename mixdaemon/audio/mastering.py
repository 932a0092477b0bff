"""The last stage of every engine: remix the converted stems and make the result safe to play.

Users expect converted stems that never clip and that sum, in their DAW, to exactly the mix we
write. So the limiter is *linked*: one gain curve, computed from the true-peak envelopes of the
mixture and of every stem together, is applied to every stem, and the mixture is the sum of the
limited stems. Each output therefore stays under the ceiling (−1 dBTP by default) and the stems
still add up to the mix.

The gain curve: required gain r(t) = min(1, ceiling / true-peak envelope(t)); a lookahead minimum
filter followed by a box average of at most the same width (so the smoothed gain never exceeds r and
never clips) and a one-pole release. What that gain's changes between samples add to the intersample
peaks is taken off by a second stage of the same kind on the once-limited stems, so the whole limiter
runs block by block (a song of any length in memory bounded by the block): the stems in, the limited
stems and the mix out.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
import scipy.fft
from scipy import signal

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE, db
from mixdaemon.audio.streams import History, whole

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
    each sample: the level a D/A converter can actually reach (float32).

    Exact wherever it could reach `above`. Elsewhere it is an upper bound below `above` (the
    interpolator's worst case around those samples), which spares the oversampling of the quiet
    parts: the limiter only needs the envelope where it may exceed its target, a peak meter only
    where it may exceed the loudest sample."""
    return whole(TruePeakEnvelope(above), x)


class TruePeakEnvelope:
    """true_peak_envelope as a stream: (m, channels) blocks in, the envelope of the samples ready
    out, in whole _BLOCKs (the last one shorter) once _CONTEXT samples beyond each have come in.
    With `up_to_peak`, a part is also exact wherever it could reach the loudest sample up to its
    end: then the envelope's maximum is the true peak whatever `above` is (a peak meter that cannot
    know the song's loudest sample in advance)."""

    def __init__(self, above: float = 0.0, up_to_peak: bool = False):
        self.above, self.up_to_peak = float(above), up_to_peak

    def stream(self, n_samples: int) -> _TruePeakEnvelopeStream:
        return _TruePeakEnvelopeStream(self, n_samples)


class _TruePeakEnvelopeStream:
    def __init__(self, effect: TruePeakEnvelope, n_samples: int):
        self.history = History()
        self.reader = _EnvelopeReader(effect, n_samples)

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        self.history.append(block[:, None] if block.ndim == 1 else block)
        lo, stop, hi = self.reader.span(self.history.end, last)
        out = self.reader.envelope(self.history.window(lo, hi), lo, stop)
        self.history.forget(stop - _CONTEXT)
        return out


class _EnvelopeReader:
    """Where a true-peak envelope stream stands, and the envelope of its next samples from a window
    of the signal. Which parts are exact is decided per _BLOCK samples counted from the signal's
    start, and each measured run reads _CONTEXT samples around it, so the values do not depend on
    how the signal comes in blocks."""

    def __init__(self, effect: TruePeakEnvelope, n_samples: int):
        self.effect, self.n = effect, int(n_samples)
        self.done = 0          # absolute position of the next envelope sample to give
        self.loudest = 0.0     # the largest |sample| before `done`

    def span(self, end: int, last: bool) -> tuple[int, int, int]:
        """(lo, stop, hi) given the signal up to `end`: the envelope can now be given up to `stop`,
        from the samples lo..hi."""
        if last:
            self.n = end
        stop = self.done  # whole _BLOCKs whose context has come in (the last one once the signal has)
        while stop < self.n and min(self.n, stop + _BLOCK + _CONTEXT) <= end:
            stop = min(self.n, stop + _BLOCK)
        return max(0, self.done - _CONTEXT), stop, min(end, stop + _CONTEXT)

    def envelope(self, x: np.ndarray, lo: int, stop: int) -> np.ndarray:
        """The envelope of samples done..stop, x being the signal's samples from lo on as `span` said."""
        if stop == self.done:
            return np.zeros(0, np.float32)
        sample_peak = _channel_abs_max(x)
        out = np.empty(stop - self.done, np.float32)
        needed = []
        for first in range(self.done, stop, _BLOCK):
            end = min(stop, first + _BLOCK)
            # the interpolator's worst case anywhere in the part: what it reads is within _REACH
            bound = _WORST_CASE_GAIN * float(sample_peak[max(0, first - _REACH - lo):end + _REACH - lo].max(initial=0.0))
            level = self.effect.above
            if self.effect.up_to_peak:
                self.loudest = max(self.loudest, float(sample_peak[first - lo:end - lo].max(initial=0.0)))
                level = min(level, self.loudest)
            if bound >= level:
                needed.append(first // _BLOCK)
            else:
                out[first - self.done:end - self.done] = bound
        for first, last_block in _runs(needed):
            start, end = first * _BLOCK, min(stop, (last_block + 1) * _BLOCK)
            a, b = max(0, start - _CONTEXT), min(self.n, end + _CONTEXT)
            points = _oversampled_envelope(x[a - lo:b - lo], sample_peak[a - lo:b - lo])
            out[start - self.done:end - self.done] = points[start - a:end - a]
        self.done = stop
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


def _polyphase_branches() -> np.ndarray:
    """The interpolator's OVERSAMPLING branches as centred FIRs: oversampled point k of sample n is
    Σ_u branch_k[u + half]·x[n − u] (the filter's group delay, in oversampled points, taken out)."""
    delay = (len(_INTERPOLATOR) - 1) // 2
    parts = [divmod(k + delay, OVERSAMPLING) for k in range(OVERSAMPLING)]  # (shift, phase) per point
    taps = [_INTERPOLATOR[phase::OVERSAMPLING] for _, phase in parts]
    half = max(max(shift, len(t) - 1 - shift) for (shift, _), t in zip(parts, taps))
    branches = np.zeros((OVERSAMPLING, 2 * half + 1), np.float32)
    for k, ((shift, _), t) in enumerate(zip(parts, taps)):
        branches[k, half - shift:half - shift + len(t)] = t
    return branches


_BRANCHES = _polyphase_branches()
_FFT = 2048                                 # overlap-save frame of the oversampling
_BRANCH_SPECTRA = scipy.fft.rfft(_BRANCHES, n=_FFT).astype(np.complex64)
_FRAMES_AT_ONCE = 128                       # frames transformed together (~0.25 M samples)


def _oversampled_envelope(x: np.ndarray, sample_peak: np.ndarray) -> np.ndarray:
    """The exact envelope of x (zeros beyond its ends), sample_peak being _channel_abs_max(x)."""
    # Overlap-save in float32 (the points to float32 rounding): each frame of every channel is
    # transformed once and gives all OVERSAMPLING branches, a few frames at a time so that the
    # spectra of a long run never all sit in memory.
    n, taps = x.shape[0], _BRANCHES.shape[1]
    step = _FFT - (taps - 1)
    n_frames = -(-n // step)
    padded = np.zeros((n_frames * step + taps - 1, x.shape[1]), np.float32)
    padded[(taps - 1) // 2:(taps - 1) // 2 + n] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, _FFT, axis=0)[::step]  # (frames, channels, _FFT)
    out = sample_peak.copy()
    for first in range(0, n_frames, _FRAMES_AT_ONCE):
        spectra = scipy.fft.rfft(frames[first:first + _FRAMES_AT_ONCE], axis=-1)
        start, stop = first * step, min(n, (first + spectra.shape[0]) * step)
        for branch in _BRANCH_SPECTRA:
            points = scipy.fft.irfft(spectra * branch, n=_FFT, axis=-1)[..., taps - 1:]
            loudest = np.abs(points[:, 0])  # channel by channel: numpy's max over the axis is slower
            for c in range(1, points.shape[1]):
                np.maximum(loudest, np.abs(points[:, c]), out=loudest)
            loudest = loudest.reshape(-1)[:stop - start]
            np.maximum(out[start:stop], loudest, out=out[start:stop])
    return out


@numba.njit(cache=True, nogil=True)
def _channel_abs_max(x):
    """Per sample, the largest |value| over channels (one pass, no temporaries: 3x faster than
    numpy's column by column)."""
    out = np.empty(x.shape[0], x.dtype)
    for n in range(x.shape[0]):
        loudest = abs(x[n, 0])
        for c in range(1, x.shape[1]):
            loudest = max(loudest, abs(x[n, c]))
        out[n] = loudest
    return out


def sum_of(signals: list[np.ndarray]) -> np.ndarray:
    """The sum of equally shaped signals (a new array): added one by one, several times faster
    than np.sum over the list, which stacks them first."""
    total = signals[0].copy() if len(signals) == 1 else signals[0] + signals[1]
    for x in signals[2:]:
        total += x
    return total


def true_peak_dbtp(x: np.ndarray) -> float:
    """BS.1770-4 true peak of a signal in dBTP."""
    if x.size == 0:
        return float("-inf")
    x = np.asarray(x, dtype=np.float32)
    return float(db(true_peak_envelope(x, above=float(np.max(np.abs(x)))).max()))


@numba.njit(cache=True, nogil=True)
def _gain_curve(envelope, ceiling, half, start, stop, alpha, g):
    """The limiter's gain for envelope[start:stop] and the release's state after it, g being the
    state before. envelope reaches 2·half samples beyond start and stop, or its ends are the
    signal's, where the filters hold the end values ('nearest')."""
    n, width = envelope.shape[0], 2 * half + 1
    # required gain, padded with 1.0 (no smaller than any required gain, so a minimum over the
    # padded window is the one over the window cut at the ends)
    required = np.ones(n + 2 * half)
    limiting = False
    for i in range(n):
        required[i + half] = min(1.0, ceiling / max(float(envelope[i]), 1e-12))
        limiting = limiting or required[i + half] < 1.0
    if not limiting and g == 1.0:
        return np.ones(stop - start), g  # what the filters and the release would give
    # held[i]: the minimum of required over i ± half, by van Herk's prefix and suffix minima over
    # blocks of the window's width (three passes whatever the width)
    prefix, suffix = np.empty_like(required), np.empty_like(required)
    for first in range(0, required.shape[0], width):
        last = min(first + width, required.shape[0]) - 1
        prefix[first], suffix[last] = required[first], required[last]
        for i in range(first + 1, last + 1):
            prefix[i] = min(prefix[i - 1], required[i])
        for i in range(last - 1, first - 1, -1):
            suffix[i] = min(suffix[i + 1], required[i])
    held = np.empty(n)
    for i in range(n):
        held[i] = min(suffix[i], prefix[i + width - 1])
    # the box average of held over i ± half (a running sum), never above the required gain
    # (which it only exceeds by rounding), and the one-pole release
    total = 0.0
    for j in range(start - half, start + half + 1):
        total += held[min(max(j, 0), n - 1)]
    out = np.empty(stop - start)
    for i in range(start, stop):
        target = min(total / width, required[i + half])
        g = target if target < g else alpha * g + (1.0 - alpha) * target
        out[i - start] = g
        total += held[min(i + half + 1, n - 1)] - held[max(i - half, 0)]
    return out, g


def limiter_gain(envelope: np.ndarray, ceiling: float, sr: int = WORKING_RATE,
                 lookahead_ms: float = 2.0, release_ms: float = 150.0) -> np.ndarray:
    """Gain curve that keeps envelope·gain ≤ ceiling, ramping down over the lookahead before a peak
    and recovering with the release time constant afterwards."""
    return whole(LimiterGain(ceiling, sr, lookahead_ms, release_ms), np.asarray(envelope, dtype=np.float64))


class LimiterGain:
    """The limiter's gain curve as a stream over an envelope (1-D blocks in, the gain of the samples
    ready out): required gain r = min(1, ceiling / envelope), a minimum filter over ±half samples,
    a box average of the same width (so the smoothed gain never exceeds r) and a one-pole release.
    Each output sample reads the envelope 2·half samples ahead; the release carries its state."""

    def __init__(self, ceiling: float, sr: int = WORKING_RATE, lookahead_ms: float = 2.0, release_ms: float = 150.0):
        self.ceiling = float(ceiling)
        self.half = max(1, int(sr * lookahead_ms / 1000))
        self.alpha = float(np.exp(-1.0 / (0.001 * sr * release_ms)))

    def stream(self, n_samples: int) -> _LimiterGainStream:
        return _LimiterGainStream(self, n_samples)


class _LimiterGainStream:
    def __init__(self, effect: LimiterGain, n_samples: int):
        self.effect, self.n = effect, int(n_samples)
        self.envelope = History()
        self.done = 0
        self.g = 1.0  # the release's state: the gain of sample done - 1

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        effect, reach = self.effect, 2 * self.effect.half
        self.envelope.append(np.asarray(block))
        if last:
            self.n = self.envelope.end
        stop = self.n if self.envelope.end >= self.n else max(self.done, self.envelope.end - reach)
        if stop == self.done:
            return np.zeros(0)
        lo, hi = max(0, self.done - reach), min(self.envelope.end, stop + reach)
        gain, self.g = _gain_curve(self.envelope.window(lo, hi), effect.ceiling, effect.half,
                                   self.done - lo, stop - lo, effect.alpha, self.g)
        self.envelope.forget(stop - reach)
        self.done = stop
        return gain


class Limited(NamedTuple):
    stems: dict[str, np.ndarray]
    mixture: np.ndarray       # the sum of the limited stems
    true_peak_dbtp: float     # the mixture's, measured by the limiter's own last pass


def limit_linked(stems: dict[str, np.ndarray], ceiling_dbtp: float = TRUE_PEAK_CEILING_DBTP,
                 sr: int = WORKING_RATE) -> Limited:
    """Limit the stems with one shared gain curve: the limited stems, their sum (the mix) and its
    true peak."""
    stems = {k: np.asarray(v, dtype=np.float32) for k, v in stems.items()}
    stream = LinkedLimiter(ceiling_dbtp, sr).stream(next(iter(stems.values())).shape[0])
    limited, mixture = stream.push(stems, last=True)
    return Limited(limited, mixture, stream.true_peak_dbtp)


class LinkedLimiter:
    """The job's linked limiter as a stream over the stems: `stream(n).push({name: block}, last)`
    gives the limited stems and their sum for the samples ready (the same number for every stem),
    and, after the last push, `true_peak_dbtp`: the mix's true peak."""

    def __init__(self, ceiling_dbtp: float = TRUE_PEAK_CEILING_DBTP, sr: int = WORKING_RATE):
        # Aim a hair under the ceiling so that float32 rounding, 24-bit quantization and resampling
        # back to the file's rate cannot push the written file over it.
        self.ceiling = 10.0 ** ((ceiling_dbtp - 0.05) / 20.0)
        # ...and each stage a little under that, for what the gain's own changes between samples
        # add to the intersample peaks
        self.target = self.ceiling * 0.995
        self.sr = sr

    def stream(self, n_samples: int) -> LinkedLimiterStream:
        return LinkedLimiterStream(self, n_samples)


class LinkedLimiterStream:
    """Two limiter stages of the same look-ahead: the first brings the envelope of the mix and of
    every stem to the target; the second measures what the first one's gain changes added between
    samples (thousandths of a dB on real stems, 0.006 dB on loud bursts of a 19 kHz tone) and takes
    that off where it happens, with a gain whose own changes are that much smaller again. The mix's
    true peak is read from the second stage's envelope of the mix times its gain."""

    def __init__(self, limiter: LinkedLimiter, n_samples: int):
        self.stages = [_Stage(limiter, n_samples, meter=False), _Stage(limiter, n_samples, meter=True)]

    def push(self, stems: dict[str, np.ndarray], last: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
        stems = {k: np.asarray(v, dtype=np.float32) for k, v in stems.items()}
        if len({x.shape[0] for x in stems.values()}) > 1:
            raise ValueError(f"the linked limiter takes the stems in step; got {[x.shape[0] for x in stems.values()]} samples")
        signals = len(stems) + (len(stems) > 1)
        with ThreadPoolExecutor(max_workers=max(1, min(signals, defaults.job_threads()))) as pool:
            for stage in self.stages:
                stems = stage.push(stems, last, pool)
        return stems, sum_of(list(stems.values()))

    @property
    def true_peak_dbtp(self) -> float:
        return float(db(self.stages[-1].mix_peak))


class _Stage:
    """One limiter stage: the true-peak envelope of the mix and of every stem (a lone stem is its
    own mix) exact wherever it may reach the target (below it the gain is 1 either way), one gain
    curve from their maximum, the stems held until their gain is known (which is also as long as
    the envelopes need them). With `meter`, the mix's envelope is also exact near its loudest
    sample, and its maximum times the gain is kept."""

    def __init__(self, limiter: LinkedLimiter, n_samples: int, meter: bool):
        self.n, self.target, self.meter = n_samples, limiter.target, meter
        self.readers: list[_EnvelopeReader] = []
        self.gain = LimiterGain(limiter.target, limiter.sr).stream(n_samples)
        self.held: dict[str, History] = {}
        self.mix_envelope = History()
        self.done = 0
        self.mix_peak = 0.0

    def push(self, stems: dict[str, np.ndarray], last: bool, pool: ThreadPoolExecutor) -> dict[str, np.ndarray]:
        if not self.held:
            self.held = {name: History() for name in stems}
            self.readers = [_EnvelopeReader(TruePeakEnvelope(self.target, up_to_peak=self.meter), self.n)]
            self.readers += [_EnvelopeReader(TruePeakEnvelope(self.target), self.n) for _ in stems if len(stems) > 1]
        for name, block in stems.items():
            self.held[name].append(block)
        end = next(iter(self.held.values())).end
        lo, stop, hi = [reader.span(end, last) for reader in self.readers][0]  # the same for every signal
        windows = [held.window(lo, hi) for held in self.held.values()]
        signals = [sum_of(windows), *windows] if len(windows) > 1 else windows
        # the oversampling releases the GIL: the signals in parallel, then a running maximum
        envelopes = pool.map(lambda job: job[0].envelope(job[1], lo, stop), zip(self.readers, signals))
        mix_envelope = next(envelopes)
        envelope = mix_envelope.copy()
        for other in envelopes:
            np.maximum(envelope, other, out=envelope)
        gain = self.gain.push(envelope, last)
        done, self.done = self.done, self.done + gain.shape[0]
        if self.meter:
            self.mix_envelope.append(mix_envelope)
            if gain.size:
                self.mix_peak = max(self.mix_peak, float(np.max(self.mix_envelope.window(done, self.done) * gain)))
            self.mix_envelope.forget(self.done)
        limiting = gain.size > 0 and gain.min() < 1.0
        gain32 = gain[:, None].astype(np.float32)
        out = {}
        for name, held in self.held.items():
            ready = held.window(done, self.done)
            out[name] = ready * gain32 if limiting else ready
            held.forget(min(self.done, stop - _CONTEXT))
        return out
