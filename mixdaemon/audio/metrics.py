"""Objective metrics: how close a mix is to a target or a reference.

- L_MSS, the MST multi-scale spectral loss on L/R and on mid/side (docs/ALGORITHMS.md §4.3). It is also the
  MixFXcloner training loss, so it is written in torch, batched over [B, 2, T] and differentiable.
- The FxNorm-automix feature distances (§6.5): loudness, spectral, panning and dynamic groups,
  following FxNorm's evaluate.py (not the MST repo's copy, which differs).
- The embedding distance of Table 2 (§7): cosine distance between FXencoder embeddings, λ = 1.

The loudness and true-peak meters are audio.dsp.integrated_loudness (which the loudness distance
here uses) and audio.mastering.true_peak_dbtp (the limiter's own).

Numpy functions take (n_samples, 2) audio at 44.1 kHz (docs/ALGORITHMS.md conventions) and compute in
float64.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import signal

from mixdaemon.audio.dsp import (
    WORKING_RATE,
    db,
    frame_signal,
    integrated_loudness,
    peak,
    stft_np,
    to_mid_side,
)
from mixdaemon.errors import MixdaemonError

# --- L_MSS (§4.3) -----------------------------------------------------------------------------------

MSS_FFT_SIZES = (4096, 2048, 1024, 512)  # hop = n_fft / 4 at every scale
MSS_EPS = 1e-7  # inside the magnitude's square root and inside the log
MSS_LOG_WEIGHT = 0.1  # L_MSS = 0.9·ΣL1 + 0.1·ΣLOG


def _check_loss_inputs(estimate: torch.Tensor, target: torch.Tensor) -> None:
    if estimate.dim() != 3 or estimate.shape[1] != 2 or estimate.shape != target.shape:
        raise ValueError(f"L_MSS: estimate {tuple(estimate.shape)} and target {tuple(target.shape)} "
                         "must both be [B, 2, T] with the same shape")
    # Centred STFT reflect-pads n_fft/2 samples, which needs a longer signal than that.
    if estimate.shape[-1] <= MSS_FFT_SIZES[0] // 2:
        raise ValueError(f"L_MSS: T = {estimate.shape[-1]} samples is too short; needs more than "
                         f"{MSS_FFT_SIZES[0] // 2}")


def _mss_magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """[N, T] → [N, n_fft/2, frames]: centred STFT magnitude without the DC bin."""
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    # The epsilon keeps the gradient of the square root finite where the spectrum is exactly zero.
    magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + MSS_EPS)[:, 1:, :]
    if x.shape[-1] % hop == 0:
        # Then the last centred frame sits one sample past the end of the signal; MST drops it.
        magnitude = magnitude[..., :-1]
    return magnitude


def _multi_scale_spectral(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_MSS averaged over every element of [B, C, T] inputs: batch, channels, bins and frames."""
    length = estimate.shape[-1]
    # Separate STFTs (not one over both): autograd then does no backward work for a target that
    # needs no gradient.
    estimate, target = estimate.reshape(-1, length), target.reshape(-1, length)
    l1_sum = estimate.new_zeros(())
    log_sum = estimate.new_zeros(())
    for n_fft in MSS_FFT_SIZES:
        est_mag, tgt_mag = _mss_magnitude(estimate, n_fft), _mss_magnitude(target, n_fft)
        l1_sum = l1_sum + (est_mag - tgt_mag).abs().mean()
        log_sum = log_sum + (torch.log10(est_mag + MSS_EPS) - torch.log10(tgt_mag + MSS_EPS)).square().mean()
    return (1.0 - MSS_LOG_WEIGHT) * l1_sum + MSS_LOG_WEIGHT * log_sum


def mss_loss_lr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_MSS on the left/right channels of [B, 2, T] tensors; a scalar, mean over the batch."""
    _check_loss_inputs(estimate, target)
    return _multi_scale_spectral(estimate, target)


def mss_loss_ms(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_MSS on mid (L+R) and side (L−R), weighted 0.5 each; a scalar, mean over the batch.

    The M and S spectrograms have the same size, so 0.5·mean(M terms) + 0.5·mean(S terms) equals the
    mean over the stacked [M, S] pair: the L/R code serves both."""
    _check_loss_inputs(estimate, target)
    return _multi_scale_spectral(torch.stack(to_mid_side(estimate), dim=1),
                                 torch.stack(to_mid_side(target), dim=1))


def mss_distance(y: np.ndarray, gt: np.ndarray, mode: str = "lr") -> float:
    """L_MSS(y, gt) of two (n, 2) signals, as in Table 2 (mode "lr" or "ms")."""
    losses = {"lr": mss_loss_lr, "ms": mss_loss_ms}
    if mode not in losses:
        raise ValueError(f"mss_distance: mode {mode!r} is not 'lr' or 'ms'")
    y_t = torch.from_numpy(np.ascontiguousarray(np.asarray(y, dtype=np.float32).T))[None]
    gt_t = torch.from_numpy(np.ascontiguousarray(np.asarray(gt, dtype=np.float32).T))[None]
    with torch.no_grad():
        return float(losses[mode](y_t, gt_t))


# --- FxNorm-automix feature distances (§6.5) --------------------------------------------------------

FXNORM_RUNNING_FRAMES = 40  # RM: moving average over 40 frames, "valid" mode
FXNORM_PEAK_DBFS = -1.0  # every group except loudness compares peak-normalized signals
SPECTRAL_FFT, SPECTRAL_HOP = 4096, 1024  # spectral and dynamic features
PANNING_FFT, PANNING_HOP = 2048, 1024
PANNING_BANDS_HZ = {"total": (0.0, None), "low": (0.0, 250.0), "mid": (250.0, 2500.0), "high": (2500.0, None)}
CONTRAST_FMIN, CONTRAST_BANDS, CONTRAST_QUANTILE = 250.0, 4, 0.02
ROLLOFF_FRACTION = 0.85
LOW_RATIO_CUTOFF_HZ = 1000.0
BLOCK_FRAMES = 256  # frames per STFT block: bounds memory on whole songs


def _mape(target: np.ndarray, output: np.ndarray) -> float:
    """Mean absolute percentage error as scikit-learn defines it (a fraction, denominator floored at
    machine epsilon)."""
    return float(np.mean(np.abs(target - output) / np.maximum(np.abs(target), np.finfo(np.float64).eps)))


def _running_mean(x: np.ndarray) -> np.ndarray:
    """RM: moving average of N = 40 frames along axis 0, valid part only."""
    return np.lib.stride_tricks.sliding_window_view(x, FXNORM_RUNNING_FRAMES, axis=0).mean(axis=-1)


def _rm_mape(target: np.ndarray, output: np.ndarray) -> float:
    return _mape(_running_mean(target), _running_mean(output))


def _rm_mape_per_channel(target: np.ndarray, output: np.ndarray) -> float:
    """RM + MAPE of (frames, channels) curves channel by channel, then the mean over channels."""
    return float(np.mean([_rm_mape(target[:, ch], output[:, ch]) for ch in range(target.shape[1])]))


def _frame_count(n_samples: int, n_fft: int, hop: int) -> int:
    return max(0, 1 + (n_samples - n_fft) // hop)


def _chunks(x: np.ndarray, n_fft: int, hop: int) -> Iterator[np.ndarray]:
    """Consecutive pieces of x holding BLOCK_FRAMES analysis frames each (the last may hold fewer);
    framing every piece gives exactly the frames of the whole signal."""
    n_frames = _frame_count(x.shape[0], n_fft, hop)
    for first in range(0, n_frames, BLOCK_FRAMES):
        last = min(n_frames, first + BLOCK_FRAMES) - 1
        yield x[first * hop:last * hop + n_fft]


def _peak_normalize(x: np.ndarray) -> np.ndarray:
    level = peak(x)
    return x * (10.0 ** (FXNORM_PEAK_DBFS / 20.0) / level) if level > 0 else x


def _contrast_bands(sr: int, n_fft: int) -> list[tuple[int, int, int]]:
    """(first bin, stop bin, bins per quantile) of each spectral-contrast band, librosa's layout:
    octave bands from CONTRAST_FMIN with a 0 Hz..fmin band below; each band but the first also takes
    the bin just below it; each but the last drops its top bin from the sort; the last runs to
    Nyquist."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = np.concatenate([[0.0], CONTRAST_FMIN * 2.0 ** np.arange(CONTRAST_BANDS + 1)])
    bands = []
    for k in range(CONTRAST_BANDS + 1):
        inside = np.flatnonzero((freqs >= edges[k]) & (freqs <= edges[k + 1]))
        first = inside[0] - 1 if k > 0 else inside[0]
        if k < CONTRAST_BANDS:
            stop, counted = inside[-1], inside[-1] - first + 1
        else:
            stop, counted = len(freqs), len(freqs) - first
        bands.append((int(first), int(stop), max(1, int(np.rint(CONTRAST_QUANTILE * counted)))))
    return bands


def _power_to_db_clipped(power: np.ndarray) -> np.ndarray:
    """librosa's power_to_db (amin 1e-10, top_db 80) over (frames, channels, bands); the 80 dB floor
    is relative to the maximum over all frames and bands of each channel, as in one librosa call per
    channel."""
    level = 10.0 * np.log10(np.maximum(power, 1e-10))
    return np.maximum(level, level.max(axis=(0, 2), keepdims=True) - 80.0)


def _spectral_dynamic_frames(x: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """Per-frame spectral and dynamic features (4096 / 1024) of a peak-normalized (n, 2) signal.

    Spectral features are (frames, channels), on |STFT| magnitudes as FxNorm passes them to librosa:
    centroid, bandwidth (p = 2), roll-off (85 %), flatness (power 2, amin 1e-10), contrast peaks and
    valleys per band. Dynamic features are averaged over channels, (frames,)."""
    freqs = np.arange(SPECTRAL_FFT // 2 + 1) * sr / SPECTRAL_FFT
    bands = _contrast_bands(sr, SPECTRAL_FFT)
    b, a = signal.butter(4, LOW_RATIO_CUTOFF_HZ / (sr / 2), "lowpass")
    x_low = signal.filtfilt(b, a, x, axis=0)

    parts: dict[str, list[np.ndarray]] = {}
    for piece, piece_low in zip(_chunks(x, SPECTRAL_FFT, SPECTRAL_HOP), _chunks(x_low, SPECTRAL_FFT, SPECTRAL_HOP)):
        mag = np.abs(stft_np(piece, SPECTRAL_FFT, SPECTRAL_HOP))  # (frames, channels, bins)
        total = mag.sum(axis=-1, keepdims=True)
        # librosa leaves all-zero frames unnormalised, so their centroid and bandwidth are 0.
        weights = mag / np.where(total > 0, total, 1.0)
        centroid = weights @ freqs
        bandwidth = np.sqrt(np.sum(weights * (freqs - centroid[..., None]) ** 2, axis=-1))
        cumulative = np.cumsum(mag, axis=-1)
        rolloff = freqs[np.argmax(cumulative >= ROLLOFF_FRACTION * cumulative[..., -1:], axis=-1)]
        power = np.maximum(mag ** 2, 1e-10)
        flatness = np.exp(np.mean(np.log(power), axis=-1)) / np.mean(power, axis=-1)
        contrast_peak, contrast_valley = [], []
        for first, stop, count in bands:
            ordered = np.sort(mag[..., first:stop], axis=-1)
            contrast_valley.append(ordered[..., :count].mean(axis=-1))
            contrast_peak.append(ordered[..., -count:].mean(axis=-1))
        low_mag = np.abs(stft_np(piece_low, SPECTRAL_FFT, SPECTRAL_HOP))
        low_ratio = np.sum(low_mag / (mag + 1e-5), axis=-1).mean(axis=-1)

        frames = frame_signal(piece, SPECTRAL_FFT, SPECTRAL_HOP)  # (frames, channels, samples)
        rms_db = db(np.sqrt(np.sum(frames ** 2, axis=-1) / SPECTRAL_FFT))
        spread = np.sum(db(frames) - rms_db[..., None], axis=-1) / SPECTRAL_FFT
        crest = db(np.max(np.abs(frames), axis=-1)) / rms_db  # a ratio of dB values, as in FxNorm

        for name, value in (("centroid", centroid), ("bandwidth", bandwidth), ("rolloff", rolloff),
                            ("flatness", flatness), ("contrast_peak", np.stack(contrast_peak, axis=-1)),
                            ("contrast_valley", np.stack(contrast_valley, axis=-1)),
                            ("low_ratio", low_ratio), ("rms_db", rms_db.mean(axis=-1)),
                            ("spread", spread.mean(axis=-1)), ("crest", crest.mean(axis=-1))):
            parts.setdefault(name, []).append(value)
    features = {name: np.concatenate(values) for name, values in parts.items()}
    features["contrast"] = (_power_to_db_clipped(features.pop("contrast_peak"))
                            - _power_to_db_clipped(features.pop("contrast_valley")))
    return features


def _panning_frames(x: np.ndarray, sr: int) -> np.ndarray:
    """(frames, 4): per-frame RMS over frequency of the stereo panning spectrum in the total, low,
    mid and high bands (2048 / 1024)."""
    band_bins = [(int(np.floor(lo * PANNING_FFT / sr)), int(np.floor((hi or sr // 2) * PANNING_FFT / sr)))
                 for lo, hi in PANNING_BANDS_HZ.values()]
    rms = []
    for piece in _chunks(x, PANNING_FFT, PANNING_HOP):
        spec = stft_np(piece, PANNING_FFT, PANNING_HOP) + 1e-20  # FxNorm's offset: silent bins → φ = 1
        left, right = np.abs(spec[:, 0]), np.abs(spec[:, 1])
        similarity = 2.0 * left * right / (left ** 2 + right ** 2)
        # sign(|R|/|L| − |L|/|R|) = sign(|R|² − |L|²): positive when the bin leans right.
        sps = (1.0 - similarity) * np.sign(right ** 2 - left ** 2)
        rms.append(np.stack([np.sqrt(np.mean(sps[:, lo:hi] ** 2, axis=-1)) for lo, hi in band_bins], axis=-1))
    return np.concatenate(rms)


def _check_fxnorm_inputs(output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    output = np.asarray(output, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    for name, x in (("output", output), ("target", target)):
        if x.ndim != 2 or x.shape[1] != 2:
            raise MixdaemonError(f"FxNorm metrics: {name} has shape {x.shape}; expected (n_samples, 2)")
    if output.shape != target.shape:
        raise MixdaemonError(f"FxNorm metrics: output {output.shape} and target {target.shape} differ in "
                             "length; trim them to the same span first")
    needed = SPECTRAL_FFT + (FXNORM_RUNNING_FRAMES - 1) * SPECTRAL_HOP
    if target.shape[0] < needed:
        raise MixdaemonError(f"FxNorm metrics: target has {target.shape[0]} samples; the 40-frame moving "
                             f"average needs at least {needed}")
    if peak(target) == 0:
        raise MixdaemonError("FxNorm metrics: target is silent; its features are the reference of every "
                             "distance, so none is defined")
    return output, target


def fxnorm_feature_distances(output: np.ndarray, target: np.ndarray, sr: int = WORKING_RATE) -> dict[str, float]:
    """FxNorm-automix's objective metrics (docs/ALGORITHMS.md §6.5): distances of `output` from `target`,
    both (n, 2) at `sr`, same length, at least 44 032 samples (40 frames of 4096 / 1024).

    Each distance is a MAPE (a fraction: 0.1 = 10 %) between the target's and the output's feature
    curves, smoothed by a 40-frame moving average. Keys:
      loudness: d_lufs, d_peak (on the signals as given) and their mean 'loudness';
      spectral: centroid, bandwidth, rolloff, flatness, contrast_low / _mid / _high and their mean
        'contrast'; group mean 'spectral' = mean(centroid, bandwidth, contrast, rolloff, flatness);
      panning: panning_total / _low / _mid / _high, group mean 'panning';
      dynamic: rms, spread, crest, group mean 'dynamic'; also low_ratio (MAPE) and low_ratio_mse,
        which FxNorm reports but leaves out of the group mean.
    Everything except loudness is computed after peak normalization of each signal to -1 dBFS, so a
    pure gain change moves only the loudness terms.

    Edge cases: a silent output gives d_lufs = inf (its loudness is -inf), a target entirely below
    the -70 LUFS gate gives NaN; a silent target is refused. Frames in which the target's panning RMS is 0
    are dropped (as FxNorm does); if fewer than 40 frames remain (an exactly centred target) the
    panning terms are NaN. The panning terms measure how far each bin leans, not to which side: a
    mirror image of the target scores 0."""
    output, target = _check_fxnorm_inputs(output, target)
    distances: dict[str, float] = {}

    with np.errstate(invalid="ignore"):  # -inf loudness (below the -70 LUFS gate): inf or NaN, as documented
        distances["d_lufs"] = _mape(np.array([integrated_loudness(target, sr)]),
                                    np.array([integrated_loudness(output, sr)]))
    distances["d_peak"] = _mape(np.array([db(peak(target))]), np.array([db(peak(output))]))
    distances["loudness"] = float(np.mean([distances["d_lufs"], distances["d_peak"]]))

    output, target = _peak_normalize(output), _peak_normalize(target)
    out_f, tar_f = _spectral_dynamic_frames(output, sr), _spectral_dynamic_frames(target, sr)

    for name in ("centroid", "bandwidth", "rolloff"):
        # FxNorm adds 1.0 so that a 0 Hz feature (silent frame) does not divide by zero.
        distances[name] = _rm_mape_per_channel(tar_f[name] + 1.0, out_f[name] + 1.0)
    # Flatness in dB is ≤ 0; −x + 1 maps it to ≥ 1 so that MAPE stays defined.
    distances["flatness"] = _rm_mape_per_channel(1.0 - db(tar_f["flatness"]), 1.0 - db(out_f["flatness"]))
    contrast_t, contrast_o = tar_f["contrast"], out_f["contrast"]
    distances["contrast_low"] = _rm_mape_per_channel(contrast_t[..., 0], contrast_o[..., 0])
    distances["contrast_mid"] = _rm_mape_per_channel(contrast_t[..., 1:4].mean(axis=-1),
                                                     contrast_o[..., 1:4].mean(axis=-1))
    distances["contrast_high"] = _rm_mape_per_channel(contrast_t[..., -1], contrast_o[..., -1])
    distances["contrast"] = float(np.mean([distances[k] for k in ("contrast_low", "contrast_mid", "contrast_high")]))
    distances["spectral"] = float(np.mean([distances[k] for k in
                                           ("centroid", "bandwidth", "contrast", "rolloff", "flatness")]))

    pan_t, pan_o = _panning_frames(target, sr), _panning_frames(output, sr)
    kept = pan_t[:, 0] != 0.0
    pan_t, pan_o = pan_t[kept], pan_o[kept]
    for column, band in enumerate(PANNING_BANDS_HZ):
        distances[f"panning_{band}"] = (_rm_mape(pan_t[:, column], pan_o[:, column])
                                        if len(pan_t) >= FXNORM_RUNNING_FRAMES else float("nan"))
    distances["panning"] = float(np.mean([distances[f"panning_{band}"] for band in PANNING_BANDS_HZ]))

    # rms_dB and spread are ≤ 0 dB after peak normalization; −x + 1 keeps MAPE's denominator ≥ 1.
    distances["rms"] = _rm_mape(1.0 - tar_f["rms_db"], 1.0 - out_f["rms_db"])
    distances["spread"] = _rm_mape(1.0 - tar_f["spread"], 1.0 - out_f["spread"])
    distances["crest"] = _rm_mape(tar_f["crest"], out_f["crest"])
    distances["dynamic"] = float(np.mean([distances["rms"], distances["spread"], distances["crest"]]))
    low_t, low_o = _running_mean(tar_f["low_ratio"]), _running_mean(out_f["low_ratio"])
    distances["low_ratio"] = _mape(low_t, low_o)
    distances["low_ratio_mse"] = float(np.mean((low_t - low_o) ** 2))
    return distances


# --- embedding distance (§7, Table 2) ---------------------------------------------------------------

def embedding_distance(a, b, scale: float = 1.0) -> float:
    """λ·(1 − cos(a, b)) between two embeddings (numpy or torch, any shape, flattened): Table 2's
    y–ref / y–gt column with the recommended cosine distance and λ = 1. 0 for parallel vectors, 1
    for orthogonal ones, 2 for opposite ones; norms are floored at 1e-8 as torch's cosine similarity
    does, so an all-zero embedding sits at distance λ from everything."""
    vectors = []
    for v in (a, b):
        v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        vectors.append(v.astype(np.float64).ravel())
    a64, b64 = vectors
    if a64.shape != b64.shape:
        raise ValueError(f"embedding_distance: embeddings of {a64.size} and {b64.size} values")
    cosine = a64 @ b64 / (max(np.linalg.norm(a64), 1e-8) * max(np.linalg.norm(b64), 1e-8))
    return float(scale * (1.0 - cosine))
