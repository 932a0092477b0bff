"""FX normalization (docs/ALGORITHMS.md §1): bring each separated stem to the average EQ, dynamics,
stereo image / panning and loudness of a reference dataset, so that the style-transfer and automix
networks see inputs whose mixing effects have been "removed".

Each step is a small object that processes one zero-padded stereo stem (like a pedalboard plugin);
`StemNormalizer` chains steps through the spec's step wrapper (65 536-sample zero pad at both ends,
MIN_DB gate, mono → stereo). `normalize_stems` builds the chain for each stem from an `FxStats`
(fx/stats.py) in one of the three orders of §1.1 and runs the stems in parallel threads.

A step's `fit(x)` measures what it needs on x and returns a streamable effect (audio/streams.py)
that applies it; the step's call is that effect fitted on x and applied to x. `fit_normalizer`
chains the fitted effects, so that a stem's normalization can be fitted on an excerpt and then
rendered block by block over the whole song (the neural engine's long jobs); `normalize_stems` is
the same fit on each whole stem. A stream starting from rest (zeros before the start, filter and
compressor states at rest) sees what a step sees in the zero padding, so the fitted chain on the
unpadded stem gives the padded steps' result.

Shipped default statistics: `default_stats_path("mst")` → data/fxnorm_default_mst.npz and
`default_stats_path("fxnorm")` → data/fxnorm_default_fxnorm.npz. They were computed by this project's
own code (fx/fit.py's `fit`, command: `python benchmarks/fit_default_stats.py`) from the three
Demucs-separated songs of ../shared/data/real_stems (song_a/b/c, 15–20 s each), in the MST training
order eq → compression → imager → loudness (resp. FxNorm's eq → compression → panning → loudness).
Three short songs are a far smaller sample than MUSDB18's 100 training songs, so the MUSDB18 files
(the papers' statistics, ../shared/data/musdb18_fx_stats, docs/ALGORITHMS.md §1.8) remain the reference
for reproducing the papers; pass them with `FxStats.load`. How they compare (MUSDB18 = the papers'
statistics files; the default sets depend only on the songs and this code, so the numbers below are
exactly what `python benchmarks/fit_default_stats.py` prints):

    MST flavour   loudness LUFS     imager (mid fraction)   compression μ/σ dB
                  MUSDB18   ours    MUSDB18   ours          MUSDB18     ours
    drums         -29.0    -29.9    0.945    0.985          -13.5/1.13  -15.1/2.18
    bass          -24.4    -22.4    0.982    0.997          -13.2/0.87  -11.7/1.47
    other         -26.2    -24.4    0.794    0.682          -14.8/1.30  -13.6/1.48
    vocals        -25.4    -24.0    0.918    0.935          -14.2/1.36  -12.4/1.13

    EQ band means dB  MUSDB18                   ours
    drums             25.9/ 7.4/  1.7/ -5.7     25.0/ 2.4/  1.2/ -0.4
    bass              24.0/-4.2/-25.2/-43.1     23.7/-9.5/-32.1/-41.9
    other             18.2/12.0/ -3.7/-21.8     19.5/12.0/ -6.1/-26.0
    vocals            10.6/10.6/ -4.0/-15.1     12.1/12.5/  0.3/ -7.6

    FxNorm flavour: loudness MUSDB18 → ours: drums -34.2 → -35.5, bass -29.7 → -28.3, other -31.2 →
    -29.9, vocals -30.7 → -29.6 LUFS; mean panning coherence φ̄: 0.862 → 0.849, 0.891 → 0.839,
    0.833 → 0.789, 0.920 → 0.872 (EQ and compression as for MST, up to the statistics' differences).

EQ band means: mean of dB(curve) over 60–250 Hz / 250 Hz–2 kHz / 2–8 kHz / 8–16 kHz, the curve being
raw-FFT magnitude at −30 LUFS. Against MUSDB18, the default loudness targets differ by −1.3 to
+2 LU, "other" is wider (mid fraction 0.68 vs 0.79), drums and vocals are 5–8 dB brighter above
8 kHz (the Demucs estimates keep high-frequency bleed), and the compression targets are spread wider
(σ 1.1–2.2 dB from three songs).

Deviations from the released code, all deliberate (docs/ALGORITHMS.md §5.2):
- EQ gain is clamped to ±EQ_MAX_GAIN_DB and the measured spectrum floored (§5.2.4).
- The onset-peak statistic P(x) uses our own re-implementation of aubio 0.4.9's "hfc" onset
  detector (aubio is not a dependency), see `hfc_onsets`.
- The compression search is a bracketed secant search on the threshold grid instead of the released
  brute force over up to 17 × 61 settings (§5.2.5); on a monotone P it returns the same grid point.
- A channel without any detected onset is still peak-normalised (the original's `break` left it and
  every following channel unprocessed, §5.2.6).
- The Haas step is seeded (§5.2.3): same stem, same seed → bit-identical output.
- FxNorm panning caps frequency bins, not frames, above 16 kHz (6 kHz for drums) (§1.5.6).
- The loudness step applies the exact gain to the target (no anti-clip division), so it always lands
  on the target; peaks may then exceed ±1 (float headroom, see `LoudnessMatch`).
- Reverb normalization (§1.7, FxNorm) runs only with a folder of the user's own long impulse
  responses (`ir_folder`, `--ir-folder`): the papers' impulse responses are not public.
"""
from __future__ import annotations

import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import scipy.fft
from scipy import signal

from mixdaemon import defaults
from mixdaemon.audio import dsp
from mixdaemon.audio.dsp import WORKING_RATE as SR
from mixdaemon.audio.streams import ChainOf, Gain, History, Samplewise, Streamable, whole
from mixdaemon.errors import ConfigError, StemLayoutError
from mixdaemon.fx.matching import CentredFirStream
from mixdaemon.fx.stats import FFT_SIZE, FxStats
from mixdaemon.progress import Progress, no_progress

STEM_NAMES = ("drums", "bass", "other", "vocals")

# --- step wrapper and shared analysis settings (§1.0, §1.2) ---------------------------------------
STEP_PAD = 65536          # zero padding at both ends of every step
FFT_HOP = FFT_SIZE // 4
MIN_DB = {"mst": -40.0, "fxnorm": -50.0}   # a step passes a stem through if its peak is at or below

# --- EQ (§1.2, §5.2.4) -------------------------------------------------------------------------------
EQ_LUFS = -30.0
EQ_TAPS = 1001
# The released code applies whatever gain makes the stem's long-term spectrum equal the statistic;
# on separated stems that means +30 dB and more in bands that only hold bleed (bass above 5 kHz).
# We clamp the net (two-pass) gain to ±15 dB per bin.
EQ_MAX_GAIN_DB = 15.0
# Floor for the measured long-term spectrum A(k) (raw FFT magnitude at −30 LUFS, 65 536-point
# frames; a full-band stem at −30 LUFS sits around 1e-2…1e1). Bins at or below it (digital silence
# above a codec low-pass, DC of a zero-mean stem) are treated as this level instead of as −∞ dB.
EQ_SPECTRUM_FLOOR = 1e-7

# --- compression (§1.3) ------------------------------------------------------------------------------
COMP_PEAK_DB = -10.0
COMP_PERCENTILE = 75
COMP_MAX_RATIO = 20
COMP_THRESHOLDS_DB = np.linspace(-10.0, -40.0, 61)   # the original's grid, least compression first


@dataclass(frozen=True)
class CompressorSetting:
    ratio: int           # r0, the first ratio tried
    attack_ms: float
    release_ms: float


COMP_SETTINGS = {
    "vocals": CompressorSetting(4, 7.5, 400.0),
    "drums": CompressorSetting(6, 10.0, 180.0),
    "bass": CompressorSetting(5, 10.0, 500.0),
    "other": CompressorSetting(4, 15.0, 666.0),
}

# --- aubio 0.4.9 "hfc" onset detector, as the originals call it (§1.3) ---------------------------------
ONSET_FRAME = 1024                      # buf_size = hop_size
ONSET_THRESHOLD = 0.058                 # peak-picker threshold set for "hfc"
ONSET_MIN_IOI = int(np.floor(0.050 * SR + 0.5))   # 50 ms → 2205 samples
ONSET_SILENCE_DB = -70.0
ONSET_DELAY = int(4.3 * ONSET_FRAME)    # 4403 samples, subtracted from reported onset times
# Peak picker: a 7-value window (1 ahead of the tested value, 5 behind) low-passed forwards and
# backwards by a biquad. aubio's 0.4.x sources ship it with the coefficients marked "broken since
# c9e20ca, revert for now", i.e. a = (1, 0.23484048, 0) rather than butter(2, 0.34)'s
# (1, -0.59488894, 0.23484048); we reproduce what the released library runs.
_PICKER_B = (0.15998789, 0.31997577, 0.15998789)
_PICKER_A = (1.0, 0.23484048, 0.0)
_PICKER_LEN = 7
_PICKER_POST = 5

# --- stereo imager (MST, §1.4) and panning (FxNorm, §1.5) ------------------------------------------
HAAS_MONO_THRESHOLD = {"bass": 0.99}      # others: 0.975
HAAS_DEFAULT_MONO_THRESHOLD = 0.975
HAAS_MAX_DELAY = int(0.040 * SR)          # ±40 ms
HAAS_FEEDBACK = (0.33, 0.66)
PAN_FFT = 2048
PAN_HOP = 1024
PAN_REF_SCALE = 0.9
PAN_SIDE_BAND_HZ = (50.0, 2500.0)
PAN_MIN_FRAME_DB = -10.0
PAN_MAX_FREQ_HZ = {"drums": 6000.0}       # others: 16 kHz
PAN_DEFAULT_MAX_FREQ_HZ = 16000.0
_PAN_EPS = 1e-20

# --- orders (§1.1) ------------------------------------------------------------------------------------
ORDERS = {
    "mst_inference": ("loudness", "eq", "compression", "imager", "loudness"),
    "mst_training": ("eq", "compression", "imager", "loudness"),
    "fxnorm": ("eq", "compression", "panning", "loudness"),
}
ORDER_FLAVOUR = {"mst_inference": "mst", "mst_training": "mst", "fxnorm": "fxnorm"}

# =====================================================================================================
# Onset-peak statistic P(x)
# =====================================================================================================

def _picker_matrix() -> np.ndarray:
    """aubio filters each 7-value window forwards then backwards from a zero state, which is linear:
    proc = M @ window. Built once by filtering the unit vectors."""
    m = np.empty((_PICKER_LEN, _PICKER_LEN))
    for j in range(_PICKER_LEN):
        unit = np.zeros(_PICKER_LEN)
        unit[j] = 1.0
        forward = signal.lfilter(_PICKER_B, _PICKER_A, unit)
        m[:, j] = signal.lfilter(_PICKER_B, _PICKER_A, forward[::-1])[::-1]
    return m


_PICKER_MATRIX = _picker_matrix()
_ONSET_WINDOW = np.hanning(ONSET_FRAME + 1)[:-1].astype(np.float32)   # aubio's "hanningz" (periodic Hann)
_HFC_WEIGHTS = np.arange(1, ONSET_FRAME // 2 + 2, dtype=np.float32)


def hfc_onsets(x: np.ndarray) -> np.ndarray:
    """Onset positions (samples, increasing) of a mono signal, as aubio 0.4.9's
    onset("hfc", 1024, 1024, 44100) reports them through get_last() when fed consecutive
    non-overlapping 1024-sample frames (the trailing partial frame is dropped, as librosa's framing
    does in the originals).

    Per frame: periodic Hann window, |rFFT|, log(1 + |X|) (the magnitude "compression" aubio
    enables for hfc), HFC = Σ (k+1)·log(1 + |X_k|). Peak picker: the last 7 HFC values are
    low-passed forwards and backwards; the filtered value one frame back, minus the window's median
    and 0.058 × its mean, is a peak when positive and larger than its neighbours; its position is
    refined by a parabola. A peak is dropped if the frame being read when it is confirmed (the one
    after it) has a power below −70 dB, or if it lies within 50 ms of the previous onset. aubio
    reports each onset 4403 samples (4.3 frames) earlier than it confirmed it (≈ 1 frame before the
    frame holding the attack), and marks the first non-silent frame among the first five as an onset.
    Spectra are float32 as in aubio, but a different FFT and float64 peak picking can still flip a
    candidate that sits on a threshold to within rounding.

    Vectorised except for the final accept/reject pass over candidate frames."""
    frames = dsp.frame_signal(np.asarray(x, dtype=np.float32), ONSET_FRAME, ONSET_FRAME)[:, 0, :]
    n_frames = frames.shape[0]
    if n_frames == 0:
        return np.zeros(0, dtype=np.int64)
    # Spectra in float32 like aubio (and twice as fast as float64); the picker runs in float64.
    magnitude = np.abs(scipy.fft.rfft(frames * _ONSET_WINDOW, axis=-1))
    hfc = np.einsum("tk,k->t", np.log1p(magnitude), _HFC_WEIGHTS).astype(np.float64)
    silent = np.mean(np.square(frames, dtype=np.float64), axis=1) < 10.0 ** (ONSET_SILENCE_DB / 10.0)

    history = np.concatenate([np.zeros(_PICKER_LEN - 1), hfc])
    windows = np.lib.stride_tricks.sliding_window_view(history, _PICKER_LEN)     # (frames, 7)
    proc = np.einsum("tj,ij->ti", windows, _PICKER_MATRIX)
    thresholded = proc[:, _PICKER_POST] - np.median(proc, axis=1) - ONSET_THRESHOLD * proc.mean(axis=1)
    before = np.concatenate([[0.0, 0.0], thresholded[:-2]])
    centre = np.concatenate([[0.0], thresholded[:-1]])
    is_peak = (centre > before) & (centre > thresholded) & (centre > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        position = 1.0 + 0.5 * (before - thresholded) / (before - 2.0 * centre + thresholded)

    start_frames = np.arange(min(n_frames, ONSET_DELAY // ONSET_FRAME + 1))
    candidates = np.union1d(np.flatnonzero(is_peak & ~silent), start_frames[~silent[start_frames]])
    last_onset = 0
    onsets = []
    for t in candidates:
        total = int(t) * ONSET_FRAME
        if is_peak[t]:
            new_onset = total + int(np.floor(position[t] * ONSET_FRAME + 0.5))
            if last_onset + ONSET_MIN_IOI < new_onset and not (last_onset > 0 and ONSET_DELAY > new_onset):
                last_onset = max(ONSET_DELAY, new_onset)
                onsets.append(last_onset - ONSET_DELAY)
        elif total == 0 or last_onset + ONSET_MIN_IOI < total:   # start of file: first sound is an onset
            last_onset = total + ONSET_DELAY
            onsets.append(total)
    return np.asarray(onsets, dtype=np.int64)


def onset_peak_levels(x: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """dB of max|x| from each onset to the next (the last one to the end)."""
    return dsp.db(np.maximum.reduceat(np.abs(np.asarray(x, dtype=np.float64)), onsets))


def onset_peak_stat(x: np.ndarray) -> tuple[float, float] | None:
    """P(x) of §1.3 for a mono signal: (mean, std) in dB of the onset peak levels that lie strictly
    above their own 75th percentile (all of them if none do); None without onsets."""
    onsets = hfc_onsets(x)
    if onsets.size == 0:
        return None
    levels = onset_peak_levels(x, onsets)
    upper = levels[levels > np.percentile(levels, COMP_PERCENTILE)]
    if upper.size == 0:
        upper = levels
    return float(np.mean(upper)), float(np.std(upper))


def peak_normalize(x: np.ndarray, target_db: float) -> np.ndarray:
    """Scale so that max|x| (over all channels given) is target_db dBFS (pyloudnorm's peak
    normalisation)."""
    return x * (dsp.db_to_amp(target_db) / dsp.peak(x))


# =====================================================================================================
# Steps. Each takes a zero-padded stereo stem of shape (n, 2) and returns it float32.
# =====================================================================================================

class Step(Protocol):
    name: str

    def fit(self, x: np.ndarray) -> Streamable:
        """The step's effect with every quantity it measures measured on x (streamable:
        audio/streams.py), so that a fit on an excerpt can be applied to the whole song."""

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class _Fitted:
    """A step's call: the effect fitted on x, applied to x."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x)(x)


class PerChannel:
    """An effect per channel (None: the channel passes as it is), for the steps that measure and
    process each channel on its own."""

    def __init__(self, effects: list[Streamable | None]):
        self.effects = effects

    def stream(self, n_samples: int) -> Samplewise:
        streams = [None if e is None else e.stream(n_samples) for e in self.effects]
        return _PerChannelStream(streams)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class _PerChannelStream:
    """The channels' streams side by side; they take no look-ahead, so each block comes out whole."""

    def __init__(self, streams: list):
        self.streams = streams

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        out = np.array(block, dtype=np.float32)
        for c, stream in enumerate(self.streams):
            if stream is not None:
                out[:, c] = stream.push(out[:, c], last)
        return out


class ChannelFir:
    """A centred FIR per channel (kernels [channels, L], L odd), gains folded in."""

    def __init__(self, kernels: np.ndarray):
        self.kernels = np.asarray(kernels, dtype=np.float32)

    def stream(self, n_samples: int) -> CentredFirStream:
        return CentredFirStream(self.kernels, n_samples)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class Mix:
    """A fixed 2×2 mix of the channels: out = x @ matrix."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = np.asarray(matrix, dtype=np.float32)

    def stream(self, n_samples: int) -> Samplewise:
        return Samplewise(self)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # einsum, not @: OpenBLAS threads busy-wait on such skinny products and cost seconds of CPU
        # on a loaded machine
        return np.einsum("ni,ij->nj", np.asarray(x, dtype=np.float32), self.matrix)


class WholeSignal:
    """An effect that needs the whole signal at once (the panning step's STFT over the stem): its
    stream holds every block until the last, so it is for whole-stem jobs (automix), not long songs."""

    def __init__(self, apply: Callable[[np.ndarray], np.ndarray]):
        self.apply = apply

    def stream(self, n_samples: int) -> "_WholeSignalStream":
        return _WholeSignalStream(self.apply)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.apply(x), dtype=np.float32)


class _WholeSignalStream:
    def __init__(self, apply: Callable[[np.ndarray], np.ndarray]):
        self.apply, self.blocks = apply, []

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        # kept as a list and joined once: appending to one array would copy it at every push
        self.blocks.append(np.asarray(block, dtype=np.float32))
        if not last:
            return self.blocks[-1][:0]
        return np.asarray(self.apply(np.concatenate(self.blocks, axis=0)), dtype=np.float32)


def _channel_is_quiet(channel: np.ndarray, min_db: float) -> bool:
    return dsp.db(dsp.peak(channel)) <= min_db


class LoudnessMatch:
    """§1.6, gain to the target integrated loudness (stereo measurement).

    Unlike the released lufs_norm, no anti-clip division follows: a stem whose crest factor exceeds
    −target dB would otherwise land below the target, i.e. outside the loudness distribution the
    networks were trained on (the MUSDB18 training stems never needed it: they reach this step peak-
    normalised to −10 dBFS minus compression). The result is float audio whose peaks may exceed 1;
    the networks take float tensors, and whoever writes it to an integer-PCM file must leave headroom
    or use a float format."""

    name = "loudness"
    # A pure gain needs no padding, and measuring the padded signal would shift BS.1770's 400-ms
    # block grid against the stem's own (up to 0.6 LU on a short stem with gaps): measure the stem.
    padded = False

    def __init__(self, target_lufs: float):
        self.target_lufs = float(target_lufs)

    def fit(self, x: np.ndarray, lufs: float | None = None) -> Gain:
        """The gain to the target; `lufs`: the loudness to take for x's (that of the whole stem an
        excerpt x comes from), measured on x when not given or not finite."""
        loudness = lufs if lufs is not None and np.isfinite(lufs) else dsp.integrated_loudness(np.asarray(x, np.float64))
        return Gain(self.target_lufs - loudness if np.isfinite(loudness) else 0.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x)(x)


def stem_spectrum(x: np.ndarray) -> np.ndarray:
    """The EQ statistic's measurement: frame-mean |STFT(65 536, 16 384)| averaged over channels,
    after lufs_norm to −30 LUFS (§1.2). Float64, 32 769 bins."""
    y = dsp.lufs_norm(x, EQ_LUFS)
    return dsp.average_magnitude_spectrum(y, FFT_SIZE, FFT_HOP).mean(axis=0)


class EqMatch(_Fitted):
    """§1.2 per channel: lufs_norm to −30 LUFS (mono measurement), long-term spectrum A(k), then a
    1001-tap firwin2 FIR with gain sqrt(ref/A) run forwards and backwards (net |H| = ref/A), with the
    net gain clamped to ±max_gain_db and A floored at EQ_SPECTRUM_FLOOR (§5.2.4)."""

    name = "eq"

    def __init__(self, target_curve: np.ndarray, min_db: float, max_gain_db: float = EQ_MAX_GAIN_DB):
        self.target_db = dsp.db(np.asarray(target_curve, dtype=np.float64))
        self.min_db = min_db
        self.max_gain_db = max_gain_db
        self._grid = np.arange(self.target_db.shape[0]) / (self.target_db.shape[0] - 1)

    def net_gain_db(self, channel: np.ndarray) -> np.ndarray:
        """Clamped net gain per bin (dB) that the filter pair applies to a −30 LUFS channel."""
        spectrum = dsp.average_magnitude_spectrum(channel, FFT_SIZE, FFT_HOP)[0]
        gain = self.target_db - dsp.db(np.maximum(spectrum, EQ_SPECTRUM_FLOOR))
        return np.clip(gain, -self.max_gain_db, self.max_gain_db)

    def fit(self, x: np.ndarray) -> ChannelFir:
        """Per channel, the lufs_norm gain and the FIR pair run forwards and backwards as one
        centred kernel (the taps' autocorrelation): on a zero-padded signal, as the steps get, that
        is what scipy.signal.filtfilt computes; a quiet channel's kernel is a unit impulse."""
        kernels = np.zeros((x.shape[1], 2 * EQ_TAPS - 1))
        for c in range(x.shape[1]):
            if _channel_is_quiet(x[:, c], self.min_db):
                kernels[c, EQ_TAPS - 1] = 1.0
                continue
            gain = dsp.lufs_norm_gain(x[:, c], EQ_LUFS)
            per_pass_gain = dsp.db_to_amp(self.net_gain_db(gain * np.asarray(x[:, c], np.float64)) / 2.0)
            taps = signal.firwin2(EQ_TAPS, self._grid, per_pass_gain, window="hamming")
            kernels[c] = gain * np.convolve(taps, taps[::-1])
        return ChannelFir(kernels)


@dataclass
class CompressionResult:
    """What the compression search did for one channel (for benchmarks and diagnostics)."""

    peak_stat: tuple[float, float] | None   # P before compression
    ratio: float | None                      # None: left uncompressed
    threshold_db: float | None
    final_mean_db: float | None              # P mean of the returned signal
    passes: int                              # compressor + onset-detector runs


# Where the threshold search starts and how far it steps before it has two probes to interpolate
# between: on the real stems the first threshold that reaches μ+σ lay at indices 3–23 (−11.5 to
# −21.5 dB), and P(θ) is flat down to the loudest peaks, then falls about linearly.
COMP_SEARCH_START = 14
COMP_SEARCH_STEP = 6


def first_hit(level_at: Callable[[int], float], upper: float, lo: int, hi: int, start: int, step: int) -> int:
    """Smallest index i in (lo, hi] with level_at(i) < upper, for a level that falls monotonically
    with i, given that lo misses (or is outside the grid) and hi hits (or is outside the grid: then
    hi is returned if nothing hits). Secant steps through the last two probes, kept inside the
    bracket, find the crossing in ~4 probes on P(θ); when two probes in a row fail to halve the
    bracket the next one bisects, which bounds the worst case."""
    probes: list[tuple[int, float]] = []
    guess, width, slow = start, hi - lo, 0
    while hi - lo > 1:
        guess = min(hi - 1, max(lo + 1, guess))
        level = level_at(guess)
        probes.append((guess, level))
        if level < upper:
            hi = guess
        else:
            lo = guess
        slow = slow + 1 if hi - lo > width / 2 else 0
        width = hi - lo
        if slow >= 2:
            guess, slow = (lo + hi) // 2, 0
        elif len(probes) >= 2 and probes[-1][1] != probes[-2][1]:
            (a, level_a), (b, level_b) = probes[-2], probes[-1]
            guess = int(np.ceil(b + (level_b - upper) * (b - a) / (level_a - level_b)))
        else:
            guess = guess + step if level >= upper else guess - step
    return hi


def search_compression(x: np.ndarray, mean_db: float, std_db: float, setting: CompressorSetting
                       ) -> tuple[np.ndarray, CompressionResult]:
    """§1.3 matching for one peak-normalised channel. If P(x)'s mean is at or above μ+σ, find the
    setting the released brute force would pick — the first (ratio r0…20 outer, threshold −10…−40 dB
    inner) whose output has P < μ+σ — assuming P falls monotonically with a lower threshold and a
    higher ratio: search the 61 thresholds at r0 (`first_hit`, ~4 passes); only if even −40 dB is not
    enough, search the ratios at −40 dB, then the thresholds at that ratio. Compared with the brute
    force's 1 to 17 × 61 passes (16 on average on the real stems). Below μ−σ nothing is done (the
    originals' expander is disabled). Each pass is a compressor run plus an onset detection: compression
    moves the onsets (see benchmarks/bench_fxnorm.py), so they cannot be reused between passes."""
    stat = onset_peak_stat(x)
    upper = mean_db + std_db
    if stat is None or stat[0] < upper:
        return x, CompressionResult(stat, None, None, None if stat is None else stat[0], 0)

    passes = 0
    latest: tuple[int, int, float, np.ndarray] | None = None   # (ratio, index, P mean, output)
    chosen: tuple[int, int, float, np.ndarray] | None = None   # the hit with the least compression

    def level_at(ratio: int, index: int) -> float:
        nonlocal passes, latest, chosen
        passes += 1
        y = dsp.compress(x, COMP_THRESHOLDS_DB[index], ratio, setting.attack_ms, setting.release_ms)
        # The gain reduction is never negative, so |y| ≤ |x| ≤ −10 dBFS: the original's clip to ±1
        # cannot act and is left out.
        p = onset_peak_stat(y)
        latest = (ratio, index, -np.inf if p is None else p[0], y)   # no onsets left: nothing above
        if latest[2] < upper and (chosen is None or (ratio, index) < chosen[:2]):
            chosen = latest
        return latest[2]

    n_thresholds = len(COMP_THRESHOLDS_DB)
    last = n_thresholds - 1
    if first_hit(lambda i: level_at(setting.ratio, i), upper, -1, n_thresholds,
                 COMP_SEARCH_START, COMP_SEARCH_STEP) > last:
        # Even −40 dB at r0 is not enough: find the smallest ratio that gets there at −40 dB, then
        # the highest threshold at that ratio.
        ratios = list(range(setting.ratio + 1, COMP_MAX_RATIO + 1))
        if ratios and level_at(ratios[-1], last) < upper:
            found = first_hit(lambda j: level_at(ratios[j], last), upper, -1, len(ratios) - 1,
                              (len(ratios) - 1) // 2, 2)
            first_hit(lambda i: level_at(ratios[found], i), upper, -1, last, COMP_SEARCH_START, COMP_SEARCH_STEP)
        else:
            chosen = latest   # nothing reaches μ+σ: the brute force returns its last try (20, −40 dB)
    ratio, index, level, y = chosen
    return y, CompressionResult(stat, float(ratio), float(COMP_THRESHOLDS_DB[index]), level, passes)


class CompressionMatch(_Fitted):
    """§1.3 per channel: peak-normalise to −10 dBFS, then compress until the onset-peak statistic
    falls below μ+σ (see search_compression). Every non-quiet channel is peak-normalised, also one
    without onsets (the original skipped it and all channels after it)."""

    name = "compression"

    def __init__(self, mean_db: float, std_db: float, setting: CompressorSetting, min_db: float):
        self.mean_db, self.std_db = float(mean_db), float(std_db)
        self.setting = setting
        self.min_db = min_db

    def fit(self, x: np.ndarray) -> PerChannel:
        """Per channel, the peak-normalizing gain and the compressor the search picks (none where
        the channel's onset peaks are already low enough); a quiet channel passes as it is."""
        effects: list[Streamable | None] = []
        for c in range(x.shape[1]):
            if _channel_is_quiet(x[:, c], self.min_db):
                effects.append(None)
                continue
            gain = Gain(COMP_PEAK_DB - dsp.db(dsp.peak(x[:, c])))
            _, result = search_compression(np.asarray(gain(x[:, c]), np.float64), self.mean_db, self.std_db,
                                           self.setting)
            effects.append(gain if result.ratio is None else ChainOf([gain, dsp.Compressor(
                result.threshold_db, result.ratio, self.setting.attack_ms, self.setting.release_ms)]))
        return PerChannel(effects)


def _balance(a: np.ndarray, b: np.ndarray, fraction: float, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """§1.4's balance(a, b, fraction) on channel mixes: a and b are coefficient vectors over the
    stem's channels (signal = x @ a) and gram = xᵀx, so energies are aᵀ·gram·a. Rescales a and b so
    that a holds `fraction` of their total energy, keeping the total (the 1e-4 / 1e-3 guards are the
    original's)."""
    e_a, e_b = float(a @ gram @ a), float(b @ gram @ b)
    total = e_a + e_b
    gain_a = np.sqrt(fraction * total / (e_a + 1e-4))
    gain_b = np.sqrt(max(0.0, total - gain_a ** 2 * e_a) / (e_b + 1e-3))
    return a * gain_a, b * gain_b


class Haas:
    """§1.4.1's widening of a near-mono stem: to one channel, a copy of itself delayed by `delay`
    samples (negative: ahead) times `feedback`; then the whole times `scale`. The original shifts
    circularly; here the copy is delayed, with zeros before the start (a stream cannot wrap the song's
    end round to its start). On a zero-padded signal, as the steps get (STEP_PAD ≥ 40 ms), the two
    are the same."""

    def __init__(self, channel: int, delay: int, feedback: float, scale: float = 1.0):
        self.channel, self.delay, self.feedback, self.scale = channel, int(delay), float(feedback), float(scale)

    @classmethod
    def drawn(cls, x: np.ndarray, rng: np.random.Generator) -> "Haas":
        """A random channel, delay up to ±40 ms and level U[0.33, 0.66], scaled to restore x's RMS."""
        channel = int(rng.integers(2))
        delay = int(rng.integers(-HAAS_MAX_DELAY, HAAS_MAX_DELAY))
        unscaled = cls(channel, delay, float(rng.uniform(*HAAS_FEEDBACK)))
        return cls(channel, delay, unscaled.feedback, dsp.rms_scale(unscaled(x), x))

    def stream(self, n_samples: int) -> "_HaasStream":
        return _HaasStream(self, n_samples)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return whole(self, x)


class _HaasStream:
    def __init__(self, effect: Haas, n_samples: int):
        self.effect, self.n = effect, n_samples
        self.held, self.done = History(), 0

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        e = self.effect
        self.held.append(np.asarray(block, dtype=np.float32))
        stop = self.n if last else min(self.held.end, self.held.end + e.delay)  # a copy ahead waits for it
        a, b = self.done, max(self.done, stop)
        out = np.array(self.held.window(a, b), dtype=np.float32)
        lo, hi = max(a - e.delay, 0), min(b - e.delay, self.n)  # where the delayed copy has samples
        if hi > lo:
            out[lo + e.delay - a:hi + e.delay - a, e.channel] += np.float32(e.feedback) * \
                self.held.window(lo, hi)[:, e.channel]
        self.done = b
        self.held.forget(b - max(e.delay, 0))
        return out * np.float32(e.scale)


class ImagerMatch(_Fitted):
    """§1.4 (MST): Haas-widen a near-mono stem, then set the mid-energy fraction to the target,
    balance L/R 50/50 (which removes panning) and set the mid fraction again."""

    name = "imager"

    def __init__(self, target_mid_fraction: float, mono_threshold: float, rng: np.random.Generator):
        self.target = float(target_mid_fraction)
        self.mono_threshold = mono_threshold
        self.rng = rng

    def fit(self, x: np.ndarray) -> ChainOf:
        effects = []
        if dsp.mid_energy_fraction(x) > self.mono_threshold:
            effects.append(Haas.drawn(x, self.rng))
            x = effects[-1](x)
        # Every operation below is a scalar gain on a mix of the two channels, so the chain is done
        # on 2-vectors of mix coefficients with energies from the 2×2 Gram matrix, and the audio is
        # touched once at the end (the same numbers as processing the signals, several times faster).
        x = np.asarray(x, dtype=np.float64)
        gram = np.einsum("ni,nj->ij", x, x)
        mid, side = _balance(np.array([1.0, 1.0]), np.array([1.0, -1.0]), self.target, gram)
        left, right = _balance((mid + side) / 2.0, (mid - side) / 2.0, 0.5, gram)
        mid, side = _balance(left + right, left - right, self.target, gram)
        effects.append(Mix(np.stack([(mid + side) / 2.0, (mid - side) / 2.0], axis=1)))
        return ChainOf(effects)


def _stft_blocks(x: np.ndarray, n_fft: int, hop: int, block_frames: int):
    """Yield (first_frame, stft_np of frames first…) over x in blocks of frames, so long stems never
    hold a whole 2048-point spectrogram in memory."""
    n_frames = max(0, 1 + (x.shape[0] - n_fft) // hop)
    for first in range(0, n_frames, block_frames):
        last = min(n_frames, first + block_frames)
        yield first, dsp.stft_np(x[first * hop:(last - 1) * hop + n_fft], n_fft, hop)


def _coherence(spec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """φ = 2|L||R| / (|L|² + |R|²) per frame and bin, with the original's 1e-20 guard (so a silent
    bin counts as φ = 1), and the two magnitudes."""
    left = np.abs(spec[:, 0, :] + _PAN_EPS)
    right = np.abs(spec[:, 1, :] + _PAN_EPS)
    return 2.0 * left * right / (left ** 2 + right ** 2), left, right


def stem_coherence_curve(x: np.ndarray) -> np.ndarray:
    """The panning statistic's measurement (§1.5): frame-mean φ with the 65 536-point STFT."""
    total = np.zeros(FFT_SIZE // 2 + 1)
    count = 0
    for _, spec in _stft_blocks(x, FFT_SIZE, FFT_HOP, 16):
        total += _coherence(spec)[0].sum(axis=0)
        count += spec.shape[0]
    return total / max(1, count)


class PanningMatch:
    """§1.5 (FxNorm): push the stem to the side it leans to with a fixed 0.3/0.7 balance, then scale
    the L and R magnitudes per frame and bin so that the frame's coherence-derived pan gains match
    those of 0.9·statistic; frames quieter than −10 dB and bins above max_freq_hz are left at the
    fixed balance. The released code capped frames instead of bins (§1.5.6); we cap bins."""

    name = "panning"
    BLOCK_FRAMES = 512

    def __init__(self, phi_curve: np.ndarray, max_freq_hz: float):
        phi = np.asarray(phi_curve, dtype=np.float64)
        group = 2 * (phi.shape[0] - 1) // PAN_FFT
        reduced = np.append(phi[:-1].reshape(-1, group).mean(axis=1), phi[-1])
        self.ref_half = np.clip(PAN_REF_SCALE * reduced + 1e-30, 0.0, 1.0) / 2.0
        self.cap_bin = int(np.floor(max_freq_hz * PAN_FFT / SR))

    def leaning_side(self, x: np.ndarray) -> float:
        """+1 if the stem leans right (|R| > |L| in most 50–2500 Hz bins of the smoothed frame-mean
        side-panning spectrum), −1 if left, 0 on an exact tie."""
        total = np.zeros(PAN_FFT // 2 + 1)
        count = 0
        for _, spec in _stft_blocks(x, PAN_FFT, PAN_HOP, self.BLOCK_FRAMES):
            phi, left, right = _coherence(spec)
            total += ((1.0 - phi) * np.sign(right / left - left / right)).sum(axis=0)
            count += spec.shape[0]
        sps = signal.savgol_filter(total / max(1, count), 501, 1, mode="mirror")
        lo, hi = (int(np.floor(f * PAN_FFT / SR)) for f in PAN_SIDE_BAND_HZ)
        return float(np.sign(np.mean(np.sign(sps[lo:hi] + 1e-10))))

    def fit(self, x: np.ndarray) -> WholeSignal:
        """The panning is measured frame by frame on the signal it processes: nothing to carry from
        an excerpt, so the effect is the step itself on the whole signal."""
        return WholeSignal(self)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        padded = np.pad(x, ((PAN_FFT, PAN_FFT), (0, 0)))
        side = self.leaning_side(padded)
        padded = padded * (np.array([0.3, 0.7]) if side > 0 else np.array([0.7, 0.3]))
        if side == 0:   # original: NaN side → equal gains → ratio 1 everywhere
            return padded[PAN_FFT:PAN_FFT + n]
        ref_left, ref_right = (self.ref_half, 1.0 - self.ref_half) if side > 0 else (1.0 - self.ref_half, self.ref_half)
        out = np.zeros_like(padded)
        for first, spec in _stft_blocks(padded, PAN_FFT, PAN_HOP, self.BLOCK_FRAMES):
            phi, _, _ = _coherence(spec)
            half = np.clip(phi + 1e-30, 0.0, 1.0) / 2.0
            own_left, own_right = (half, 1.0 - half) if side > 0 else (1.0 - half, half)
            ratio = np.stack([ref_left / (own_left + _PAN_EPS), ref_right / (own_right + _PAN_EPS)], axis=1)
            quiet = dsp.db(np.max(np.abs(spec[:, 0, :] + spec[:, 1, :]), axis=1)) < PAN_MIN_FRAME_DB
            ratio[quiet] = 1.0
            ratio[:, :, self.cap_bin:] = 1.0
            block = dsp.istft_np(spec * ratio, PAN_FFT, PAN_HOP, (spec.shape[0] - 1) * PAN_HOP + PAN_FFT)
            start = first * PAN_HOP
            out[start:start + block.shape[0]] += block
        return out[PAN_FFT:PAN_FFT + n]


# =====================================================================================================
# Chains
# =====================================================================================================

REVERB_STEMS = ("vocals", "other")  # §1.7: FxNorm adds reverb to these stems only
REVERB_SHELF_DB = -30.0


class ReverbNormalization:
    """§1.7 (FxNorm, before the other steps): out = x + Conv(EQ(x)) — a long, fully wet reverb of
    the stem's mid band added to vocals and other, so that the reverbs the stems arrive with matter
    less. EQ: −30 dB low shelf at U[500, 700] Hz and −30 dB high shelf at U[7, 10] kHz; the
    impulse response is drawn from the user's folder (the papers used private IRs of RT60 2–4 s) and
    aligned to its peak. Seeded like the Haas step: the same stem always gets the same reverb."""

    name = "reverb"

    def __init__(self, ir_folder: str | os.PathLike):
        from mixdaemon.fx.manipulator import (
            ImpulseResponseLibrary,  # the FXmanipulator's IR folder rules
        )
        self.library = ImpulseResponseLibrary(ir_folder, SR)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ir = self.library.load(self.library.draw_index(rng))
        ir = ir[int(np.argmax(np.max(np.abs(ir), axis=1))):]  # aligned to the IR peak
        if ir.shape[1] == 1:
            ir = np.repeat(ir, 2, axis=1)
        sos = np.stack([dsp.low_shelf(rng.uniform(500.0, 700.0), REVERB_SHELF_DB),
                              dsp.high_shelf(rng.uniform(7000.0, 10000.0), REVERB_SHELF_DB)])
        filtered = dsp.apply_sos(np.asarray(x, dtype=np.float64), sos)
        wet = signal.oaconvolve(filtered, ir, axes=0)[:x.shape[0]]
        return (x + wet).astype(np.float32)


def add_reverb(stems: dict[str, np.ndarray], reverb: ReverbNormalization | None, seed: int = 0) -> dict[str, np.ndarray]:
    """The stems with ReverbNormalization applied to REVERB_STEMS (all unchanged without one)."""
    if reverb is None:
        return stems
    return {name: reverb(x, np.random.default_rng(stem_seed(seed, f"{name}:reverb", x))) if name in REVERB_STEMS else x
            for name, x in stems.items()}


def as_stereo(audio: np.ndarray, what: str) -> np.ndarray:
    """(n,), (n, 1) or (n, 2) → float64 (n, 2); mono is duplicated."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] not in (1, 2):
        raise StemLayoutError(f"{what}: expected audio of shape (n_samples,) or (n_samples, 1|2), "
                              f"got {np.shape(audio)}")
    return np.repeat(x, 2, axis=1) if x.shape[1] == 1 else x


class StemNormalizer:
    """A chain of steps run through the step wrapper of §1.0: each step gets the stem zero-padded
    by STEP_PAD samples at both ends and is skipped when the padded stem's peak is at or below
    min_db; the result is cropped back. Call with (n,), (n, 1) or (n, 2) audio; returns float32
    (n, 2)."""

    def __init__(self, steps: list[Step], min_db: float):
        self.steps = steps
        self.min_db = min_db

    def fit(self, audio: np.ndarray, lufs: float | None = None,
            on_step: Callable[[str], None] | None = None) -> tuple[ChainOf, np.ndarray]:
        """(the chain of the steps' effects fitted on audio, audio through it). Applied to audio
        itself it is the normalization; fitted on an excerpt, it applies the excerpt's measurements
        to the whole stem, block by block if need be. `lufs`: the whole stem's loudness, for a first
        loudness step (an excerpt is chosen where the stem is audible: louder than the whole)."""
        x = as_stereo(audio, "stem")
        n = x.shape[0]
        padded = np.zeros((n + 2 * STEP_PAD, 2), dtype=np.float32)
        padded[STEP_PAD:STEP_PAD + n] = x
        effects = []
        for i, step in enumerate(self.steps):
            if dsp.db(dsp.peak(padded)) > self.min_db:
                if getattr(step, "padded", True):
                    effects.append(step.fit(padded))
                    padded = effects[-1](padded)
                else:
                    centre = padded[STEP_PAD:STEP_PAD + n]
                    effects.append(step.fit(centre, lufs) if i == 0 and lufs is not None else step.fit(centre))
                    padded[STEP_PAD:STEP_PAD + n] = effects[-1](centre)
                # crop back and re-pad, in place: whatever a step left in the padding is dropped
                padded[:STEP_PAD] = 0.0
                padded[STEP_PAD + n:] = 0.0
            if on_step is not None:
                on_step(step.name)
        return ChainOf(effects), padded[STEP_PAD:STEP_PAD + n]

    def __call__(self, audio: np.ndarray, on_step: Callable[[str], None] | None = None) -> np.ndarray:
        return self.fit(audio, on_step=on_step)[1]


def stem_seed(seed: int, stem: str, audio: np.ndarray) -> np.random.SeedSequence:
    """Seed for a stem's random steps (the Haas effect): derived from the caller's seed, the stem
    name and a CRC of the float32 samples, so the same input always gets the same effect while
    different songs still get different ones (as the unseeded original intended for training data)."""
    content = zlib.crc32(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return np.random.SeedSequence([int(seed), zlib.crc32(stem.encode()), content])


def build_normalizer(stem: str, stats: FxStats, order: str = "mst_inference",
                     rng: np.random.Generator | None = None) -> StemNormalizer:
    """The chain of `order` for one stem, with its targets from `stats`."""
    if order not in ORDERS:
        raise ConfigError(f"fxnorm order: {order!r} is not one of {sorted(ORDERS)}")
    flavour = ORDER_FLAVOUR[order]
    if stem not in stats.stems:
        raise StemLayoutError(f"stem {stem!r}: no FX-normalization statistics for it "
                              f"(statistics have {sorted(stats.stems)})")
    target = stats.stems[stem]
    min_db = MIN_DB[flavour]
    steps: list[Step] = []
    for name in ORDERS[order]:
        if name == "loudness":
            steps.append(LoudnessMatch(target.loudness))
        elif name == "eq":
            steps.append(EqMatch(target.eq, min_db))
        elif name == "compression":
            steps.append(CompressionMatch(target.compression[0], target.compression[1], COMP_SETTINGS[stem], min_db))
        elif name == "imager":
            if target.imager is None:
                raise ConfigError(f"fxnorm order {order!r} needs imager statistics, but {stats.source} has "
                                  f"{stats.flavour!r} statistics (panning); use order 'fxnorm'")
            steps.append(ImagerMatch(target.imager, HAAS_MONO_THRESHOLD.get(stem, HAAS_DEFAULT_MONO_THRESHOLD),
                                     rng if rng is not None else np.random.default_rng(0)))
        elif name == "panning":
            if target.panning is None:
                raise ConfigError(f"fxnorm order {order!r} needs panning statistics, but {stats.source} has "
                                  f"{stats.flavour!r} statistics (imager); use an 'mst_*' order")
            steps.append(PanningMatch(target.panning, PAN_MAX_FREQ_HZ.get(stem, PAN_DEFAULT_MAX_FREQ_HZ)))
    return StemNormalizer(steps, min_db)


def fit_normalizer(stem: str, audio: np.ndarray, stats: FxStats, order: str = "mst_inference", seed: int = 0,
                   lufs: float | None = None) -> tuple[ChainOf, np.ndarray]:
    """(the stem's normalization fitted on `audio`, audio through it): StemNormalizer.fit of the
    chain normalize_stems builds, seeded as it seeds. For the mst orders every effect streams with a
    bounded look-ahead (the EQ kernel's half, the Haas copy's 40 ms); the panning step of "fxnorm"
    holds its whole signal."""
    x = as_stereo(audio, f"stem {stem!r}")
    normalizer = build_normalizer(stem, stats, order, np.random.default_rng(stem_seed(seed, stem, x)))
    return normalizer.fit(x, lufs)


def normalize_stems(stems: dict[str, np.ndarray], stats: FxStats, order: str = "mst_inference",
                    seed: int = 0, progress: Progress = no_progress) -> dict[str, np.ndarray]:
    """FX-normalize separated stems (keys among drums/bass/other/vocals; (n,), (n, 1) or (n, 2)
    float audio at 44.1 kHz, any lengths) with `stats` in one of the orders of ORDERS:
    "mst_inference" (loudness → eq → compression → imager → loudness), "mst_training" (eq →
    compression → imager → loudness) or "fxnorm" (eq → compression → panning → loudness).
    Returns float32 (n, 2) stems; the loudness step may leave peaks above 1 (see LoudnessMatch).

    Deterministic: the Haas randomness is seeded from `seed`, the stem name and its content.
    Stems run in parallel threads (one per CPU, the heavy parts release the GIL); results do not
    depend on the thread count. progress(stage, fraction) is called after every step (stage like
    "drums: eq", fraction = steps done / all steps), from worker threads but never concurrently."""
    if order not in ORDERS:
        raise ConfigError(f"fxnorm order: {order!r} is not one of {sorted(ORDERS)}")
    for name in stems:
        if name not in STEM_NAMES:
            raise StemLayoutError(f"stem {name!r}: FX normalization knows only {', '.join(STEM_NAMES)}")
    inputs = {name: as_stereo(audio, f"stem {name!r}") for name, audio in stems.items()}
    for name, x in inputs.items():
        if not np.isfinite(x).all():
            raise StemLayoutError(f"stem {name!r}: contains NaN or infinite samples")
    normalizers = {name: build_normalizer(name, stats, order, np.random.default_rng(stem_seed(seed, name, audio)))
                   for name, audio in inputs.items()}
    total = sum(len(n.steps) for n in normalizers.values())
    done = 0
    lock = threading.Lock()

    def report(stem: str):
        def on_step(step: str) -> None:
            nonlocal done
            with lock:
                done += 1
                progress(f"{stem}: {step}", done / total)
        return on_step

    def run(name: str) -> np.ndarray:
        return normalizers[name](inputs[name], report(name))

    workers = max(1, min(len(inputs), defaults.job_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(inputs, pool.map(run, inputs)))
    return results
