"""What the MixFXcloner computes in on the CPU (`--precision`), the error that costs, and what "auto" picks.

- ``fp32``: float32 throughout, the backends as they are (ONNX Runtime's graphs, or torch).
- ``bf16``: the cloner's dilated convolutions take bfloat16 operands (their weights with BatchNorm
  folded in, rounded once; each block's input, rounded per call) and accumulate in float32, as
  oneDNN's bf16 convolutions do; their outputs come back as bf16 and are widened again, so that
  LeakyReLU, FiLM, the residual path, the output layer and the stream's states stay float32.
  Rounding those to bf16 as well (the whole model in bf16) costs 4–6 dB more SNR; of the three
  roundings kept (weights, inputs, outputs) none dominates: removing any one gains 1–2 dB. It runs
  in torch (ONNX Runtime has no bf16 CPU kernels) on time-major activations (Bf16Block), on whole
  windows and as a stream alike, and only on a CPU with native bf16 arithmetic (AVX-512 BF16 or
  AMX, as oneDNN reports it): elsewhere torch emulates bf16 convolutions, 250× slower than float32
  (a 1-s, width-128 convolution: 84.6 s against 0.34 s on an AVX2 AMD EPYC), so asking for bf16
  there is refused.

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
from mixdaemon.nets.onnx_export import ClonerGraph

log = logging.getLogger(__name__)

PRECISIONS = tuple(p for p in defaults.INFERENCE_PRECISIONS if p != "auto")  # what the cloner computes in
# SNR of the bf16 cloner against fp32 (dB, lowest and highest over song_a's four stems and five
# random full-size nets, bench_precision.py --snr-seeds); the shipped default pair's: 39.6–59.5
BF16_SNR_DB = (35.2, 62.1)
# "auto" computes in bf16 from this cloner width up, on a CPU with native bf16: the full-size cloner
# (width 128) ran 1.6× faster in bf16 than on ONNX Runtime fp32, the shipped default (width 24) 0.75×
BF16_MIN_WIDTH = 128


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN, torch's CPU convolution library, finds bf16 arithmetic in this CPU."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and supported is not None and supported())


def resolve_precision(requested: str, device: str = "cpu", width: int | None = None) -> str:
    """The precision ("fp32" or "bf16") a cloner of channel `width` computes in for `requested` (one
    of defaults.INFERENCE_PRECISIONS) on a torch `device` ("cpu" or "cuda"), logged with the reason.

    "auto", by measurement (bench_precision.py, docs/BENCHMARKS.md "Lower-precision CPU inference"):
    bf16 on a CPU with native bf16 for a cloner at least BF16_MIN_WIDTH wide (the full-size cloner:
    0.59 s per audio second against ONNX Runtime fp32's 0.96, at 35–62 dB SNR); fp32 otherwise —
    narrower cloners ran slower in bf16 than on ONNX Runtime (the shipped default: 0.024 against
    0.018 s per audio second), and without native bf16 its convolutions are 250× slower than fp32.
    `--precision bf16` asks for it regardless; on a CPU it needs native bf16 (EngineUnavailable otherwise)."""
    if requested not in defaults.INFERENCE_PRECISIONS:
        raise ConfigError(f"precision {requested!r}: expected one of {', '.join(defaults.INFERENCE_PRECISIONS)}")
    if requested == "auto":
        native = device == "cpu" and cpu_has_native_bf16()
        if native and width is not None and width >= BF16_MIN_WIDTH:
            log.info("precision auto → bf16 (native bf16, cloner width %d; %.1f–%.1f dB SNR against fp32; "
                     "--precision fp32 keeps fp32)", width, *BF16_SNR_DB)
            return "bf16"
        why = ("lower precisions are measured on CPUs only" if device != "cpu"
               else f"bf16 is slower than fp32 below cloner width {BF16_MIN_WIDTH}" if native
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


class Bf16Block(nn.Module):
    """One cloner block (onnx_export._ConvBlock's function) on time-major activations [B, T, C] with
    its dilated convolution in bf16: bf16 operands, float32 accumulation, a bf16 result, then
    LeakyReLU, FiLM and the residual in float32.

    Why time-major: oneDNN's fast bf16 convolutions (AMX, AVX-512 BF16) work on channels-last data,
    and [B, T, C] seen as [B, C, 1, T] is channels-last without a copy; so are their outputs. In
    torch's channel-first layout each block paid two layout conversions, and the grouped 1×1
    residual convolution ran as a slow oneDNN kernel: together twice the convolutions' own time.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.half, self.dilation = block.half, block.dilation
        weight = block.weight if block.weight.dim() == 4 else block.weight.unsqueeze(2)  # [out, in, 1, k]
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", block.bias.detach().to(torch.bfloat16))
        self.film_fc = block.film.film_fc
        width, inputs = weight.shape[0], weight.shape[1]
        # res is a grouped 1×1 convolution: input channel g scales outputs g·m … g·m + m − 1 (m = width / inputs)
        self.register_buffer("res", block.res.weight.detach().reshape(inputs, width // inputs).float())

    def convolve(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        """[B, T, C_in] bf16 → [B, T', C_out] bf16: the dilated convolution, channels-last."""
        out = nn.functional.conv2d(x.transpose(1, 2).unsqueeze(2), self.weight, self.bias, padding=(0, padding),
                                   dilation=(1, self.dilation))
        return out.squeeze(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """x [B, T, C_in] float32, zero-padded by the convolution, or with `valid` already holding the
        half-window on each side (2 · half samples shorter out)."""
        h = nn.functional.leaky_relu_(self.convolve(x.to(torch.bfloat16), 0 if valid else self.half), 0.01)
        gamma, beta = self.film_fc(cond).unsqueeze(1).chunk(2, dim=-1)
        out = torch.addcmul(beta, gamma, h)  # float32: the bf16 h is widened inside the one kernel
        centre = x[:, self.half:x.shape[1] - self.half] if valid else x
        b, t, width = out.shape
        inputs = centre.shape[-1]
        out.view(b, t, inputs, width // inputs).addcmul_(centre.unsqueeze(-1), self.res)
        return out


class _Bf16Layers(nn.Module):
    def __init__(self, cloner: MixFXcloner):
        super().__init__()
        graph = ClonerGraph(cloner, torch.float32)  # BatchNorm folded into the convolutions as the graphs have it
        self.blocks = nn.ModuleList(Bf16Block(block) for block in graph.blocks)
        self.register_buffer("out_weight", graph.output.weight.detach()[..., 0].T.contiguous())  # [C, 2]
        self.register_buffer("out_bias", graph.output.bias.detach())

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] → [B, 2, T] float32, clamped as the cloner's output is."""
        return torch.addmm(self.out_bias, x.flatten(0, 1), self.out_weight).view(x.shape[0], x.shape[1], -1) \
            .clamp_(-1.0, 1.0).transpose(1, 2).contiguous()


class Bf16ClonerGraph(_Bf16Layers):
    """ClonerGraph's function with bf16 convolutions: (audio [B, 2, T], embedding) → [B, 2, T], float32."""

    def forward(self, audio: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x = audio.transpose(1, 2).contiguous()
        for block in self.blocks:
            x = block(x, embedding)
        return self.output(x)


class Bf16ClonerStream(_Bf16Layers):
    """ClonerStream's function (the same states, shapes and delays) with bf16 convolutions."""

    def __init__(self, cloner: MixFXcloner):
        super().__init__(cloner)
        self.delays = np.cumsum([block.half for block in self.blocks]).tolist()

    def forward(self, audio: torch.Tensor, embedding: torch.Tensor, position: torch.Tensor, length: torch.Tensor,
                *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = audio.transpose(1, 2).contiguous()
        times = position + torch.arange(x.shape[1], device=x.device)
        next_states = []
        for block, state, delay in zip(self.blocks, states, self.delays):
            window = torch.cat([state.transpose(1, 2), x], dim=1)  # input times t − 2h … t + block − 1
            next_states.append(window[:, window.shape[1] - 2 * block.half:].transpose(1, 2).contiguous())
            out_times = times - delay
            x = block(window, embedding, valid=True).mul_(((out_times >= 0) & (out_times < length))[:, None])
        return (self.output(x), *next_states)


def bf16_cloner(cloner: MixFXcloner) -> tuple[Bf16ClonerGraph, Bf16ClonerStream]:
    """(whole-window module, stream module) of `cloner` with bf16 convolutions, in eval mode: the
    nn.Modules that TorchBackend calls for convert and stream (float32 in and out)."""
    return Bf16ClonerGraph(cloner).eval(), Bf16ClonerStream(cloner).eval()


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """10·log10(‖reference‖² / ‖reference − other‖²), in float64."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    noise = np.sum(np.square(reference - other))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(np.square(reference)) / noise))
