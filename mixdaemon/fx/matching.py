"""Matching one stem's sound to a reference stem's, aspect by aspect: the match engine's steps
(mixing/match.py). Each aspect has a measurement (what the reference has that the input lacks) and a
small callable that applies it, scaled by an `amount` (0: nothing, 1: all the way):

- eq — `EqCurve`: long-term power spectra of both stems (EQ_FFT-point Hann frames, both channels),
  smoothed over EQ_SMOOTHING_OCTAVES on a log-frequency grid; the curve is reference − input in
  dB with its mean over the audible bands removed (the level is the level step's job), limited to
  ±MAX_EQ_DB and held flat where either stem has no energy to compare (more than
  EQ_FLOOR_DB below its loudest band: boosting an empty band only lifts noise). Applied as a
  linear-phase FIR whose delay is taken out, so the stem stays aligned with the others.
- dynamics — `LevelMap` twice, then `PeakCeiling`. A level map takes the distributions of both
  stems' short-term levels on one time scale, relative to their medians, and maps the input's
  level quantiles onto the reference's with a static curve (a compressor where the reference is
  more even, an expander where it is more dynamic; slopes within [1/MAX_RATIO, MAX_EXPANSION],
  gains within MAX_CUT_DB/MAX_BOOST_DB). Its gain follows the input's levels with attack/release
  smoothing, channels linked. First on 3-s windows (PHRASE: the riding over phrases that loudness
  range measures), then on 10-ms windows (NOTE: the evenness a compressor gives). Last, peaks that
  stand further above the loudness than the reference's (true peak − integrated loudness) are
  limited down to the reference's peak-to-loudness ratio.
- width — `StereoMatch`: the side/mid energy ratio and the right/left balance, each the median
  over ~93-ms frames. Both are solved on the frames' 2×2 channel covariances (no audio pass per
  trial) and applied as one 2×2 matrix: a side gain (mid kept) after balance gains. A mono input
  cannot be widened: it keeps its side gain.
- space — `SyntheticReverb`: how reverberant a stem sounds is `space_profile_db`, how far its
  10-ms level can fall 50–400 ms after a loud moment (the fastest falls: a dry stem falls to
  silence between notes, a reverb's tail holds the level up). Where the reference's profile is
  higher than the input's, a send of the input's mid signal to a synthetic reverb (decorrelated
  exponentially decaying noise, FFT convolution) is added, its decay time and level the driest of
  those that bring the profile to the reference's, fitted on a few windows of the stem. A reverb
  can be added, not taken away: a reference no more reverberant than the input gets no send.
- level — `loudness_gain_db`: the gain that brings the stem to the reference stem's integrated
  loudness (BS.1770), last, so that the balance between the stems is the reference's.

Every effect is streamable (audio/streams.py): fitted once, it renders a song of any length block
by block, its whole-signal call being its stream fed in one block. The measurements of one stem take
a few tens of milliseconds per minute of audio; the FIR and the gain envelope are FFT convolution
and one pass. A reverb send costs about a second for a 3-minute
stem (its fit on 12 s of windows, then one FFT convolution).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft

from mixdaemon.audio.dsp import ABSOLUTE_GATE_LUFS, WORKING_RATE, db_to_amp, frame_signal, loudness_lufs
from mixdaemon.audio.mastering import LimiterGain, true_peak_dbtp
from mixdaemon.audio.streams import History, Samplewise, whole
from mixdaemon.fx.features import excerpt

# --- eq -----------------------------------------------------------------------------------------------

EQ_FFT = 8192                    # 5.4 Hz bins: the bass's octave below 100 Hz has ~10 of them
EQ_MAX_FRAMES = 512              # ≈ 48 s of spectrum frames, spread over the stem
EQ_GRID_HZ = np.geomspace(25.0, 20000.0, 97)  # 1/10-octave steps of the curve
EQ_SMOOTHING_OCTAVES = 0.5       # a reference of other notes differs in content within a third-octave
EQ_FLOOR_DB = 60.0
MAX_EQ_DB = 15.0
EQ_TAPS = 4096 + 1
EQ_FFT_BLOCK = 8 * (EQ_TAPS - 1)  # the FIR's overlap-save FFTs: 7/8 of each is output
_EQ_FFTS_AT_ONCE = 32             # ~1 M samples transformed per call: the speed of one big call, and
                                  # a song's spectra never all in memory
_EQ_BIN_HZ = np.fft.rfftfreq(EQ_FFT, 1.0 / WORKING_RATE)
_EQ_WINDOW = np.hanning(EQ_FFT).astype(np.float32)
_EQ_FIT_RANGE_HZ = (40.0, 16000.0)  # where the curve's mean is taken


def long_term_spectrum(x: np.ndarray) -> np.ndarray:
    """Mean power per rFFT bin of EQ_FFT-point frames (half overlap, both channels summed), at most
    EQ_MAX_FRAMES frames spread evenly over the stem."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < EQ_FFT:
        x = np.pad(x, ((0, EQ_FFT - x.shape[0]), (0, 0)))
    frames = frame_signal(x, EQ_FFT, EQ_FFT // 2)  # (frames, channels, EQ_FFT)
    if frames.shape[0] > EQ_MAX_FRAMES:
        frames = frames[np.linspace(0, frames.shape[0] - 1, EQ_MAX_FRAMES).round().astype(int)]
    spectrum = scipy.fft.rfft(frames * _EQ_WINDOW, axis=-1)
    return np.mean(spectrum.real ** 2 + spectrum.imag ** 2, axis=(0, 1), dtype=np.float64)


def smoothed_spectrum_db(power: np.ndarray) -> np.ndarray:
    """The spectrum's mean power within ±EQ_SMOOTHING_OCTAVES/2 of each EQ_GRID_HZ frequency, dB."""
    half = 2.0 ** (EQ_SMOOTHING_OCTAVES / 2)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    lo = np.searchsorted(_EQ_BIN_HZ, EQ_GRID_HZ / half)
    hi = np.maximum(np.searchsorted(_EQ_BIN_HZ, EQ_GRID_HZ * half), lo + 1)
    return 10.0 * np.log10(np.maximum((cumulative[hi] - cumulative[lo]) / (hi - lo), 1e-20))


@dataclass
class EqCurve:
    """A gain per EQ_GRID_HZ frequency (dB) and the linear-phase FIR that applies it."""

    gains_db: np.ndarray

    @classmethod
    def between(cls, x_spectrum_db: np.ndarray, reference_spectrum_db: np.ndarray) -> "EqCurve":
        """The curve that moves smoothed_spectrum_db x_spectrum_db toward reference_spectrum_db."""
        usable = ((x_spectrum_db > x_spectrum_db.max() - EQ_FLOOR_DB)
                  & (reference_spectrum_db > reference_spectrum_db.max() - EQ_FLOOR_DB))
        if not usable.any():
            return cls(np.zeros_like(x_spectrum_db))
        difference = reference_spectrum_db - x_spectrum_db
        # Where nothing can be compared, hold the nearest comparable band's gain.
        index = np.arange(len(difference))
        difference = np.interp(index, index[usable], difference[usable])
        fit = (EQ_GRID_HZ >= _EQ_FIT_RANGE_HZ[0]) & (EQ_GRID_HZ <= _EQ_FIT_RANGE_HZ[1]) & usable
        centre = np.mean(difference[fit]) if fit.any() else np.mean(difference)
        return cls(np.clip(difference - centre, -MAX_EQ_DB, MAX_EQ_DB))

    def scaled(self, amount: float) -> "EqCurve":
        return EqCurve(self.gains_db * amount)

    def taps(self) -> np.ndarray:
        """The zero-phase FIR (EQ_TAPS long, centred) of the curve, interpolated on a log axis."""
        freqs = np.fft.rfftfreq(EQ_TAPS - 1, 1.0 / WORKING_RATE)
        log_f = np.log(np.clip(freqs, EQ_GRID_HZ[0], EQ_GRID_HZ[-1]))
        response = db_to_amp(np.interp(log_f, np.log(EQ_GRID_HZ), self.gains_db))
        impulse = np.fft.irfft(response, EQ_TAPS - 1)
        impulse = np.roll(impulse, (EQ_TAPS - 1) // 2)
        return np.append(impulse, impulse[0]) * np.hanning(EQ_TAPS)

    def stream(self, n_samples: int) -> "CentredFirStream | Samplewise":
        if not np.any(self.gains_db):
            return Samplewise(_float32)
        return CentredFirStream(self.taps().astype(np.float32), n_samples)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


def _float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _span(held: History, a: int, b: int, n: int) -> np.ndarray:
    """Samples a..b of a signal of n samples whose samples from a (or 0) on are held: zeros outside
    0..n, one copy."""
    out = np.zeros((b - a,) + held.data.shape[1:], dtype=held.data.dtype)
    lo, hi = max(a, 0), min(b, n)
    out[lo - a:hi - a] = held.window(lo, hi)
    return out


class _Held(History):
    """A stream's input held until the output of its samples is made: `take(m)` gives the next m
    samples in order and forgets them."""

    def __init__(self):
        super().__init__()
        self.done = 0

    def take(self, m: int) -> np.ndarray:
        out = self.window(self.done, self.done + m)
        self.done += m
        self.forget(self.done)
        return out


class CentredFirStream:
    """A linear-phase FIR (odd length, under EQ_FFT_BLOCK; taps [L] for every channel, or [channels,
    L] one per channel) with its delay taken out, so that the output stays aligned with the input:
    each output sample reads the input `delay` samples either side (zeros beyond the signal).
    Overlap-save: a push gives the whole FFT blocks' worth of samples whose reach is held (all the
    rest at the last)."""

    def __init__(self, taps: np.ndarray, n_samples: int):
        self.reach, self.n = taps.shape[-1] - 1, int(n_samples)
        self.delay, self.step = self.reach // 2, EQ_FFT_BLOCK - self.reach
        # float32 FFTs of both channels at once: 5x faster than float64 per channel, and the error
        # stays >120 dB below the signal
        self.response = scipy.fft.rfft(taps.astype(np.float32), EQ_FFT_BLOCK, axis=-1)
        self.held = History()
        self.done = 0

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        self.held.append(np.asarray(block, dtype=np.float32))
        ready = (self.n if last else min(self.n, self.held.end - self.delay)) - self.done
        count = ready if last else ready // self.step * self.step
        if count <= 0:
            return self.held.data[:0]
        blocks, channels = -(-count // self.step), self.held.data.shape[1:]
        start = self.done - self.delay
        segment = _span(self.held, start, start + blocks * self.step + self.reach, self.n)
        frames = np.lib.stride_tricks.sliding_window_view(segment, EQ_FFT_BLOCK, axis=0)[::self.step]
        out = np.empty((blocks, self.step) + channels, dtype=np.float32)
        for i in range(0, blocks, _EQ_FFTS_AT_ONCE):
            spectra = scipy.fft.rfft(frames[i:i + _EQ_FFTS_AT_ONCE], axis=-1) * self.response
            circular = scipy.fft.irfft(spectra, EQ_FFT_BLOCK, axis=-1)  # (blocks, channels, EQ_FFT_BLOCK)
            out[i:i + _EQ_FFTS_AT_ONCE] = np.moveaxis(circular[..., self.reach:], -1, 1)
        self.held.forget(self.done + count - self.delay)
        self.done += count
        return out.reshape((-1,) + channels)[:count]


# --- dynamics ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detector:
    """How a level curve reads a stem: mean power over `window` samples every `hop` samples; the
    gain it asks for is smoothed with attack/release time constants and acts `lag` samples after
    the window's start (window/2: centred, a look-ahead that catches a transient as it starts)."""

    window: int
    hop: int
    attack_ms: float
    release_ms: float
    quantiles: tuple[float, ...]

    @property
    def lag(self) -> float:
        return self.window / 2


# Two time scales: the level riding a mix engineer does over phrases (what loudness range measures,
# on 3-s windows), then the note-to-note evenness a compressor gives (10-ms windows).
PHRASE = Detector(window=3 * WORKING_RATE, hop=WORKING_RATE // 10, attack_ms=400.0, release_ms=1200.0,
                  quantiles=(10.0, 30.0, 50.0, 70.0, 95.0))
NOTE = Detector(window=441, hop=110, attack_ms=5.0, release_ms=80.0,
                quantiles=(10.0, 30.0, 50.0, 70.0, 85.0, 95.0, 99.0, 99.7))
ACTIVE_BELOW_LOUDEST_DB = 50.0   # quieter windows are not part of the stem's sound
SILENCE_DBFS = -70.0
MIN_WINDOWS = 40                 # fewer audible windows than this: too little sound to measure
MAX_RATIO = 8.0                  # the steepest compression a curve may ask for
MAX_EXPANSION = 2.0
MAX_CUT_DB = 18.0
MAX_BOOST_DB = 9.0


def short_term_levels_db(x: np.ndarray, detector: Detector) -> np.ndarray:
    """Mean power of the detector's windows (both channels), dB."""
    x = np.asarray(x, dtype=np.float32)
    power = np.einsum("ij,ij->i", x, x) / np.float32(x.shape[1])
    cumulative = np.concatenate([[0.0], np.cumsum(power, dtype=np.float64)])
    starts = np.arange(0, max(1, power.shape[0] - detector.window + 1), detector.hop)
    ends = np.minimum(starts + detector.window, power.shape[0])
    mean = (cumulative[ends] - cumulative[starts]) / np.maximum(ends - starts, 1)
    return 10.0 * np.log10(np.maximum(mean, 1e-20))


def _active(levels_db: np.ndarray) -> np.ndarray:
    return levels_db[(levels_db > SILENCE_DBFS) & (levels_db > levels_db.max() - ACTIVE_BELOW_LOUDEST_DB)]


@numba.njit(cache=True, nogil=True)
def _smooth_gain(target_db, alpha_attack, alpha_release, state):
    # One-pole smoothing of a gain curve from `state` (the gain before target_db[0]): falling gains
    # (more reduction) follow fast, rising slowly. The curve and its last value.
    out = np.empty_like(target_db)
    for i in range(target_db.shape[0]):
        alpha = alpha_attack if target_db[i] < state else alpha_release
        state = alpha * state + (1.0 - alpha) * target_db[i]
        out[i] = state
    return out, state


@dataclass
class LevelMap:
    """A static level curve on one detector's levels: input levels `points_db` (re the input's
    median level) map to `points_db + gains_db`; between points linear, beyond them the end gains
    hold. Its stream reads each window's level as soon as the window is in (detector.window +
    detector.hop samples ahead of the output at most)."""

    detector: Detector
    points_db: np.ndarray
    gains_db: np.ndarray
    median_db: float

    @classmethod
    def between(cls, x: np.ndarray, reference: np.ndarray, detector: Detector) -> "LevelMap | None":
        """The curve that maps x's level quantiles onto the reference's; None when either stem has
        too little sound to measure."""
        x_active, reference_active = (_active(short_term_levels_db(s, detector)) for s in (x, reference))
        if x_active.size < MIN_WINDOWS or reference_active.size < MIN_WINDOWS:
            return None
        median = float(np.median(x_active))
        qx = np.percentile(x_active, detector.quantiles) - median
        qr = np.percentile(reference_active, detector.quantiles) - np.median(reference_active)
        keep = np.concatenate([[True], np.diff(qx) > 0.1])
        qx, qr = qx[keep], qr[keep]
        # Output levels built outward from the median (gain 0 there: the level is the level
        # step's job), each segment's slope held within [1/MAX_RATIO, MAX_EXPANSION].
        centre = int(np.argmin(np.abs(qx)))
        out = np.empty_like(qx)
        out[centre] = qx[centre]
        for i in range(centre + 1, len(qx)):
            slope = np.clip((qr[i] - qr[i - 1]) / (qx[i] - qx[i - 1]), 1.0 / MAX_RATIO, MAX_EXPANSION)
            out[i] = out[i - 1] + slope * (qx[i] - qx[i - 1])
        for i in range(centre - 1, -1, -1):
            slope = np.clip((qr[i + 1] - qr[i]) / (qx[i + 1] - qx[i]), 1.0 / MAX_RATIO, MAX_EXPANSION)
            out[i] = out[i + 1] - slope * (qx[i + 1] - qx[i])
        return cls(detector, qx, np.clip(out - qx, -MAX_CUT_DB, MAX_BOOST_DB), median)

    def scaled(self, amount: float) -> "LevelMap":
        return LevelMap(self.detector, self.points_db, self.gains_db * amount, self.median_db)

    def gain_envelope_db(self, levels_db: np.ndarray, state: float | None = None) -> tuple[np.ndarray, float]:
        """The smoothed gain (dB) per detector window of a stem whose levels these are, from the
        smoothing's `state` (the gain of the window before; None: the first window's own), and the
        state after them."""
        target = np.interp(levels_db - self.median_db, self.points_db, self.gains_db)
        hop_s = self.detector.hop / WORKING_RATE
        attack, release = (float(np.exp(-hop_s / (ms / 1000.0)))
                           for ms in (self.detector.attack_ms, self.detector.release_ms))
        return _smooth_gain(target, attack, release, target[0] if state is None else state)

    def stream(self, n_samples: int) -> "_LevelMapStream | Samplewise":
        if not np.any(self.gains_db):
            return Samplewise(_float32)
        return _LevelMapStream(self, n_samples)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class _LevelMapStream:
    """short_term_levels_db's windows (starts every hop from sample 0, the last at most n − window
    in; each cut at n) measured as they come in, their gains smoothed in order, and the output's
    per-sample gain interpolated between the gains placed `lag` after their windows' starts. Power
    is summed as one float64 running sum over the signal, as the whole-signal levels are, and only
    its values at window edges are kept."""

    def __init__(self, level_map: LevelMap, n_samples: int):
        self.map, self.n = level_map, int(n_samples)
        d = level_map.detector
        self.windows = len(range(0, max(1, self.n - d.window + 1), d.hop))
        self.held = _Held()                        # the input not yet output
        self.at_starts, self.at_ends = History(), History()  # running power sums at windows' edges, per window
        self.gains = History()                     # smoothed gains (amplitude) per window
        self.total, self.state = 0.0, None         # the running sum so far; the smoothing's state
        self.measured = 0                          # windows measured

    def _edge(self, k: np.ndarray, end: bool) -> np.ndarray:
        d = self.map.detector
        return np.minimum(k * d.hop + d.window, self.n) if end else k * d.hop

    def _sums_at_edges(self, x: np.ndarray) -> None:
        """The running sums of power at the window edges that fall within x (the next block)."""
        power = np.einsum("ij,ij->i", x, x) / np.float32(x.shape[1])
        # one sequential float64 sum continued from the last block: the whole signal's values
        running = np.cumsum(np.concatenate([[self.total], power]), dtype=np.float64)
        first, self.total = self.held.end - x.shape[0], float(running[-1])
        last_start = min(self.windows, self.held.end // self.map.detector.hop + 1)  # no window starts later
        for edges, end in ((self.at_starts, False), (self.at_ends, True)):
            k = np.arange(edges.end, last_start)
            positions = self._edge(k, end)
            positions = positions[positions <= self.held.end]
            edges.append(running[positions - first])

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        self.held.append(x)
        self._sums_at_edges(x)
        d = self.map.detector
        ready = min(self.at_starts.end, self.at_ends.end)
        if ready > self.measured:
            k = np.arange(self.measured, ready)
            sums = self.at_ends.window(self.measured, ready) - self.at_starts.window(self.measured, ready)
            mean = sums / np.maximum(self._edge(k, True) - self._edge(k, False), 1)
            gains_db, self.state = self.map.gain_envelope_db(10.0 * np.log10(np.maximum(mean, 1e-20)), self.state)
            self.gains.append(db_to_amp(gains_db))
            self.at_starts.forget(ready)
            self.at_ends.forget(ready)
            self.measured = ready
        # a sample's gain is read between the two windows placed either side of it (after the last
        # one's place, its gain holds)
        stop = self.held.end if self.measured == self.windows else \
            min(self.held.end, int(np.floor((self.measured - 1) * d.hop + d.lag)) + 1) if self.measured else 0
        if stop <= self.held.done:
            return self.held.data[:0]
        first = min(self.measured - 1, max(0, int(np.floor((self.held.done - d.lag) / d.hop))))
        where = np.arange(first, self.measured) * d.hop + d.lag
        per_sample = np.interp(np.arange(self.held.done, stop), where, self.gains.window(first, self.measured)).astype(np.float32)
        self.gains.forget(min(self.measured - 1, max(0, int(np.floor((stop - d.lag) / d.hop)))))
        return self.held.take(stop - self.held.done) * per_sample[:, None]


MAX_PEAK_CUT_DB = 12.0
# A peak limiter's, not a bus limiter's, times: with the job limiter's 150-ms release, 12 dB off a
# drum stem's peaks lowered its peak-to-loudness ratio by 3 dB only (its hits carry its loudness).
PEAK_LOOKAHEAD_MS = 1.0
PEAK_RELEASE_MS = 20.0
PEAK_TRIALS = 5  # limiter passes on the excerpt: a secant search on the cut, to ~0.2 dB
EXCERPT_SECONDS = 8.0


def peak_to_loudness_db(x: np.ndarray, lufs: float | None = None) -> float:
    """True peak (dBTP) less integrated loudness (LUFS, `lufs` when already measured): how far the
    peaks stand out, as a meter shows it."""
    x = np.asarray(x, dtype=np.float32)
    return true_peak_dbtp(x) - (loudness_lufs(x) if lufs is None else lufs)


@dataclass
class PeakLimiter:
    """A look-ahead limiter (audio.mastering's gain, peak-limiter times) on the sample peak, at
    ceiling_db dBFS. The sample peak, not the true peak: the job's own limiter keeps the true peak
    under its ceiling; here the peaks only need to come down (and the true-peak envelope costs 10x)."""

    ceiling_db: float

    def stream(self, n_samples: int) -> "_PeakLimiterStream":
        return _PeakLimiterStream(LimiterGain(float(db_to_amp(self.ceiling_db)), lookahead_ms=PEAK_LOOKAHEAD_MS,
                                              release_ms=PEAK_RELEASE_MS).stream(n_samples))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class _PeakLimiterStream:
    def __init__(self, gain):
        self.gain, self.held = gain, _Held()

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        self.held.append(x)
        gain = self.gain.push(np.max(np.abs(x), axis=1), last)
        return self.held.take(gain.shape[0]) * gain[:, None].astype(np.float32)


@dataclass
class PeakCeiling:
    """A PeakLimiter whose ceiling is chosen so that the stem's peaks stand `plr_db` above its
    loudness, as the reference's do; a stem less peaky than that is left as it is (a limiter cannot
    add peaks). Limiting lowers the loudness too, so the cut is searched (secant steps on
    peak-to-loudness against the cut, PEAK_TRIALS limiter passes on an excerpt); the ceiling found
    is applied relative to the whole stem's loudness."""

    plr_db: float
    amount: float = 1.0

    def scaled(self, amount: float) -> "PeakCeiling":
        return PeakCeiling(self.plr_db, self.amount * amount)

    def ceiling_re_loudness_db(self, x: np.ndarray) -> float | None:
        """The limiter's ceiling (dB above x's loudness) that gives x the wanted peak-to-loudness
        ratio, searched on an excerpt of x (EXCERPT_SECONDS: the trials cost the same on a song of
        any length); None when x is no peakier than that already."""
        part = excerpt(np.asarray(x, dtype=np.float32), seconds=EXCERPT_SECONDS)
        loudness = loudness_lufs(part)
        if self.amount <= 0.0 or loudness <= SILENT_LUFS:
            return None
        start = peak_to_loudness_db(part, loudness)
        peak_db = start + loudness
        target = start - (start - self.plr_db) * self.amount
        if start - target <= 0.1:
            return None
        # secant steps on (cut, peak-to-loudness), from the excess itself as the first cut
        previous, cut = (0.0, start), min(start - target, MAX_PEAK_CUT_DB)
        for _ in range(PEAK_TRIALS):
            plr = peak_to_loudness_db(PeakLimiter(peak_db - cut)(part))
            if abs(plr - target) < 0.2 or (cut >= MAX_PEAK_CUT_DB and plr > target):
                break
            slope = (plr - previous[1]) / (cut - previous[0]) if abs(cut - previous[0]) > 1e-6 else -1.0
            previous, cut = (cut, plr), float(np.clip(cut + (target - plr) / min(slope, -0.05), 0.0, MAX_PEAK_CUT_DB))
        return peak_db - cut - loudness

    def limiter_for(self, x: np.ndarray) -> PeakLimiter | None:
        """The limiter that gives x the wanted peak-to-loudness ratio, its ceiling found on x and
        placed re x's loudness; None when x is no peakier than that already."""
        x = np.asarray(x, dtype=np.float32)
        ceiling = self.ceiling_re_loudness_db(x)
        return None if ceiling is None else PeakLimiter(loudness_lufs(x) + ceiling)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        limiter = self.limiter_for(x)
        return x if limiter is None else limiter(x)


# --- width and balance ---------------------------------------------------------------------------------

STEREO_FRAME = 4096            # ≈ 93 ms: one note or hit per frame
MAX_SIDE_GAIN = 4.0
MAX_BALANCE_DB = 12.0          # right/left energy ratio change
MONO_SIDE_MID_DB = -45.0       # side this far below mid: nothing to widen
_STEREO_ROUNDS = 6


def frame_covariances(x: np.ndarray) -> np.ndarray:
    """Per STEREO_FRAME-sample frame of the stem's audible part, the channel covariance (sums of
    LL, RR, LR products): (frames, 3). Width and balance are medians over frames, not ratios of
    whole-stem sums, so one loud hit panned elsewhere (a tom fill) does not decide them."""
    x = np.asarray(x, dtype=np.float32)
    n = (x.shape[0] // STEREO_FRAME) * STEREO_FRAME
    if n == 0:
        x, n = np.pad(x, ((0, STEREO_FRAME - x.shape[0]), (0, 0))), STEREO_FRAME
    frames = x[:n].reshape(-1, STEREO_FRAME, 2)
    c = np.stack([np.einsum("fn,fn->f", frames[..., 0], frames[..., 0], dtype=np.float64),
                  np.einsum("fn,fn->f", frames[..., 1], frames[..., 1], dtype=np.float64),
                  np.einsum("fn,fn->f", frames[..., 0], frames[..., 1], dtype=np.float64)], axis=1)
    power_db = 10.0 * np.log10(np.maximum(c[:, 0] + c[:, 1], 1e-20) / (2 * STEREO_FRAME))
    audible = (power_db > SILENCE_DBFS) & (power_db > power_db.max() - ACTIVE_BELOW_LOUDEST_DB)
    return c[audible] if audible.any() else c


def _transformed(c: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Frame covariances after the 2×2 channel matrix t (C' = T C Tᵀ per frame)."""
    (a, b), (d, e) = t
    ll, rr, lr = c.T
    return np.stack([a * a * ll + b * b * rr + 2 * a * b * lr,
                     d * d * ll + e * e * rr + 2 * d * e * lr,
                     a * d * ll + b * e * rr + (a * e + b * d) * lr], axis=1)


def side_mid_db(c: np.ndarray) -> float:
    """Median over frames of the side/mid energy ratio, dB."""
    ll, rr, lr = c.T
    return float(np.median(10.0 * np.log10(np.maximum(ll + rr - 2 * lr, 1e-20) / np.maximum(ll + rr + 2 * lr, 1e-20))))


def right_left_db(c: np.ndarray) -> float:
    """Median over frames of the right/left energy ratio, dB."""
    return float(np.median(10.0 * np.log10(np.maximum(c[:, 1], 1e-20) / np.maximum(c[:, 0], 1e-20))))


@dataclass
class StereoMatch:
    """Balance gains (right/left energy ratio change `balance_db`), then a side gain (mid kept)."""

    side_gain: float = 1.0
    balance_db: float = 0.0

    def matrix(self) -> np.ndarray:
        g = db_to_amp(self.balance_db / 2.0)  # right up, left down by half of balance_db each
        balance = np.diag([1.0 / g, g])
        s = self.side_gain
        width = 0.5 * np.array([[1.0 + s, 1.0 - s], [1.0 - s, 1.0 + s]])
        return width @ balance

    @classmethod
    def between(cls, x_frames: np.ndarray, reference_frames: np.ndarray) -> "StereoMatch":
        """The side gain and balance that bring x's frame_covariances to the reference's medians."""
        target_sm, target_rl = side_mid_db(reference_frames), right_left_db(reference_frames)
        can_widen = side_mid_db(x_frames) > MONO_SIDE_MID_DB
        match = cls()
        for _ in range(_STEREO_ROUNDS):
            c = _transformed(x_frames, match.matrix())
            balance = match.balance_db + target_rl - right_left_db(c)
            side_gain = match.side_gain * db_to_amp((target_sm - side_mid_db(c)) / 2.0) if can_widen else 1.0
            match = cls(float(np.clip(side_gain, 0.0, MAX_SIDE_GAIN)),
                        float(np.clip(balance, -MAX_BALANCE_DB, MAX_BALANCE_DB)))
        return match

    def scaled(self, amount: float) -> "StereoMatch":
        return StereoMatch(self.side_gain ** amount if self.side_gain > 0 else (1.0 - amount),
                           self.balance_db * amount)

    def stream(self, n_samples: int) -> Samplewise:
        return Samplewise(self)  # one matrix for every sample

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if abs(self.side_gain - 1.0) < 1e-6 and abs(self.balance_db) < 1e-6:
            return np.asarray(x, dtype=np.float32)
        (a, b), (c, d) = self.matrix().astype(np.float32)
        x = np.asarray(x, dtype=np.float32)
        return np.stack([a * x[:, 0] + b * x[:, 1], c * x[:, 0] + d * x[:, 1]], axis=1)


# --- space -----------------------------------------------------------------------------------------------

SPACE_HOP = 441                  # 10-ms frames of short-term power
SPACE_LOOKBACK = 10              # a fall starts at the loudest frame of the previous 100 ms ...
SPACE_DELAYS = (5, 10, 20, 40)   # ... and ends 50, 100, 200 or 400 ms later
SPACE_PERCENTILE = 5.0           # the fastest falls: what a reverb's tail holds up
SPACE_RANGE_DB = 70.0            # frames floored this far below the loudest: silence has no depth
SPACE_FROM_DB = 40.0             # falls start at frames within this of the loudest
SPACE_MIN_FALLS = 40             # fewer falls than this per delay: too little sound to measure
SPACE_TOLERANCE_DB = 0.5         # fits within this (RMS over delays) of the closest fit all match
SPACE_MARGIN_DB = 2.0            # a reference whose profile is not this much higher gets no send
SPACE_WINDOWS, SPACE_WINDOW_S = 4, 3.0  # where the send is fitted on a long stem
DECAY_TIMES_S = (0.4, 0.8, 1.6, 3.2)    # the synthetic reverb's decay times (T60) to choose from
# The wet signal's level re the stem's mid (unit-energy response). At most -12 dB: levels alone
# cannot tell a reverb's tail from notes held longer (a sustained bass reference asked a staccato
# one for a -4 dB, 3.2-s send: a wash), and on the raw protocol (seed 0) the cap costs nothing:
# 0.323 / 0.331 per stem / multitrack against 0.322 / 0.336 without it (benchmarks/ablate_match.py).
SEND_GRID_DB = np.arange(-36.0, -11.5, 1.0)
REVERB_PRE_DELAY_S = 0.02
REVERB_TAIL_DB = 45.0            # the impulse response ends this far below its start
REVERB_SEED = 0x5EED             # the impulse response's noise: the same reverb on every run
_REVERB_BLOCK = 2 ** 17          # overlap-add block of the reverb's FFT convolution


def _frame_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per SPACE_HOP-sample frame, the mean over samples and channels of a·b (a = b: power)."""
    n = (a.shape[0] // SPACE_HOP) * SPACE_HOP
    products = np.einsum("ij,ij->i", a[:n], b[:n])
    return products.reshape(-1, SPACE_HOP).sum(axis=1, dtype=np.float64) / (SPACE_HOP * a.shape[1])


def _space_profile(powers: list[np.ndarray]) -> np.ndarray | None:
    """space_profile_db of frame powers, the falls of several parts pooled (none across parts)."""
    levels = [10.0 * np.log10(np.maximum(p, 1e-20)) for p in powers]
    loudest = max((float(v.max()) for v in levels if v.size), default=-200.0)
    if loudest <= SILENCE_DBFS:
        return None
    falls: list[list[np.ndarray]] = [[] for _ in SPACE_DELAYS]
    for v in levels:
        if v.size <= SPACE_LOOKBACK + max(SPACE_DELAYS):
            continue
        v = np.maximum(v, loudest - SPACE_RANGE_DB)
        recent = np.lib.stride_tricks.sliding_window_view(v, SPACE_LOOKBACK + 1).max(axis=1)  # ends at v[SPACE_LOOKBACK:]
        for fall, delay in zip(falls, SPACE_DELAYS):
            start = recent[:-delay]
            keep = start > loudest - SPACE_FROM_DB
            fall.append((v[SPACE_LOOKBACK + delay:] - start)[keep])
    pooled = [np.concatenate(f) if f else np.zeros(0) for f in falls]
    if min(f.size for f in pooled) < SPACE_MIN_FALLS:
        return None
    return np.array([np.percentile(f, SPACE_PERCENTILE) for f in pooled])


def space_profile_db(x: np.ndarray) -> np.ndarray | None:
    """How reverberant a stem sounds: per delay of SPACE_DELAYS, how far its level can fall in that
    time — the SPACE_PERCENTILE-th percentile of the falls (dB, ≤ 0) from the loudest 10-ms frame of
    the previous 100 ms to the frame the delay later. A dry stem can fall to silence between notes;
    a reverb's tail holds the level up, the more so the wetter and longer it is, so the profile is
    higher (nearer 0). Level-independent; None when the stem has too little sound to measure."""
    x = np.asarray(x, dtype=np.float32)
    return _space_profile([_frame_sums(x, x)])


def reverb_impulse(decay_s: float) -> np.ndarray:
    """The synthetic reverb's impulse response, (taps, 2) float32: REVERB_PRE_DELAY_S of silence,
    then white noise (independent per channel: a decorrelated, wide tail) decaying by 60 dB per
    decay_s, cut REVERB_TAIL_DB down, each channel of unit energy. A flat spectrum on average, so
    the send leaves the EQ step's tonal balance as it was."""
    n = int(round(decay_s * REVERB_TAIL_DB / 60.0 * WORKING_RATE))
    envelope = 10.0 ** (-3.0 * np.arange(n) / (decay_s * WORKING_RATE))
    tail = np.random.default_rng(REVERB_SEED).standard_normal((n, 2)) * envelope[:, None]
    tail /= np.sqrt(np.sum(tail ** 2, axis=0))
    return np.concatenate([np.zeros((int(REVERB_PRE_DELAY_S * WORKING_RATE), 2)), tail]).astype(np.float32)


@dataclass
class _Reverberation:
    """A mono send convolved with a stereo impulse response, cut to the send's length: (n, 2)
    float32 by overlap-add of float32 FFTs over blocks of _REVERB_BLOCK from the signal's start (a
    second-long response costs a third of what scipy's oaconvolve takes on minutes of audio). Its
    stream convolves each block once it is all in (or the last), the tail carried to the next:
    the same sums as on the whole signal, whatever the pushes."""

    impulse: np.ndarray

    def stream(self, n_samples: int) -> "_ReverberationStream":
        return _ReverberationStream(self.impulse, n_samples)


class _ReverberationStream:
    def __init__(self, impulse: np.ndarray, n_samples: int):
        self.step = max(1, min(_REVERB_BLOCK, int(n_samples)))
        self.size = scipy.fft.next_fast_len(self.step + impulse.shape[0] - 1, real=True)
        self.response = scipy.fft.rfft(impulse, self.size, axis=0)
        self.send = _Held()                                        # the send not yet convolved
        self.tail = np.zeros((self.size, 2), dtype=np.float32)    # the output from send.done on

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        self.send.append(np.asarray(block, dtype=np.float32))
        pending = self.send.end - self.send.done
        count = pending if last else pending // self.step * self.step  # whole blocks but at the end
        if count == 0:
            return self.tail[:0]
        out = np.zeros((count + self.size, 2), dtype=np.float32)
        out[:self.size] = self.tail
        for start in range(0, count, self.step):
            spectrum = scipy.fft.rfft(self.send.take(min(self.step, count - start)), self.size)
            out[start:start + self.size] += scipy.fft.irfft(spectrum[:, None] * self.response, self.size, axis=0)
        self.tail = out[count:].copy()
        return out[:count]


def _reverberated(send: np.ndarray, impulse: np.ndarray) -> np.ndarray:
    """The mono `send` convolved with the stereo impulse response, cut to the send's length."""
    return whole(_Reverberation(impulse), send)


def _space_windows(n: int, power: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of up to SPACE_WINDOWS windows of SPACE_WINDOW_S spread evenly over the audible
    frames of a stem of n samples whose frame powers these are; the whole stem when that is shorter."""
    width = int(SPACE_WINDOW_S * WORKING_RATE) // SPACE_HOP * SPACE_HOP
    if n <= SPACE_WINDOWS * width:
        return [(0, n)]
    levels = 10.0 * np.log10(np.maximum(power, 1e-20))
    audible = np.flatnonzero(levels > max(levels.max() - SPACE_FROM_DB, SILENCE_DBFS))
    centres = audible[np.linspace(0, audible.size - 1, SPACE_WINDOWS).round().astype(int)] * SPACE_HOP
    starts = np.clip(centres - width // 2, 0, n - width) // SPACE_HOP * SPACE_HOP
    return [(int(s), int(s) + width) for s in np.unique(starts)]


@dataclass
class SyntheticReverb:
    """A send to the synthetic reverb (reverb_impulse(decay_s)) of the stem's mid signal, added at
    send_db re the stem (None: no send). Chosen so that the stem's space_profile_db becomes the
    reference's; the match engine adds reverb only, it cannot take the input's own away."""

    decay_s: float = DECAY_TIMES_S[1]
    send_db: float | None = None

    @classmethod
    def between(cls, x: np.ndarray, reference: np.ndarray) -> "SyntheticReverb":
        """The decay time and send level (DECAY_TIMES_S × SEND_GRID_DB) whose reverb brings x's
        space profile closest to the reference's, measured on windows of x with the reverb of the
        audio before each window; no send when the reference is not more reverberant than x by
        SPACE_MARGIN_DB, or either has too little sound."""
        x = np.asarray(x, dtype=np.float32)
        target = space_profile_db(reference)
        power = _frame_sums(x, x)
        windows = _space_windows(x.shape[0], power)
        dry = [power[a // SPACE_HOP:b // SPACE_HOP] for a, b in windows]
        start_profile = _space_profile(dry)
        if target is None or start_profile is None or np.mean(target - start_profile) < SPACE_MARGIN_DB:
            return cls()
        fits = [(float(np.sqrt(np.mean((start_profile - target) ** 2))), cls())]
        for decay_s in DECAY_TIMES_S:
            impulse = reverb_impulse(decay_s)
            cross, wet_power = [], []
            for a, b in windows:
                before = min(a, impulse.shape[0])
                wet = _reverberated(x[a - before:b].mean(axis=1), impulse)[before:]
                cross.append(_frame_sums(x[a:b], wet))
                wet_power.append(_frame_sums(wet, wet))
            for send_db in SEND_GRID_DB:
                g = db_to_amp(send_db)
                profile = _space_profile([p + 2.0 * g * c + g * g * w for p, c, w in zip(dry, cross, wet_power)])
                if profile is not None:
                    fits.append((float(np.sqrt(np.mean((profile - target) ** 2))), cls(decay_s, float(send_db))))
        # the driest of the fits as close as the closest: where the profile no longer rises with the
        # send (a sustained stem), more reverb would not be heard as more space
        best = min(cost for cost, _ in fits)
        return min((send for cost, send in fits if cost <= best + SPACE_TOLERANCE_DB),
                   key=lambda send: -np.inf if send.send_db is None else send.send_db)

    def scaled(self, amount: float) -> "SyntheticReverb":
        if self.send_db is None or amount <= 0.0:
            return SyntheticReverb(self.decay_s)
        return SyntheticReverb(self.decay_s, self.send_db + 20.0 * float(np.log10(amount)))

    def stream(self, n_samples: int) -> "_SendStream | Samplewise":
        if self.send_db is None:
            return Samplewise(_float32)
        return _SendStream(_Reverberation(reverb_impulse(self.decay_s)).stream(n_samples),
                           np.float32(db_to_amp(self.send_db)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class _SendStream:
    """The stem plus its send's reverb (which lags the stem by up to a _REVERB_BLOCK)."""

    def __init__(self, wet, gain: np.float32):
        self.wet, self.gain, self.held = wet, gain, _Held()

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        self.held.append(x)
        wet = self.wet.push(x.mean(axis=1), last)
        return self.held.take(wet.shape[0]) + self.gain * wet


# --- level -----------------------------------------------------------------------------------------------

MAX_LEVEL_GAIN_DB = 36.0
SILENT_LUFS = ABSOLUTE_GATE_LUFS  # what loudness_lufs reads for silence


def loudness_gain_db(x_lufs: float, reference_lufs: float) -> float:
    """The gain that brings a stem at x_lufs to reference_lufs, within ±MAX_LEVEL_GAIN_DB; 0 when
    either is silent."""
    if x_lufs <= SILENT_LUFS or reference_lufs <= SILENT_LUFS:
        return 0.0
    return float(np.clip(reference_lufs - x_lufs, -MAX_LEVEL_GAIN_DB, MAX_LEVEL_GAIN_DB))
