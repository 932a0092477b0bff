"""Inference-time refinement of the reference embedding (after ITO-Master, ISMIR 2025): a few
gradient steps on the embedding the MixFXcloner is conditioned on, so that the converted stem's
measured style moves toward the reference stem's.

The encoder sees a reference through a 128-d summary trained on one family of effects; on other
material its embedding can send the cloner the wrong way. The cloner itself can do more than the
encoder asks of it. Refinement asks it directly: it converts an excerpt of the input, measures the
result with differentiable versions of the match engine's measures (fx/matching.py) — the spectral
shape, the width per band and the level distribution over 46-ms frames, each relative to the
signal's own loudness — and moves the embedding down the gradient of the distance to the reference's
measures. The level itself is left out: the engine sets each stem's loudness after the network.

The best embedding seen is returned (the starting one included), so refinement never leaves the
excerpt further from the reference than the encoder's embedding did.
"""
from __future__ import annotations

import numpy as np
import torch

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.nets.mst import MixFXcloner

N_FFT = 2048
HOP = 1024
BANDS = 24                      # log-spaced spectral-shape bands, 40 Hz – 16 kHz
WIDTH_EDGES_HZ = (40.0, 250.0, 2000.0, 16000.0)   # the width is compared in these three bands
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)       # of the frame levels, relative to the mean power
EPS = 1e-8
LEARNING_RATE = 0.05


def _band_matrix(edges_hz: np.ndarray, sample_rate: int = WORKING_RATE) -> torch.Tensor:
    """[bands, N_FFT // 2 + 1] 0/1 weights that sum the power of each band's bins."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    rows = [(freqs >= lo) & (freqs < hi) for lo, hi in zip(edges_hz[:-1], edges_hz[1:])]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


_SHAPE_BANDS = _band_matrix(np.geomspace(40.0, 16000.0, BANDS + 1))
_WIDTH_BANDS = _band_matrix(np.asarray(WIDTH_EDGES_HZ))


def _db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(power + EPS)


def style_measures(audio: torch.Tensor) -> torch.Tensor:
    """Differentiable style measures of a stereo signal [2, T] as one vector in dB: spectral shape
    (band power of mid + side relative to its mean over bands), width (side over mid power in three
    bands) and frame-level quantiles relative to the mean frame power."""
    window = torch.hann_window(N_FFT, device=audio.device)
    spectra = torch.stft(audio, N_FFT, HOP, window=window, return_complex=True)  # [2, F, frames]
    left, right = spectra[0], spectra[1]
    mid = (left.abs() ** 2 + right.abs() ** 2 + 2 * (left * right.conj()).real) / 4
    side = (left.abs() ** 2 + right.abs() ** 2 - 2 * (left * right.conj()).real) / 4
    total = mid + side                                                         # [F, frames]
    long_term = _db(_SHAPE_BANDS @ total.mean(dim=1))
    shape = long_term - long_term.mean()
    width = _db(_WIDTH_BANDS @ side.mean(dim=1)) - _db(_WIDTH_BANDS @ mid.mean(dim=1))
    frame_db = _db(total.sum(dim=0))
    levels = torch.quantile(frame_db, torch.tensor(QUANTILES, device=audio.device)) - _db(total.sum(dim=0).mean())
    return torch.cat([shape, width, levels])


def _weights() -> torch.Tensor:
    """Each family of measures weighs as much as the others in the distance."""
    sizes = (BANDS, len(WIDTH_EDGES_HZ) - 1, len(QUANTILES))
    return torch.cat([torch.full((n,), 1.0 / n) for n in sizes])


def style_distance(measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weighted mean absolute difference in dB (families weighted equally)."""
    return (_weights() * (measured - target).abs()).sum() / 3.0


def refine_embedding(cloner: MixFXcloner, x: np.ndarray, reference: np.ndarray, embedding: np.ndarray,
                     steps: int, learning_rate: float = LEARNING_RATE) -> tuple[np.ndarray, list[float]]:
    """(the refined embedding [D], the style distance in dB before each step and after the last).

    x: the network's input excerpt (n, 2) float32 (FX-normalized, as the cloner sees it);
    reference: the reference stem's excerpt (m, 2). The cloner (in eval mode, as the model store
    loads it) is only read: the gradient is taken with respect to the embedding alone, so no state
    of the shared module changes and other conversions may use it meanwhile."""
    if cloner.training:
        raise ValueError("refine_embedding needs the cloner in eval mode (BatchNorm would learn from the excerpt)")
    target = style_measures(torch.from_numpy(np.ascontiguousarray(reference.T, dtype=np.float32)))
    audio = torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float32))[None]
    e = torch.tensor(np.asarray(embedding, np.float32)[None], requires_grad=True)
    optimizer = torch.optim.Adam([e], lr=learning_rate)
    distances, best, best_distance = [], e.detach().clone(), float("inf")
    for step in range(steps + 1):
        distance = style_distance(style_measures(cloner(audio, e)[0]), target)
        distances.append(float(distance.detach()))
        if distances[-1] < best_distance:
            best, best_distance = e.detach().clone(), distances[-1]
        if step == steps:
            break
        e.grad, = torch.autograd.grad(distance, e)
        optimizer.step()
    return best[0].numpy(), distances
