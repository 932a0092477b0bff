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
- level — `loudness_gain_db`: the gain that brings the stem to the reference stem's integrated
  loudness (BS.1770), last, so that the balance between the stems is the reference's.

The measurements of one stem take a few tens of milliseconds per minute of audio; the FIR and the
gain envelope are FFT convolution and one pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft
from scipy import signal

from mixdaemon.audio.dsp import ABSOLUTE_GATE_LUFS, WORKING_RATE, db_to_amp, frame_signal, loudness_lufs
from mixdaemon.audio.mastering import limiter_gain, true_peak_dbtp
from mixdaemon.fx.features import excerpt

# --- eq -----------------------------------------------------------------------------------------------

EQ_FFT = 8192                    # 5.4 Hz bins: the bass's octave below 100 Hz has ~10 of them
EQ_MAX_FRAMES = 512              # ≈ 48 s of spectrum frames, spread over the stem
EQ_GRID_HZ = np.geomspace(25.0, 20000.0, 97)  # 1/10-octave steps of the curve
EQ_SMOOTHING_OCTAVES = 0.5       # a reference of other notes differs in content within a third-octave
EQ_FLOOR_DB = 60.0
MAX_EQ_DB = 15.0
EQ_TAPS = 4096 + 1
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not np.any(self.gains_db):
            return np.asarray(x, dtype=np.float32)
        taps = self.taps()
        delay = (EQ_TAPS - 1) // 2
        n = x.shape[0]
        padded = np.pad(np.asarray(x, dtype=np.float64), ((delay, delay), (0, 0)))
        out = np.stack([signal.oaconvolve(padded[:, c], taps, mode="valid") for c in range(x.shape[1])], axis=1)
        return out[:n].astype(np.float32)


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
def _smooth_gain(target_db, alpha_attack, alpha_release):
    # One-pole smoothing of a gain curve: falling gains (more reduction) follow fast, rising slowly.
    out = np.empty_like(target_db)
    state = target_db[0]
    for i in range(target_db.shape[0]):
        alpha = alpha_attack if target_db[i] < state else alpha_release
        state = alpha * state + (1.0 - alpha) * target_db[i]
        out[i] = state
    return out


@dataclass
class LevelMap:
    """A static level curve on one detector's levels: input levels `points_db` (re the input's
    median level) map to `points_db + gains_db`; between points linear, beyond them the end gains
    hold."""

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

    def gain_envelope_db(self, levels_db: np.ndarray) -> np.ndarray:
        """The smoothed gain (dB) per detector window of a stem whose levels these are."""
        target = np.interp(levels_db - self.median_db, self.points_db, self.gains_db)
        hop_s = self.detector.hop / WORKING_RATE
        attack, release = (float(np.exp(-hop_s / (ms / 1000.0)))
                           for ms in (self.detector.attack_ms, self.detector.release_ms))
        return _smooth_gain(target, attack, release)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not np.any(self.gains_db):
            return np.asarray(x, dtype=np.float32)
        gains = db_to_amp(self.gain_envelope_db(short_term_levels_db(x, self.detector)))
        where = np.arange(gains.shape[0]) * self.detector.hop + self.detector.lag
        per_sample = np.interp(np.arange(x.shape[0]), where, gains).astype(np.float32)
        return np.asarray(x, dtype=np.float32) * per_sample[:, None]


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
class PeakCeiling:
    """A look-ahead peak limiter (audio.mastering's) whose ceiling is chosen so that the stem's
    peaks stand `plr_db` above its loudness, as the reference's do; a stem less peaky than that is
    left as it is (a limiter cannot add peaks). Limiting lowers the loudness too, so the cut is
    searched (secant steps on peak-to-loudness against the cut, PEAK_TRIALS limiter passes on an
    excerpt); the ceiling found is applied relative to the whole stem's loudness."""

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
            plr = peak_to_loudness_db(self._limited(part, peak_db - cut))
            if abs(plr - target) < 0.2 or (cut >= MAX_PEAK_CUT_DB and plr > target):
                break
            slope = (plr - previous[1]) / (cut - previous[0]) if abs(cut - previous[0]) > 1e-6 else -1.0
            previous, cut = (cut, plr), float(np.clip(cut + (target - plr) / min(slope, -0.05), 0.0, MAX_PEAK_CUT_DB))
        return peak_db - cut - loudness

    @staticmethod
    def _limited(x: np.ndarray, ceiling_db: float) -> np.ndarray:
        # The sample peak, not the true peak: the job's own limiter keeps the true peak under its
        # ceiling; here the peaks only need to come down (and the true-peak envelope costs 10x).
        ceiling = float(db_to_amp(ceiling_db))
        gain = limiter_gain(np.max(np.abs(x), axis=1), ceiling,
                            lookahead_ms=PEAK_LOOKAHEAD_MS, release_ms=PEAK_RELEASE_MS)
        return x * gain[:, None].astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        ceiling = self.ceiling_re_loudness_db(x)
        return x if ceiling is None else self._limited(x, loudness_lufs(x) + ceiling)


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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if abs(self.side_gain - 1.0) < 1e-6 and abs(self.balance_db) < 1e-6:
            return np.asarray(x, dtype=np.float32)
        (a, b), (c, d) = self.matrix().astype(np.float32)
        x = np.asarray(x, dtype=np.float32)
        return np.stack([a * x[:, 0] + b * x[:, 1], c * x[:, 0] + d * x[:, 1]], axis=1)


# --- level -----------------------------------------------------------------------------------------------

MAX_LEVEL_GAIN_DB = 36.0
SILENT_LUFS = ABSOLUTE_GATE_LUFS  # what loudness_lufs reads for silence


def loudness_gain_db(x_lufs: float, reference_lufs: float) -> float:
    """The gain that brings a stem at x_lufs to reference_lufs, within ±MAX_LEVEL_GAIN_DB; 0 when
    either is silent."""
    if x_lufs <= SILENT_LUFS or reference_lufs <= SILENT_LUFS:
        return 0.0
    return float(np.clip(reference_lufs - x_lufs, -MAX_LEVEL_GAIN_DB, MAX_LEVEL_GAIN_DB))
