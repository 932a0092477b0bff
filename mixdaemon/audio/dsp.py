"""Shared DSP primitives: the small building blocks that FX normalization, the FXmanipulator, the
matching engine and the metrics all use. Each primitive exists once, here.

Conventions (docs/ALGORITHMS.md, Conventions): audio is float, shape (n_samples, channels), 44.1 kHz; dB(a) =
20·log10(a + 1e-30). Functions accept float32 or float64 and compute in float64.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft
from scipy import signal

from mixdaemon.audio.streams import History

WORKING_RATE = 44100


def db(a):
    """Amplitude → dB, with the spec's 1e-30 floor so that silence maps to -600 dB, not -inf."""
    return 20.0 * np.log10(np.abs(a) + 1e-30)


def db_to_amp(level_db):
    return 10.0 ** (np.asarray(level_db, dtype=np.float64) / 20.0)


def as_2d(x: np.ndarray) -> np.ndarray:
    """View a mono (n,) signal as (n, 1) so channel loops work on both shapes."""
    return x[:, None] if x.ndim == 1 else x


def peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A draw whose logarithm is uniform between low and high: how frequencies, Qs and times of
    randomly drawn effects are spread."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level over the whole signal and all channels, in dBFS (-inf for silence)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    power = float(np.dot(x, x)) / max(x.size, 1)
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def rms_match(y: np.ndarray, x: np.ndarray, measure: slice = slice(None)) -> np.ndarray:
    """Scale y to x's RMS over the whole segment and all channels (docs/ALGORITHMS.md §2.1), measured
    over the samples `measure` selects (the whole signal by default)."""
    return y * rms_scale(y, x, measure)


def rms_scale(y: np.ndarray, x: np.ndarray, measure: slice = slice(None)) -> float:
    """The gain rms_match applies to y."""
    xm, ym = x[measure].ravel(), y[measure].ravel()
    # dot products: ~2x faster than mean(square()) and no temporary arrays
    return float(np.sqrt((np.dot(xm, xm) / max(xm.size, 1)) / max(1e-7, np.dot(ym, ym) / max(ym.size, 1))))


# --- loudness -------------------------------------------------------------------------------------

LOUDNESS_BLOCK_S = 0.4      # BS.1770 gating blocks: 400 ms, 75 % overlap
LOUDNESS_HOP_S = 0.1
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0


def k_weighting(sr: int = WORKING_RATE) -> np.ndarray:
    """BS.1770's K-weighting (the head's shelf, then the RLB high-pass) as second-order sections at
    any rate, from the analogue prototypes; at 48 kHz these are the published coefficients."""
    k = np.tan(np.pi * 1681.974450955533 / sr)
    q, vh = 0.7071752369554196, 10.0 ** (3.999843853973347 / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0,
             1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    k, q = np.tan(np.pi * 38.13547087602444 / sr), 0.5003270373238773
    a0 = 1.0 + k / q + k * k
    high_pass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, high_pass])


def block_loudness(x: np.ndarray, window_s: float, hop_s: float, sr: int = WORKING_RATE) -> np.ndarray:
    """Loudness (LUFS, ungated) of every window_s window, one every hop_s: K-weighted power summed
    over channels (BS.1770 weights 1 for left and right). Empty when x is shorter than a window."""
    meter = LoudnessMeter(sr, window_s, hop_s)
    meter.push(x)
    return meter.block_loudness


def integrated_loudness(x: np.ndarray, sr: int = WORKING_RATE) -> float:
    """BS.1770-4 integrated loudness in LUFS (K-weighting, 400 ms blocks, 75 % overlap, absolute
    and relative gates, channel powers summed). Returns -inf for silence or input shorter than one
    400 ms block — callers decide what that means for them."""
    meter = LoudnessMeter(sr)
    meter.push(x)
    return meter.integrated


def loudness_lufs(x: np.ndarray, sr: int = WORKING_RATE) -> float:
    """Integrated loudness with silence (or a signal shorter than one block) read as the absolute
    gate, ABSOLUTE_GATE_LUFS: a number every table, gain and distance can use."""
    meter = LoudnessMeter(sr)
    meter.push(x)
    return meter.lufs


class LoudnessMeter:
    """BS.1770 loudness of a signal fed block by block, in any partition: the K-weighting filter
    carries its state from block to block, and the windows (window_s long, one every hop_s) are
    counted from the signal's first sample, so the readings are the whole signal's. Holds one
    window's worth of chunk energies and one number per window."""

    def __init__(self, sr: int = WORKING_RATE, window_s: float = LOUDNESS_BLOCK_S, hop_s: float = LOUDNESS_HOP_S):
        self.window, self.hop = int(round(window_s * sr)), int(round(hop_s * sr))
        # energies are summed per chunk, a length dividing both window and hop (the hop itself at
        # the usual rates), and each window sums its chunks
        self.chunk = math.gcd(self.window, self.hop)
        self.sos = k_weighting(sr).astype(np.float32)
        self.state: np.ndarray | None = None      # the filter's, per section and channel
        self.pending = np.zeros(0, np.float32)    # power of the samples after the last whole chunk
        self.chunks = History()                   # chunk energies from the next window's start
        self.windows = 0                          # windows measured so far
        self.powers: list[np.ndarray] = []        # mean power of each window, in order

    def push(self, block: np.ndarray) -> None:
        # float32 filtering (relative error ~1e-6, far below 0.01 LU) at half the cost of float64
        x = as_2d(np.asarray(block)).astype(np.float32, copy=False)
        if x.shape[0] == 0:
            return
        if self.state is None:
            self.state = np.zeros((self.sos.shape[0], 2, x.shape[1]), np.float32)
        weighted, self.state = signal.sosfilt(self.sos, x, axis=0, zi=self.state)
        power = np.einsum("ij,ij->i", weighted, weighted)
        if self.pending.size:
            power = np.concatenate([self.pending, power])
        whole = power.shape[0] // self.chunk * self.chunk
        self.pending = power[whole:].copy()
        self.chunks.append(power[:whole].reshape(-1, self.chunk).sum(axis=1, dtype=np.float64))
        per_window, per_hop = self.window // self.chunk, self.hop // self.chunk
        complete = (self.chunks.end - per_window) // per_hop + 1 if self.chunks.end >= per_window else 0
        if complete > self.windows:
            chunks = self.chunks.window(self.windows * per_hop, (complete - 1) * per_hop + per_window)
            energy = np.lib.stride_tricks.sliding_window_view(chunks, per_window)[::per_hop].sum(axis=1)
            self.powers.append(energy / self.window)
            self.windows = complete
            self.chunks.forget(complete * per_hop)

    @property
    def block_loudness(self) -> np.ndarray:
        """The loudness (LUFS, ungated) of each window so far."""
        power = np.concatenate(self.powers) if self.powers else np.zeros(0)
        return -0.691 + 10.0 * np.log10(power + 1e-30)

    @property
    def integrated(self) -> float:
        """BS.1770-4 integrated loudness (gated) of what came in; -inf as integrated_loudness."""
        blocks = self.block_loudness
        blocks = blocks[blocks > ABSOLUTE_GATE_LUFS]
        if blocks.size == 0:
            return float("-inf")
        power = 10.0 ** ((blocks + 0.691) / 10.0)
        relative_gate = -0.691 + 10.0 * np.log10(np.mean(power)) + RELATIVE_GATE_LU
        kept = power[blocks > relative_gate]
        return float(-0.691 + 10.0 * np.log10(np.mean(kept)))

    @property
    def lufs(self) -> float:
        """The integrated loudness floored at the absolute gate, as loudness_lufs."""
        value = self.integrated
        return value if np.isfinite(value) and value > ABSOLUTE_GATE_LUFS else ABSOLUTE_GATE_LUFS


def lufs_norm(x: np.ndarray, target_lufs: float, sr: int = WORKING_RATE) -> np.ndarray:
    """Gain x to target_lufs, then divide by max(1, peak + 1e-6) so it cannot clip (docs/ALGORITHMS.md
    §1.0; the result may therefore land below the target). The 1e-10 offset keeps an all-zero
    signal measurable, as in the reference implementation."""
    x = np.asarray(x, dtype=np.float64)
    return x * lufs_norm_gain(x, target_lufs, sr)


def lufs_norm_gain(x: np.ndarray, target_lufs: float, sr: int = WORKING_RATE) -> float:
    """The gain lufs_norm applies to x (1 where x is too short or silent to measure)."""
    x = np.asarray(x, dtype=np.float64)
    loudness = integrated_loudness(x + 1e-10, sr)
    if not np.isfinite(loudness):
        return 1.0
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return gain / max(1.0, gain * peak(x) + 1e-6)


# --- STFT without centring (the statistics' convention) --------------------------------------------

def sqrt_hann(n: int) -> np.ndarray:
    """Square root of the periodic Hann window: at 50 % overlap its square sums to one, so the same
    window serves analysis and synthesis."""
    return np.sqrt(np.hanning(n + 1)[:-1])


def frame_signal(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(n, c) → (frames, c, n_fft) strided view, no padding: frames = 1 + (n - n_fft) // hop."""
    x = as_2d(np.asarray(x))
    n_frames = 1 + (x.shape[0] - n_fft) // hop
    if n_frames < 1:
        return np.zeros((0, x.shape[1], n_fft), dtype=x.dtype)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=0)[::hop]
    return frames[:n_frames]


def stft_np(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Un-normalised rFFT with a sqrtHann window, no centring: (frames, channels, n_fft//2 + 1)."""
    frames = frame_signal(np.asarray(x, dtype=np.float64), n_fft, hop)
    return np.fft.rfft(frames * sqrt_hann(n_fft), axis=-1)


def istft_np(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Inverse of stft_np by windowed overlap-add (sqrtHann synthesis window); exact at 50 %
    overlap away from the first and last half frame. Returns (length, channels)."""
    frames = np.fft.irfft(spec, n=n_fft, axis=-1) * sqrt_hann(n_fft)
    n_frames, channels, _ = frames.shape
    out = np.zeros((max(length, (n_frames - 1) * hop + n_fft), channels))
    for i in range(n_frames):
        out[i * hop:i * hop + n_fft] += frames[i].T
    return out[:length]


# --- compressor (docs/ALGORITHMS.md §1.3 "Compressor DSP") ---------------------------------------------

def compress(x: np.ndarray, threshold_db: float, ratio: float, attack_ms: float, release_ms: float,
             sr: int = WORKING_RATE, time_axis: int = 0) -> np.ndarray:
    """Hard-knee feed-forward compressor with an instantaneous peak detector and a one-pole
    attack/release smoother on the gain reduction; channels are independent; no make-up gain.
    Shared by FX normalization, the FXmanipulator and the param engine's chain, so all apply the
    same dynamics. The detector reads |x| below 1e-6 as −120 dB. time_axis=-1 takes channel-first
    (channels, n) signals (not copied when C-contiguous float64). The whole-signal call of
    `Compressor`, starting from rest."""
    return Compressor(threshold_db, ratio, attack_ms, release_ms, sr, time_axis)(x)


class Compressor:
    """`compress` as a streamable effect (audio/streams.py): its stream carries each channel's
    smoothed gain reduction from one block to the next, so blocks come out as the whole signal
    would, with no look-ahead."""

    def __init__(self, threshold_db: float, ratio: float, attack_ms: float, release_ms: float,
                 sr: int = WORKING_RATE, time_axis: int = 0):
        if time_axis not in (0, -1):
            raise ValueError(f"time_axis {time_axis}: 0 for (n, channels) or -1 for (channels, n)")
        self.threshold_db, self.slope = float(threshold_db), 1.0 - 1.0 / float(ratio)
        self.alpha_attack = float(np.exp(-1.0 / (0.001 * sr * attack_ms)))
        self.alpha_release = float(np.exp(-1.0 / (0.001 * sr * release_ms)))
        self.time_axis = time_axis

    def stream(self, n_samples: int) -> "CompressorStream":
        return CompressorStream(self)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return self.stream(x.shape[self.time_axis]).push(x, last=True)


class CompressorStream:
    def __init__(self, compressor: Compressor):
        self.compressor = compressor
        self.smoothed: np.ndarray | None = None   # per channel, dB of gain reduction; None: at rest

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        c, x = self.compressor, np.asarray(block)
        planar = np.ascontiguousarray(as_2d(x).T if c.time_axis == 0 else np.atleast_2d(x), dtype=np.float64)
        if self.smoothed is None:
            self.smoothed = np.zeros(planar.shape[0])
        out = np.empty_like(planar)
        for i, (channel, result) in enumerate(zip(planar, out)):
            self.smoothed[i] = _compress_channel(channel, c.threshold_db, c.slope, c.alpha_attack, c.alpha_release,
                                                 self.smoothed[i], result)
        return (out.T if c.time_axis == 0 else out).reshape(x.shape)


# --- RBJ biquads (Audio EQ Cookbook) ----------------------------------------------------------------

def _normalised(b0, b1, b2, a0, a1, a2) -> np.ndarray:
    return np.array([b0 / a0, b1 / a0, b2 / a0, 1.0, a1 / a0, a2 / a0])


def low_shelf(freq_hz: float, gain_db: float, q: float = 0.707, sr: int = WORKING_RATE) -> np.ndarray:
    """One second-order section (b0 b1 b2 1 a1 a2) of an RBJ low shelf."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sr
    cos_w0, alpha = np.cos(w0), np.sin(w0) / (2.0 * q)
    sq = 2.0 * np.sqrt(a) * alpha
    return _normalised(a * ((a + 1) - (a - 1) * cos_w0 + sq), 2 * a * ((a - 1) - (a + 1) * cos_w0),
                       a * ((a + 1) - (a - 1) * cos_w0 - sq), (a + 1) + (a - 1) * cos_w0 + sq,
                       -2 * ((a - 1) + (a + 1) * cos_w0), (a + 1) + (a - 1) * cos_w0 - sq)


def high_shelf(freq_hz: float, gain_db: float, q: float = 0.707, sr: int = WORKING_RATE) -> np.ndarray:
    """One second-order section of an RBJ high shelf."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sr
    cos_w0, alpha = np.cos(w0), np.sin(w0) / (2.0 * q)
    sq = 2.0 * np.sqrt(a) * alpha
    return _normalised(a * ((a + 1) + (a - 1) * cos_w0 + sq), -2 * a * ((a - 1) + (a + 1) * cos_w0),
                       a * ((a + 1) + (a - 1) * cos_w0 - sq), (a + 1) - (a - 1) * cos_w0 + sq,
                       2 * ((a - 1) - (a + 1) * cos_w0), (a + 1) - (a - 1) * cos_w0 - sq)


def peaking(freq_hz: float, gain_db: float, q: float, sr: int = WORKING_RATE) -> np.ndarray:
    """One second-order section of an RBJ peaking EQ."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sr
    cos_w0, alpha = np.cos(w0), np.sin(w0) / (2.0 * q)
    return _normalised(1 + alpha * a, -2 * cos_w0, 1 - alpha * a, 1 + alpha / a, -2 * cos_w0, 1 - alpha / a)


def apply_sos(x: np.ndarray, sos: np.ndarray, time_axis: int = 0) -> np.ndarray:
    """Run a cascade of second-order sections along time (axis `time_axis`; state starts at zero)."""
    return signal.sosfilt(np.atleast_2d(sos), np.asarray(x, dtype=np.float64), axis=time_axis)


# --- mid/side ---------------------------------------------------------------------------------------

def to_mid_side(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M = L+R, S = L−R (the spec's unnormalised convention)."""
    return x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]


def from_mid_side(mid: np.ndarray, side: np.ndarray) -> np.ndarray:
    return np.stack([(mid + side) / 2.0, (mid - side) / 2.0], axis=1)


def mid_energy_fraction(x: np.ndarray) -> float:
    """E_M / (E_M + E_S): 1 for a mono-compatible centred signal, 0.5 for uncorrelated channels."""
    mid, side = to_mid_side(np.asarray(x, dtype=np.float64))
    e_mid, e_side = float(np.sum(mid ** 2)), float(np.sum(side ** 2))
    return e_mid / (e_mid + e_side) if e_mid + e_side > 0 else 1.0


# --- long-term spectra, zero-phase FIR, exact loudness gain (added for FX normalization) -----------

def average_magnitude_spectrum(x: np.ndarray, n_fft: int, hop: int, block_frames: int = 32) -> np.ndarray:
    """Frame-mean of |stft_np(x, n_fft, hop)| per channel: (channels, n_fft//2 + 1), float64. Frames
    are transformed a block at a time, so a long signal with a 65 536-point FFT never needs the whole
    spectrogram in memory, and in float32 (relative error ~1e-7, irrelevant for a long-term average;
    twice as fast), accumulated in float64. Returns zeros when x is shorter than one frame."""
    x = as_2d(np.asarray(x))
    n_frames = max(0, 1 + (x.shape[0] - n_fft) // hop)
    total = np.zeros((x.shape[1], n_fft // 2 + 1))
    window = sqrt_hann(n_fft).astype(np.float32)
    for first in range(0, n_frames, block_frames):
        last = min(n_frames, first + block_frames)
        frames = frame_signal(x[first * hop:(last - 1) * hop + n_fft].astype(np.float32), n_fft, hop)
        total += np.abs(scipy.fft.rfft(frames * window, axis=-1)).sum(axis=0, dtype=np.float64)
    return total / max(1, n_frames)


# --- compressor kernel ---------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _compress_channel(x, threshold_db, slope, alpha_attack, alpha_release, smoothed, out):
    # Compresses x into out from the smoothed gain reduction `smoothed` (dB) and returns the one
    # after x's last sample, where the next block starts. The detector level 20·log10|x| is only
    # needed above the threshold (below it the target gain reduction is 0), and the gain only while
    # some reduction is smoothed in: skipping both where they cannot matter makes a pass 2-3x faster
    # than computing them for every sample.
    to_gain = -math.log(10.0) / 20.0
    to_db = 20.0 / math.log(10.0)
    threshold_amp = max(10.0 ** (threshold_db / 20.0), 1e-6)
    floor_reduction = max(-120.0 - threshold_db, 0.0) * slope  # |x| < 1e-6 reads as −120 dB
    for n in range(x.shape[0]):
        a = abs(x[n])
        gain_reduction = (to_db * math.log(a) - threshold_db) * slope if a >= threshold_amp else floor_reduction
        alpha = alpha_attack if gain_reduction > smoothed else alpha_release
        smoothed = alpha * smoothed + (1.0 - alpha) * gain_reduction
        out[n] = x[n] * math.exp(to_gain * smoothed) if smoothed > 0.0 else x[n]
    return smoothed


# --- long-term average spectra (what a job's report.png draws) -----------------------------------------------------------------------------

SPECTRUM_BAND_EDGES_HZ = np.geomspace(20.0, 20000.0, 97)  # 96 bands, 1/8-octave-ish, over the audible range
SPECTRUM_BAND_CENTRES_HZ = np.sqrt(SPECTRUM_BAND_EDGES_HZ[:-1] * SPECTRUM_BAND_EDGES_HZ[1:])
SPECTRUM_FFT = 4096


def average_spectrum_db(x: np.ndarray, sr: int = WORKING_RATE) -> np.ndarray:
    """Long-term average power spectrum of the mid channel (Welch, 4096-point Hann), averaged into
    the SPECTRUM_BAND_EDGES_HZ bands so that curves of different material are readable side by
    side; dB, one value per band (a band holding no FFT bin takes the spectrum at its centre)."""
    meter = SpectrumMeter(sr)
    meter.push(x)
    return meter.spectrum_db()


class SpectrumMeter:
    """average_spectrum_db of a signal fed block by block, in any partition: Welch's segments
    (SPECTRUM_FFT samples, half overlapping, each less its mean, Hann-windowed; density scaling)
    counted from the first sample, their power spectra summed as they complete. A signal shorter
    than one segment is measured zero-padded to one, as scipy's welch would not."""

    def __init__(self, sr: int = WORKING_RATE):
        self.sr = sr
        self.window = signal.get_window("hann", SPECTRUM_FFT)
        self.held = History()                     # mid samples from the next segment's start on
        self.total = np.zeros(SPECTRUM_FFT // 2 + 1)
        self.segments = 0

    def push(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        self.held.append(block.mean(axis=1) if block.ndim == 2 else block)
        hop = SPECTRUM_FFT // 2
        count = (self.held.end - self.held.start - SPECTRUM_FFT) // hop + 1
        if count > 0:
            mid = self.held.window(self.held.start, self.held.start + (count - 1) * hop + SPECTRUM_FFT)
            segments = np.lib.stride_tricks.sliding_window_view(mid, SPECTRUM_FFT)[::hop]
            for first in range(0, count, 256):  # a few at a time: no song-long spectrogram
                self.total += self._power(segments[first:first + 256])
            self.segments += count
            self.held.forget(self.held.start + count * hop)

    def _power(self, segments: np.ndarray) -> np.ndarray:
        """The summed |FFT|² of detrended, windowed segments (segments, SPECTRUM_FFT)."""
        detrended = segments - segments.mean(axis=1, keepdims=True)
        return np.sum(np.abs(scipy.fft.rfft(detrended * self.window, axis=1)) ** 2, axis=0)

    def spectrum_db(self) -> np.ndarray:
        """The bands' levels (dB) of what came in so far."""
        total, segments = self.total, self.segments
        if segments == 0:
            held = self.held.data if self.held.data is not None else np.zeros(0)
            total, segments = self._power(np.pad(held, (0, SPECTRUM_FFT - held.shape[0]))[None]), 1
        power = total / (segments * self.sr * np.sum(self.window ** 2))
        power[1:-1] *= 2.0  # one-sided: the negative frequencies' share
        freqs = np.fft.rfftfreq(SPECTRUM_FFT, 1.0 / self.sr)
        bands = np.empty(len(SPECTRUM_BAND_CENTRES_HZ))
        for i, (lo, hi) in enumerate(zip(SPECTRUM_BAND_EDGES_HZ[:-1], SPECTRUM_BAND_EDGES_HZ[1:])):
            sel = (freqs >= lo) & (freqs < hi)
            bands[i] = power[sel].mean() if sel.any() else np.interp(np.sqrt(lo * hi), freqs, power)
        return 10.0 * np.log10(bands + 1e-20)
