"""What the MixFXcloner computes in on the CPU (`--precision`), the error that costs, and what "auto" picks.

- ``fp32``: float32 throughout, the backends as they are (ONNX Runtime's graphs, or torch).
- ``bf16``: the cloner's dilated convolutions take bfloat16 operands (their weights with BatchNorm
  folded in, rounded once; each block's input, rounded per call) and accumulate in float32, as
  oneDNN's bf16 convolutions do; their outputs come back as bf16 and are widened again, so that
  LeakyReLU, FiLM, the residual path, the output layer and the stream's states stay float32.
  Rounding those to bf16 as well (the whole model in bf16) costs 4–6 dB more SNR. It runs in torch
  (ONNX Runtime has no bf16 CPU kernels), on whole windows and as a stream alike, and only on a CPU
  with native bf16 arithmetic (AVX-512 BF16 or AMX, as oneDNN reports it): elsewhere torch emulates
  bf16 convolutions, 250× slower than float32 (a 1-s, width-128 convolution: 84.6 s against 0.34 s
  on an AVX2 AMD EPYC), so asking for bf16 there is refused.

The FXencoder stays fp32 at every precision: it runs once per reference segment, a few percent of a
job's network time (0.03 s per audio second beside the cloner's 1.1, docs/BENCHMARKS.md), so a
lower precision would save little and move every style embedding.

int8 is not offered: ONNX Runtime's static quantization of the cloner (QDQ or QOperator,
per-channel weights, calibrated on real stems) gave 7–11 dB SNR against fp32 and 1.2× the speed on
an AVX2 CPU; even ideal int8 (per-tensor activation ranges from real stems, per-channel weights,
everything else float32, emulated) gives 17–20 dB. Audio activations span too many decibels for 8
bits in each of 14 blocks.

Error against fp32 on real stems: ``BF16_SNR_DB``; benchmarks/bench_precision.py measures it and the
speed (docs/BENCHMARKS.md "Lower-precision CPU inference").
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from mixdaemon import defaults
from mixdaemon.errors import ConfigError, EngineUnavailable
from mixdaemon.nets.mst import MixFXcloner
from mixdaemon.nets.onnx_export import ClonerGraph, ClonerStream

log = logging.getLogger(__name__)

PRECISIONS = tuple(p for p in defaults.INFERENCE_PRECISIONS if p != "auto")  # what the cloner computes in
# SNR of the bf16 cloner against fp32 (dB, lowest and highest over song_a's four stems and five
# random full-size nets, bench_precision.py --snr-seeds); the shipped default pair's: 39.6–59.5
BF16_SNR_DB = (35.0, 61.9)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN, torch's CPU convolution library, finds bf16 arithmetic in this CPU."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and supported is not None and supported())


def resolve_precision(requested: str, device: str = "cpu") -> str:
    """The precision ("fp32" or "bf16") the cloner computes in for `requested` (one of
    defaults.INFERENCE_PRECISIONS) on a torch `device` ("cpu" or "cuda"), logged with the reason.

    "auto" keeps fp32 everywhere, by measurement (bench_precision.py, docs/BENCHMARKS.md):
    - without native bf16 (the AVX2 CPU measured), bf16 convolutions are 250× slower than fp32 at
      the full size, and the shipped default pair (width 24) converts 26× slower in bf16 (0.635
      against 0.024 s per audio second); int8 is not offered (module docstring);
    - with native bf16, bf16's error (BF16_SNR_DB: 35.0–61.9 dB, by net and stem; the shipped
      default 39.6–59.5) does not clear 40 dB on every stem, and its speed there is not measured
      yet; eager torch fp32 runs the full-size cloner 1.5–1.8× slower than ONNX Runtime fp32, so bf16
      has to give torch's convolutions that much more throughput just to break even.
    `--precision bf16` asks for it regardless; on a CPU it needs native bf16 (EngineUnavailable otherwise)."""
    if requested not in defaults.INFERENCE_PRECISIONS:
        raise ConfigError(f"precision {requested!r}: expected one of {', '.join(defaults.INFERENCE_PRECISIONS)}")
    if requested == "auto":
        why = ("lower precisions are measured on CPUs only" if device != "cpu"
               else "this CPU has native bf16, but bf16 is not measured to win here" if cpu_has_native_bf16()
               else "this CPU has no native bf16")
        log.info("precision auto → fp32 (%s; docs/BENCHMARKS.md)", why)
        return "fp32"
    if requested == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        raise EngineUnavailable("precision 'bf16' is not available: this CPU has no native bf16 arithmetic "
                                "(AVX-512 BF16 or AMX), and emulated bf16 convolutions run 250× slower than fp32")
    if requested == "bf16":
        log.info("precision bf16: the cloner's convolutions in bf16, %.1f–%.1f dB SNR against fp32 on real stems",
                 *BF16_SNR_DB)
    return requested


class Bf16Convolution(nn.Module):
    """One graph block (onnx_export._ConvBlock, the same function) with its dilated convolution in
    bf16: bf16 operands, float32 accumulation, the bf16 result widened to float32 for the rest."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.register_buffer("weight", block.weight.to(torch.bfloat16))
        self.register_buffer("bias", block.bias.to(torch.bfloat16))

    @property
    def half(self) -> int:
        return self.block.half  # ClonerStream sizes its states by it

    def convolve(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        return nn.functional.conv1d(x.to(torch.bfloat16), self.weight, self.bias, padding=padding,
                                    dilation=self.block.dilation).float()

    def forward(self, x: torch.Tensor, cond: torch.Tensor, valid: bool = False) -> torch.Tensor:
        half = self.block.half
        h = nn.functional.leaky_relu(self.convolve(x, 0 if valid else half), 0.01, inplace=True)
        centre = x[..., half:x.shape[-1] - half] if valid else x
        return self.block.film(h, cond) + self.block.res(centre)


def bf16_cloner(cloner: MixFXcloner) -> tuple[ClonerGraph, ClonerStream]:
    """(whole-window module, stream module) of `cloner` with bf16 convolutions, in eval mode: the
    nn.Modules that TorchBackend calls for convert and stream (float32 in and out)."""
    modules = []
    for module in (ClonerGraph(cloner, torch.float32), ClonerStream(cloner, torch.float32)):
        module.blocks = nn.ModuleList(Bf16Convolution(block) for block in module.blocks)
        modules.append(module.eval())
    return modules[0], modules[1]


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """10·log10(‖reference‖² / ‖reference − other‖²), in float64."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    noise = np.sum(np.square(reference - other))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(np.square(reference)) / noise))
