"""What the param engine measures on a stem: the audio features from which its FX-chain settings are
predicted and against which they are refined (mixing/param_estimation.py), and which the predictor is
trained on (train/params.py).

Per stem, all level-independent except `level_db`:
- spectral shape: mean power in SPECTRUM_BANDS log-spaced bands (40 Hz–16 kHz), dB re the level;
- level: power of the non-silent 50-ms blocks, dB;
- dynamics: the 10/50/90/99th percentiles of the 50-ms block levels re the level, and the median
  block crest factor (peak re RMS in a block; fast compression lowers it); block_dynamics_db adds
  the peak-to-level ratio (not a predictor input) for the compressor search;
- stereo: side/mid energy ratio in three bands (< 300 Hz, 300 Hz–3 kHz, > 3 kHz) and the right/left
  energy ratio, dB.

Everything comes from non-overlapping 4096-point FFTs (at most MAX_FRAMES) and 50-ms blocks, so a
3-minute stem is measured in a few tens of milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from mixdaemon.audio.dsp import WORKING_RATE, frame_signal

N_FFT = 4096
SPECTRUM_BANDS = 32
BAND_EDGES_HZ = np.geomspace(40.0, 16000.0, SPECTRUM_BANDS + 1)
STEREO_SPLITS_HZ = (300.0, 3000.0)
BLOCK = 2205                 # 50 ms
SILENCE_DBFS = -70.0         # blocks quieter than this are not part of the stem's sound
RELATIVE_GATE_DB = 50.0      # nor blocks this far below the loudest block
PERCENTILES = (10, 50, 90, 99)
FLOOR = 1e-12
MAX_FRAMES = 256           # ≈ 24 s of spectrum frames

_BIN_HZ = np.fft.rfftfreq(N_FFT, 1.0 / WORKING_RATE)
_BAND_OF_BIN = np.searchsorted(BAND_EDGES_HZ, _BIN_HZ, side="right") - 1
_STEREO_OF_BIN = np.searchsorted(STEREO_SPLITS_HZ, _BIN_HZ, side="right")
_WINDOW = np.hanning(N_FFT).astype(np.float32)


@dataclass
class StemFeatures:
    shape_db: np.ndarray      # (SPECTRUM_BANDS,)
    level_db: float
    dynamics_db: np.ndarray   # percentiles re level, then median block crest factor
    side_mid_db: np.ndarray   # (3,)
    right_left_db: float

    def vector(self) -> np.ndarray:
        """The level-independent features (the absolute level only enters pair_vector as a difference,
        so a predictor trained on normalized stems also reads inputs at any level)."""
        return np.concatenate([self.shape_db, self.dynamics_db, self.side_mid_db, [self.right_left_db]])


FEATURE_SIZE = SPECTRUM_BANDS + len(PERCENTILES) + 1 + 3 + 1
PAIR_FEATURE_SIZE = 3 * FEATURE_SIZE + 1


def _db(power):
    return 10.0 * np.log10(np.maximum(power, FLOOR))


def block_levels_db(x: np.ndarray) -> np.ndarray:
    """Mean power (both channels) of each whole 50-ms block, dB."""
    n = (x.shape[0] // BLOCK) * BLOCK
    blocks = np.asarray(x[:n], dtype=np.float32).reshape(-1, BLOCK * 2)
    return _db(np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / (2 * BLOCK))


def audible_blocks(levels_db: np.ndarray) -> np.ndarray:
    """Mask of the blocks that belong to the stem's sound (absolute and relative gates)."""
    if levels_db.size == 0:
        return np.zeros(0, dtype=bool)
    return (levels_db > SILENCE_DBFS) & (levels_db > levels_db.max() - RELATIVE_GATE_DB)


def _gated_level(levels_db: np.ndarray, keep: np.ndarray) -> float:
    return float(_db(np.mean(10.0 ** (levels_db[keep] / 10.0)))) if keep.any() else -120.0


def gated_level_db(x: np.ndarray) -> float:
    """Power of the audible 50-ms blocks, dB (−120 for silence): the level that gain matching uses."""
    levels = block_levels_db(x)
    return _gated_level(levels, audible_blocks(levels))


def gain_to_level(x: np.ndarray, target_db: float, limit_db: float, rounds: int = 4) -> float:
    """The gain (dB, within ±limit_db) that brings x's gated level to target_db. The absolute gate
    admits more quiet blocks as the level rises, so one correction can land a dB short; a few
    rounds on the block levels (measured once: a gain only shifts them) converge."""
    levels = block_levels_db(x)
    gain_db = 0.0
    for _ in range(rounds):
        shifted = levels + gain_db
        gain_db = float(np.clip(gain_db + target_db - _gated_level(shifted, audible_blocks(shifted)), -limit_db, limit_db))
    return gain_db


def _block_dynamics(x: np.ndarray, levels: np.ndarray, keep: np.ndarray, level: float) -> np.ndarray:
    """The percentiles of the audible block levels re `level`, their median crest factor, and the
    sample peak of the audible blocks re `level` (dB)."""
    n = (x.shape[0] // BLOCK) * BLOCK
    block_peaks = np.max(np.abs(np.asarray(x[:n], dtype=np.float32).reshape(-1, BLOCK * 2)), axis=1)[keep]
    peaks_db = 2.0 * _db(block_peaks.astype(np.float64))
    return np.concatenate([np.percentile(levels[keep], PERCENTILES) - level, [np.median(peaks_db - levels[keep])],
                           [peaks_db.max() - level]])


def block_dynamics_db(x: np.ndarray) -> tuple[float, np.ndarray]:
    """(gated level, dynamics) of a (n, 2) stem from its 50-ms blocks alone, without a spectrum, so
    that a search can measure every trial: the dynamics are StemFeatures.dynamics_db followed by the
    peak-to-level ratio (sample peak re the gated level). Silence gives (−120, zeros)."""
    x = np.asarray(x)
    levels = block_levels_db(x)
    keep = audible_blocks(levels)
    if not keep.any():
        return -120.0, np.zeros(len(PERCENTILES) + 2)
    level = _gated_level(levels, keep)
    return level, _block_dynamics(x, levels, keep, level)


def measure(x: np.ndarray) -> StemFeatures:
    """The features of a (n, 2) stem (silence gives a flat, neutral description). Spectra use at
    most MAX_FRAMES frames spread evenly over the stem: long-term averages need no more."""
    x = np.asarray(x)
    levels = block_levels_db(x)
    keep = audible_blocks(levels)
    if not keep.any() or x.shape[0] < N_FFT:
        return StemFeatures(np.zeros(SPECTRUM_BANDS), -120.0, np.zeros(len(PERCENTILES) + 1), np.full(3, -40.0), 0.0)
    level = _gated_level(levels, keep)
    dynamics = _block_dynamics(x, levels, keep, level)[:-1]

    frames = frame_signal(x, N_FFT, N_FFT)  # (frames, 2, N_FFT) strided view
    if frames.shape[0] > MAX_FRAMES:
        frames = frames[np.linspace(0, frames.shape[0] - 1, MAX_FRAMES).round().astype(int)]
    spectrum = scipy.fft.rfft(frames.astype(np.float32) * _WINDOW, axis=-1)
    left, right = spectrum[:, 0], spectrum[:, 1]
    power_l = np.mean(left.real ** 2 + left.imag ** 2, axis=0, dtype=np.float64)
    power_r = np.mean(right.real ** 2 + right.imag ** 2, axis=0, dtype=np.float64)
    cross = np.mean(left.real * right.real + left.imag * right.imag, axis=0, dtype=np.float64)
    inside = (_BAND_OF_BIN >= 0) & (_BAND_OF_BIN < SPECTRUM_BANDS)
    band_power = np.bincount(_BAND_OF_BIN[inside], (power_l + power_r)[inside], SPECTRUM_BANDS)
    band_bins = np.maximum(np.bincount(_BAND_OF_BIN[inside], minlength=SPECTRUM_BANDS), 1)
    band_db = _db(band_power / band_bins)
    stereo_power = np.stack([np.bincount(_STEREO_OF_BIN, p, 3) for p in (power_l, power_r, cross)], axis=1)
    ll, rr, lr = stereo_power.T
    side_mid = _db(ll + rr - 2 * lr) - _db(ll + rr + 2 * lr)
    right_left = float(_db(rr.sum()) - _db(ll.sum()))
    return StemFeatures(band_db - np.mean(band_db), level, dynamics, np.clip(side_mid, -40.0, 20.0),
                        float(np.clip(right_left, -40.0, 40.0)))


def pair_vector(x: StemFeatures, reference: StemFeatures) -> np.ndarray:
    """The predictor's input: both stems' features, their difference and the level difference."""
    a, b = x.vector(), reference.vector()
    return np.concatenate([a, b, b - a, [reference.level_db - x.level_db]])


def excerpt(x: np.ndarray, seconds: float = 6.0, windows: int = 4) -> np.ndarray:
    """Up to `seconds` of the stem's audible sound: `windows` equal windows evenly spread over the
    audible part, concatenated (what refinement renders, so a trial costs little on long stems)."""
    x = np.asarray(x)
    total = int(seconds * WORKING_RATE)
    if x.shape[0] <= total:
        return x
    width = max(BLOCK, (total // windows) // BLOCK * BLOCK)
    levels = block_levels_db(x)
    audible = np.flatnonzero(audible_blocks(levels))
    if audible.size == 0:
        return x[:total]
    picks = audible[np.linspace(0, audible.size - 1, windows).round().astype(int)]
    starts = np.clip(picks * BLOCK, 0, x.shape[0] - width)
    return np.concatenate([x[s:s + width] for s in starts])
