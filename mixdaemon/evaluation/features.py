"""The mixing features the unpaired protocol compares an output stem with its reference stem by, and
their distances: measured here, independently of what the engines themselves match
(mixdaemon.fx.features), so that an engine is not judged by its own yardstick.

Per stem ((n, 2) float at the working rate):

1. Loudness: BS.1770 integrated loudness in LUFS (silence: −70 LUFS). Distance: |ΔLUFS|.
2. Spectral shape: the power in each third-octave band (base-10 centres 1000·10^(k/10) Hz, 31.6 Hz …
   15.8 kHz, 28 bands) of a Welch average over both channels, in dB, with the mean over bands removed
   and levels more than 80 dB under the loudest band raised to that floor (the empty top octaves of
   a bass stem would otherwise outweigh every audible band). Distance: RMS over bands of the dB
   difference, every band weighted equally.
3. Dynamics: the peak-to-loudness ratio (true peak dBTP − integrated LUFS) and the loudness range
   (EBU Tech 3342: short-term loudness of 3-s windows every 0.1 s, gated at −70 LUFS and then 20 LU
   below the level of the remaining windows; the 95th minus the 10th percentile; 0 for a signal
   shorter than one window). Distance: the mean of the two absolute differences (dB and LU).
4. Width: 10·log10(E_side / E_mid) with M = L + R, S = L − R, clipped to −40 … +20 dB (−40: mono).
   Distance: the absolute difference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from mixdaemon.audio.dsp import ABSOLUTE_GATE_LUFS, WORKING_RATE, block_loudness, loudness_lufs, to_mid_side
from mixdaemon.audio.mastering import true_peak_dbtp

FEATURES = ("loudness", "spectral", "dynamics", "width")
LOUDNESS_FLOOR = ABSOLUTE_GATE_LUFS  # LUFS of silence (loudness_lufs), and the true peak (dBTP) below which a signal counts as silent
BAND_CENTRES_HZ = 1000.0 * 10.0 ** (np.arange(-15, 13) / 10.0)
BAND_EDGES_HZ = np.stack([BAND_CENTRES_HZ * 10.0 ** -0.05, BAND_CENTRES_HZ * 10.0 ** 0.05], axis=1)
BAND_FLOOR_DB = 80.0
WELCH_SEGMENT = 16384  # 2.7 Hz bins: three or more in the narrowest (31.6 Hz) band
SHORT_TERM_SECONDS, SHORT_TERM_HOP_SECONDS = 3.0, 0.1
LRA_ABSOLUTE_GATE, LRA_RELATIVE_GATE = -70.0, -20.0
LRA_PERCENTILES = (10.0, 95.0)
WIDTH_RANGE_DB = (-40.0, 20.0)


@dataclass(frozen=True)
class StemFeatures:
    """One stem's features (module docstring)."""

    loudness_lufs: float
    band_levels_db: np.ndarray  # mean-removed third-octave levels (module docstring, 2)
    plr_db: float
    lra_lu: float
    width_db: float

    def scalars(self) -> dict[str, float]:
        """The features a report lists (the band levels left out)."""
        return {"loudness_lufs": self.loudness_lufs, "plr_db": self.plr_db, "lra_lu": self.lra_lu,
                "width_db": self.width_db}


def _band_weights(frequencies: np.ndarray) -> np.ndarray:
    """(bands, bins): the fraction of each FFT bin's width inside each band, so that the band powers
    do not depend on where the bin centres fall."""
    step = frequencies[1] - frequencies[0]
    low, high = frequencies - step / 2, frequencies + step / 2
    overlap = (np.minimum(high[None, :], BAND_EDGES_HZ[:, 1:]) - np.maximum(low[None, :], BAND_EDGES_HZ[:, :1]))
    return np.clip(overlap, 0.0, None) / step


def band_levels_db(x: np.ndarray, sr: int = WORKING_RATE) -> np.ndarray:
    """Third-octave band levels, mean removed (module docstring, 2)."""
    x = np.asarray(x, dtype=np.float64)
    frequencies, psd = signal.welch(x, sr, nperseg=min(WELCH_SEGMENT, len(x)), axis=0)
    levels = 10.0 * np.log10(_band_weights(frequencies) @ psd.sum(axis=1) + 1e-30)
    levels = np.maximum(levels, levels.max() - BAND_FLOOR_DB)
    return levels - levels.mean()


def short_term_loudness(x: np.ndarray, sr: int = WORKING_RATE) -> np.ndarray:
    """Loudness (LUFS) of every 3-s window, one every 0.1 s; empty for a shorter signal."""
    return block_loudness(x, SHORT_TERM_SECONDS, SHORT_TERM_HOP_SECONDS, sr)


def loudness_range(x: np.ndarray, sr: int = WORKING_RATE) -> float:
    """EBU Tech 3342 loudness range in LU (module docstring, 3)."""
    levels = short_term_loudness(x, sr)
    levels = levels[levels > LRA_ABSOLUTE_GATE]
    if levels.size == 0:
        return 0.0
    relative_gate = 10.0 * np.log10(np.mean(10.0 ** (levels / 10.0))) + LRA_RELATIVE_GATE
    levels = levels[levels > relative_gate]
    low, high = np.percentile(levels, LRA_PERCENTILES)
    return float(high - low)


def width_db(x: np.ndarray) -> float:
    """10·log10(E_side / E_mid), clipped (module docstring, 4)."""
    mid, side = to_mid_side(np.asarray(x, dtype=np.float64))
    e_mid, e_side = max(float(np.dot(mid, mid)), 1e-30), max(float(np.dot(side, side)), 1e-30)
    return float(np.clip(10.0 * np.log10(e_side / e_mid), *WIDTH_RANGE_DB))


def stem_features(x: np.ndarray, sr: int = WORKING_RATE) -> StemFeatures:
    loudness = loudness_lufs(x, sr)
    plr = max(true_peak_dbtp(np.asarray(x, dtype=np.float32)), LOUDNESS_FLOOR) - loudness
    return StemFeatures(float(loudness), band_levels_db(x, sr), float(plr), loudness_range(x, sr), width_db(x))


def feature_distances(a: StemFeatures, b: StemFeatures) -> dict[str, float]:
    """The four distances of the module docstring, in FEATURES order."""
    return {"loudness": abs(a.loudness_lufs - b.loudness_lufs),
            "spectral": float(np.sqrt(np.mean((a.band_levels_db - b.band_levels_db) ** 2))),
            "dynamics": (abs(a.plr_db - b.plr_db) + abs(a.lra_lu - b.lra_lu)) / 2.0,
            "width": abs(a.width_db - b.width_db)}
