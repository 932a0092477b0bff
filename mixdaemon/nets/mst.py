"""The two MST networks (docs/ALGORITHMS.md §3.1, §4.1): FXencoder Φ and MixFXcloner Ψ.

With their default configs both modules have exactly the state_dict names, order and shapes of the
authors' checkpoints (../shared/reference/mst_*_state_dict.json), so a strict ``load_state_dict``
of the official weights works; smaller configs build the same architecture at a smaller size (tests,
experiments, training from scratch).

Tensors are [B, 2, T] float32 stereo at 44.1 kHz.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from mixdaemon.errors import ConfigError

AUDIO_CHANNELS = 2  # both networks take and give stereo


def _int_tuple(name: str, value) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a list of integers, got {value!r}") from None
    if not items or any(v < 1 for v in items):
        raise ConfigError(f"{name}: expected a non-empty list of positive integers, got {list(value)!r}")
    return items


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return value


class _Config:
    """to_dict/from_dict shared by the two configs, so model files can store them as JSON."""

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict):
        """Keys left out take the default (the authors' architecture); unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)


@dataclass(frozen=True)
class EncoderConfig(_Config):
    """FXencoder size. Stage i maps ch[i] → ch[i+1] with ch = [2, *channels]."""

    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 256, 512, 512, 1024, 1024, 2048, 2048)
    kernels: tuple[int, ...] = (25, 25, 15, 15, 10, 10, 10, 10, 5, 5, 5, 5)
    strides: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1)

    def __post_init__(self):
        for name in ("channels", "kernels", "strides"):
            object.__setattr__(self, name, _int_tuple(f"EncoderConfig.{name}", getattr(self, name)))
        if not len(self.channels) == len(self.kernels) == len(self.strides):
            raise ConfigError(f"EncoderConfig: channels, kernels and strides must have the same length, got "
                              f"{len(self.channels)}, {len(self.kernels)}, {len(self.strides)}")

    @property
    def embedding_dim(self) -> int:
        return self.channels[-1]

    @property
    def min_input_length(self) -> int:
        """Shortest input the encoder accepts (8193 for the default config).

        Reflection padding needs each side's pad to be shorter than the signal it pads, so every
        stage needs an input longer than its right-hand pad ceil((k−1)/2); stage i's input length
        is ceil(L_{i−1}/s). Walking backwards from the last stage gives the smallest L.
        """
        need = 1
        for kernel, stride in zip(reversed(self.kernels), reversed(self.strides)):
            need = max(kernel // 2 + 1, (need - 1) * stride + 1)
        return need


@dataclass(frozen=True)
class ClonerConfig(_Config):
    """MixFXcloner (TCN) size. Block n has dilation dilation_growth ** (n % stack_size)."""

    nblocks: int = 14
    channel_width: int = 128
    kernel_size: int = 15
    dilation_growth: int = 2
    stack_size: int = 15
    cond_dim: int = 2048

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _positive_int(f"ClonerConfig.{f.name}", getattr(self, f.name))
        if self.kernel_size % 2 == 0:
            # symmetric "same" padding of (k−1)/2·d per side only preserves the length for odd k
            raise ConfigError(f"ClonerConfig.kernel_size: must be odd, got {self.kernel_size}")
        if self.channel_width % AUDIO_CHANNELS:
            # the first block's grouped 1×1 residual conv has groups = 2 input channels
            raise ConfigError(f"ClonerConfig.channel_width: must be a multiple of {AUDIO_CHANNELS}, "
                              f"got {self.channel_width}")

    @property
    def dilations(self) -> list[int]:
        return [self.dilation_growth ** (n % self.stack_size) for n in range(self.nblocks)]

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on (229,363 for the default); centred."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)


# --- FXencoder ------------------------------------------------------------------------------------

class _ConvLayer(nn.Module):
    """Reflect "SAME" pad → conv → BN → ReLU, held in a Sequential named like the authors' one."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        left = (kernel - 1) // 2
        self.conv1d = nn.Sequential(OrderedDict(
            conv1d_pad=nn.ReflectionPad1d((left, kernel - 1 - left)),
            conv1d=nn.Conv1d(in_ch, out_ch, kernel, stride=stride),
            batch_norm=nn.BatchNorm1d(out_ch),
            relu=nn.ReLU(),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1d(x)


class _ResConvBlock(nn.Module):
    """u = x + ConvLayer_k(x) (C_in → C_in); out = ConvLayer_{k,stride}(u) (C_in → C_out)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        self.conv1 = _ConvLayer(in_ch, in_ch, kernel, 1)
        self.conv2 = _ConvLayer(in_ch, out_ch, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class FXencoder(nn.Module):
    """Φ: [B, 2, T] audio → [B, D] mixing-style embedding (non-negative; D = 2048 by default).

    T must be at least ``config.min_input_length``.
    """

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config or EncoderConfig()
        ch = (AUDIO_CHANNELS, *self.config.channels)
        self.encoder = nn.ModuleList(
            _ResConvBlock(ch[i], ch[i + 1], k, s)
            for i, (k, s) in enumerate(zip(self.config.kernels, self.config.strides)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.encoder:
            x = block(x)
        return x.mean(dim=-1)  # global average over time; no projection head


# --- MixFXcloner ----------------------------------------------------------------------------------

class _FiLM(nn.Module):
    """One linear layer gives [γ, β] (γ first); h ← γ·h + β, constant over time within a call."""

    def __init__(self, cond_dim: int, width: int):
        super().__init__()
        self.film_fc = nn.Linear(cond_dim, 2 * width)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film_fc(cond).unsqueeze(-1).chunk(2, dim=1)
        return torch.addcmul(beta, gamma, h)  # β + γ·h in one pass and one new tensor


class _TCNBlock(nn.Module):
    """h = FiLM(LeakyReLU_0.01(BN(conv_dilated(x))), c) + res(x), res a grouped bias-free 1×1 conv.

    The conv zero-pads (k−1)/2·d samples on each side, so the length is preserved. Submodules are
    created in the order of the authors' state_dict (conv1, film, bn, res).
    """

    def __init__(self, in_ch: int, width: int, kernel: int, dilation: int, cond_dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, width, kernel, dilation=dilation, padding=(kernel - 1) // 2 * dilation,
                               bias=False)
        self.film = _FiLM(cond_dim, width)
        self.bn = nn.BatchNorm1d(width)
        self.res = nn.Conv1d(in_ch, width, 1, groups=in_ch, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # Memory, not arithmetic, shapes this code: a long window's activations are 388 MB each
        # (17-s window, width 128). LeakyReLU works in place and the FiLM output replaces h, and the
        # residual is added into it in place (below), so a block peaks at about three activations
        # (the conv's output and its layout buffer beside the input) instead of five. Autograd allows
        # it: the tensors overwritten are BN's and FiLM's outputs, which their backward passes do not use.
        h = nn.functional.leaky_relu(self.bn(self.conv1(x)), 0.01, inplace=True)
        h = self.film(h, cond)
        # res, a 1×1 conv with groups = C_in, scales input channel g into output channels
        # g·m … g·m + m − 1 (m = width / C_in), each by its own weight: the same as this broadcast
        b, width, t = h.shape
        groups = x.shape[1]
        h.view(b, groups, width // groups, t).addcmul_(
            x.unsqueeze(2), self.res.weight.view(1, groups, width // groups, 1))
        return h


class MixFXcloner(nn.Module):
    """Ψ: audio [B, 2, T] and embedding [B or 1, D] → audio [B, 2, T] in the embedding's mixing style.

    Non-causal: each output sample depends on ``receptive_field`` input samples centred on it, with
    zeros assumed beyond the ends of x. The output is hard-clamped to [−1, 1] as in the authors' model.
    """

    def __init__(self, config: ClonerConfig | None = None):
        super().__init__()
        self.config = config or ClonerConfig()
        c = self.config
        self.blocks = nn.ModuleList(
            _TCNBlock(AUDIO_CHANNELS if n == 0 else c.channel_width, c.channel_width, c.kernel_size, d, c.cond_dim)
            for n, d in enumerate(c.dilations))
        self.output = nn.Conv1d(c.channel_width, AUDIO_CHANNELS, 1)

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cond)
        return self.output(x).clamp(-1.0, 1.0)
