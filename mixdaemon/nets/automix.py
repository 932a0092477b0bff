"""The two FxNorm-automix networks (docs/ALGORITHMS.md §6.1, §6.2) and their losses La / Lb (§6.3).

Both networks take the four FX-normalized stems as one [B, 8, T] tensor — vocals, bass, drums,
other (INPUT_STEMS), each left then right — and return the stereo mix [B, 2, T'].

- `AutomixNet`, the paper's "ours": a learned filterbank (conv1) whose outputs are scaled by a mask
  computed at 1/pool of the sample rate (Conv-TasNet TCN + BiLSTM), squeeze-and-excitation, and a
  decoder tied to conv1's weights; the four decoded stems are summed and passed through tanh.
  T' = T; T must be a multiple of `pool` (the caller pads).
- `WaveUNet`, the baseline: a stride-1 Wave-U-Net (the released configuration has an identity
  resampler, so no level decimates); valid convolutions make T' = T − `shrink` (68 samples at the
  paper's size), centred on the input.

Sizes are configurable (AutomixConfig, WaveUNetConfig); the defaults are the paper's: 2 719 793 and
2 455 562 parameters, where the paper counts 2 752 817 and 2 477 162 because it also counts the last
TCN block's unused residual convolution and the Wave-U-Net's fixed identity-resampler filters.
AUTOMIX_PRESETS and WAVEUNET_PRESETS name the sizes this project trains: "tiny" (tests), "small"
(the shipped CPU model and its baseline) and "full".

Not implemented: the paper's pre-training stage (§6.3.5, a front-end-only model trained to
reconstruct the stems before the full model is trained); the full model here trains from scratch.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal
from torch import nn

from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.errors import ConfigError
from mixdaemon.nets.mst import _Config, _int_tuple, _positive_int

INPUT_STEMS = ("vocals", "bass", "drums", "other")  # channel order of the network input (§6.1)
INPUT_CHANNELS = 2 * len(INPUT_STEMS)
OUTPUT_CHANNELS = 2


# --- "ours" (§6.1) ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AutomixConfig(_Config):
    """AutomixNet size; the defaults are the paper's (N 128, B 256, H 128, Sc 64, P 3, X 6, R 4)."""

    basis: int = 128          # N: filters of the learned filterbank (conv1); also the LSTM width
    kernel: int = 64          # conv1 (and tied decoder) length in samples
    pool: int = 64            # the mask runs at sample rate / pool
    smooth_kernel: int = 128  # depthwise smoothing conv before pooling
    tcn_channels: int = 256   # B
    hidden: int = 128         # H
    skip: int = 64            # Sc
    tcn_kernel: int = 3       # P
    blocks: int = 6           # X: dilations 1, 2, …, 2^(X−1)
    repeats: int = 4          # R
    lstm_layers: int = 3
    lstm_dropout: float = 0.1
    se_expansion: int = 16
    chrono_t_max: int = 32    # chrono initialisation of the LSTM gate biases

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "lstm_dropout":
                _positive_int(f"AutomixConfig.{f.name}", getattr(self, f.name))
        if self.basis % 2:
            raise ConfigError(f"AutomixConfig.basis: {self.basis} must be even (a BiLSTM of basis/2 units "
                              "per direction gives the mask)")
        if not 0.0 <= self.lstm_dropout < 1.0:
            raise ConfigError(f"AutomixConfig.lstm_dropout: {self.lstm_dropout} is not in [0, 1)")
        if self.chrono_t_max < 3:
            raise ConfigError(f"AutomixConfig.chrono_t_max: {self.chrono_t_max} must be at least 3")

    @property
    def tcn_receptive_frames(self) -> int:
        return 1 + self.repeats * (self.tcn_kernel - 1) * (2 ** self.blocks - 1)

    @property
    def guard(self) -> int:
        """Samples of context each side that the front-end and the TCN see (505·64 + 63 + 63 =
        32 446 at the paper's size). The BiLSTM sees further; beyond this it is a heuristic."""
        return self.tcn_receptive_frames * self.pool + (self.kernel - 1) + (self.pool - 1)


def _same_padded(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """x zero-padded for a "same" convolution: (k − 1) // 2 samples left, the rest right (31 / 32
    for k = 64). Explicit, because torch's padding="same" copies the input for even kernels anyway."""
    return F.pad(x, ((kernel - 1) // 2, kernel // 2))


class _TemporalBlock(nn.Module):
    def __init__(self, c: AutomixConfig, dilation: int, residual: bool):
        super().__init__()
        self.expand = nn.Conv1d(c.tcn_channels, c.hidden, 1)
        self.act1 = nn.PReLU()
        self.norm1 = nn.GroupNorm(1, c.hidden)
        self.depthwise = nn.Conv1d(c.hidden, c.hidden, c.tcn_kernel, dilation=dilation, groups=c.hidden,
                                   padding=dilation * (c.tcn_kernel - 1) // 2)
        self.act2 = nn.PReLU()
        self.norm2 = nn.GroupNorm(1, c.hidden)
        self.skip = nn.Conv1d(c.hidden, c.skip, 1)
        self.residual = nn.Conv1d(c.hidden, c.tcn_channels, 1) if residual else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(self.act1(self.expand(x)))
        h = self.norm2(self.act2(self.depthwise(h)))
        out = x + self.residual(h) if self.residual is not None else x
        return out, self.skip(h)


class AutomixNet(nn.Module):
    """FxNorm-automix "ours" (§6.1): [B, 8, T] normalized stems → [B, 2, T] mix in (−1, 1)."""

    def __init__(self, config: AutomixConfig | None = None):
        super().__init__()
        c = self.config = config or AutomixConfig()
        if c.tcn_kernel % 2 == 0:
            raise ConfigError(f"AutomixConfig.tcn_kernel: {c.tcn_kernel} must be odd ('same' dilated convolution)")
        self.conv1 = nn.Conv1d(INPUT_CHANNELS, c.basis, c.kernel, bias=False)
        self.smooth = nn.Conv1d(c.basis, c.basis, c.smooth_kernel, groups=c.basis, bias=False)
        self.pool = nn.MaxPool1d(c.pool)
        self.input_norm = nn.GroupNorm(1, c.basis)
        self.bottleneck = nn.Conv1d(c.basis, c.tcn_channels, 1)
        n_blocks = c.repeats * c.blocks
        self.tcn = nn.ModuleList(_TemporalBlock(c, 2 ** (i % c.blocks), residual=i < n_blocks - 1)
                                 for i in range(n_blocks))
        self.skip_act = nn.PReLU()
        self.to_lstm = nn.Conv1d(c.skip, c.basis, 1)
        self.lstm = nn.LSTM(c.basis, c.basis // 2, num_layers=c.lstm_layers, batch_first=True,
                            bidirectional=True, dropout=c.lstm_dropout if c.lstm_layers > 1 else 0.0)
        self.se_in = nn.Linear(c.basis, c.se_expansion * c.basis)
        self.se_out = nn.Linear(c.se_expansion * c.basis, c.basis)
        self._chrono_init()

    def _chrono_init(self) -> None:
        """Forget-gate bias log U[1, T_max − 1], input-gate bias its negative (Tallec & Ollivier):
        the LSTM starts out remembering over about T_max frames instead of a few."""
        hidden = self.lstm.hidden_size
        with torch.no_grad():
            for name, bias in self.lstm.named_parameters():
                if not name.startswith("bias"):
                    continue
                bias.zero_()
                if name.startswith("bias_ih"):  # one of the two bias vectors carries the init
                    forget = torch.empty(hidden).uniform_(1.0, self.config.chrono_t_max - 1).log()
                    bias[hidden:2 * hidden] = forget  # PyTorch gate order: input, forget, cell, output
                    bias[:hidden] = -forget

    def mask(self, p: torch.Tensor) -> torch.Tensor:
        """The mask at the filterbank's rate, [B, N, T], from the filterbank output p."""
        z = self.pool(F.softplus(self.smooth(_same_padded(p.abs(), self.config.smooth_kernel))))
        h = self.bottleneck(self.input_norm(z))
        skips = 0
        for block in self.tcn:
            h, s = block(h)
            skips = skips + s
        h = F.softplus(self.to_lstm(self.skip_act(skips)))
        h, _ = self.lstm(h.transpose(1, 2))
        m = F.softplus(h).transpose(1, 2)
        return m.repeat_interleave(self.config.pool, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 3 or x.shape[1] != INPUT_CHANNELS or x.shape[2] % c.pool:
            raise ValueError(f"AutomixNet: input {tuple(x.shape)} must be [B, {INPUT_CHANNELS}, T] with T a "
                             f"multiple of {c.pool}")
        p = self.conv1(_same_padded(x, c.kernel))
        y = self.mask(p) * p
        excitation = torch.sigmoid(self.se_out(F.relu(self.se_in(y.abs().mean(dim=2)))))
        y = y * excitation[:, :, None]
        # The decoder is conv1's adjoint, the transposed convolution with the same weights cropped to
        # T, written as a convolution with the time-reversed weights (2-4x faster than torch's
        # conv_transpose1d on CPU): the mirror image of conv1's "same" padding.
        decoder = self.conv1.weight.flip(-1).transpose(0, 1)
        stems = F.conv1d(F.pad(y, (c.kernel // 2, (c.kernel - 1) // 2)), decoder)
        return torch.tanh(stems.reshape(x.shape[0], len(INPUT_STEMS), OUTPUT_CHANNELS, -1).sum(dim=1))


# --- Wave-U-Net baseline (§6.2) -----------------------------------------------------------------------

@dataclass(frozen=True)
class WaveUNetConfig(_Config):
    """WaveUNet size; the defaults are the paper's (5 levels, 24…384 channels, kernel 5)."""

    channels: tuple[int, ...] = (24, 48, 96, 192, 384)
    kernel: int = 5

    def __post_init__(self):
        object.__setattr__(self, "channels", _int_tuple("WaveUNetConfig.channels", self.channels))
        _positive_int("WaveUNetConfig.kernel", self.kernel)
        if len(self.channels) < 2:
            raise ConfigError("WaveUNetConfig.channels: needs at least two levels")
        if any(ch % 8 for ch in self.channels):
            raise ConfigError(f"WaveUNetConfig.channels: {list(self.channels)} must be multiples of 8 "
                              "(GroupNorm with channels/8 groups)")

    @property
    def shrink(self) -> int:
        """Samples the valid convolutions remove: two per down and up level and one at the bottom."""
        levels = len(self.channels) - 1
        return (4 * levels + 1) * (self.kernel - 1)


class _ConvNormAct(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel)
        self.norm = nn.GroupNorm(out_ch // 8, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def _centre_crop(x: torch.Tensor, length: int) -> torch.Tensor:
    start = (x.shape[-1] - length) // 2
    return x[..., start:start + length]


class WaveUNet(nn.Module):
    """The stride-1 Wave-U-Net baseline (§6.2): [B, 8, T] → [B, 2, T − shrink]; in eval mode the
    output is clamped to [−1, 1]."""

    def __init__(self, config: WaveUNetConfig | None = None):
        super().__init__()
        c = self.config = config or WaveUNetConfig()
        ch, k = c.channels, c.kernel
        ins = (INPUT_CHANNELS, *ch[1:-1])
        self.down_pre = nn.ModuleList(_ConvNormAct(i, s, k) for i, s in zip(ins, ch[:-1]))
        self.down_post = nn.ModuleList(_ConvNormAct(s, o, k) for s, o in zip(ch[:-1], ch[1:]))
        self.bottom = _ConvNormAct(ch[-1], ch[-1], k)
        self.up_pre = nn.ModuleList(_ConvNormAct(i, o, k) for i, o in zip(ch[:0:-1], ch[-2::-1]))
        self.up_post = nn.ModuleList(_ConvNormAct(2 * o, o, k) for o in ch[-2::-1])
        self.output = nn.Conv1d(ch[0], OUTPUT_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != INPUT_CHANNELS or x.shape[2] <= self.config.shrink:
            raise ValueError(f"WaveUNet: input {tuple(x.shape)} must be [B, {INPUT_CHANNELS}, T] with "
                             f"T > {self.config.shrink}")
        shortcuts = []
        h = x
        for pre, post in zip(self.down_pre, self.down_post):
            h = pre(h)
            shortcuts.append(h)
            h = post(h)
        h = self.bottom(h)
        for pre, post, shortcut in zip(self.up_pre, self.up_post, reversed(shortcuts)):
            h = pre(h)
            h = post(torch.cat([_centre_crop(shortcut, h.shape[-1]), h], dim=1))
        y = self.output(h)
        return y if self.training else y.clamp(-1.0, 1.0)


# --- presets ------------------------------------------------------------------------------------------

AUTOMIX_PRESETS = {
    "tiny": AutomixConfig(basis=8, kernel=16, pool=16, smooth_kernel=32, tcn_channels=16, hidden=8, skip=8,
                          blocks=3, repeats=1, lstm_layers=1, se_expansion=2),
    # the shipped CPU default: a 32-sample filterbank pooled by 32, 2 × 6 TCN blocks
    "small": AutomixConfig(basis=32, kernel=32, pool=32, smooth_kernel=64, tcn_channels=64, hidden=32,
                           skip=16, blocks=6, repeats=2, lstm_layers=2, se_expansion=4),
    "full": AutomixConfig(),
}
WAVEUNET_PRESETS = {
    "tiny": WaveUNetConfig(channels=(8, 8, 16), kernel=5),
    "small": WaveUNetConfig(channels=(8, 16, 24, 32, 48), kernel=5),
    "full": WaveUNetConfig(),
}
ARCHITECTURES = {"automix": (AutomixNet, AutomixConfig, AUTOMIX_PRESETS),
                 "wave-u-net": (WaveUNet, WaveUNetConfig, WAVEUNET_PRESETS)}


def build_model(architecture: str, config: dict) -> nn.Module:
    """A freshly initialised network of `architecture` ("automix" or "wave-u-net")."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
    model_cls, config_cls, _ = ARCHITECTURES[architecture]
    return model_cls(config_cls.from_dict(config))


def model_context(model: nn.Module) -> tuple[int, int]:
    """(samples of context each side a chunk needs, length multiple the input must have)."""
    if isinstance(model, WaveUNet):
        return model.config.shrink // 2, 1
    return model.config.guard, model.config.pool


# --- losses La / Lb (§6.3) ------------------------------------------------------------------------------

A_WEIGHTING_POLES_HZ = (20.598997, 107.65265, 737.86223, 12194.217)
A_WEIGHTING_GAIN_DB = 1.9997  # at 1 kHz
A_WEIGHTING_TAPS = 101
LP_KERNEL = (1.0, 0.85, 0.0)  # applied as a cross-correlation: 0.85·x[n−49] + x[n−50] after the crop
PREFILTER_PAD = 50
LOSS_FFT, LOSS_HOP = 4096, 1024
LOSS_EDGE_FRAMES = 30  # dropped at each end: frames whose context the network did not fully see
# The spec's 1e-30 inside the log gives gradients of 1e30 on silent bins; this floor sits far below
# any audible magnitude of a 4096-point frame and keeps them bounded.
LOG_EPS = 1e-7
LOSSES = ("La", "Lb")


@functools.lru_cache(maxsize=None)
def a_weighting_fir(sr: int = WORKING_RATE) -> np.ndarray:
    """101-tap least-squares FIR fit to the bilinear-transformed analog A-weighting curve (512
    frequency points), rounded to float16 as the original's half-precision filter weights are."""
    f1, f2, f3, f4 = (2 * math.pi * f for f in A_WEIGHTING_POLES_HZ)
    numerator = [f4 ** 2 * 10 ** (A_WEIGHTING_GAIN_DB / 20), 0, 0, 0, 0]
    denominator = np.polymul(np.polymul([1, 2 * f4, f4 ** 2], [1, 2 * f1, f1 ** 2]), np.polymul([1, f3], [1, f2]))
    b, a = signal.bilinear(numerator, denominator, sr)
    freqs, response = signal.freqz(b, a, worN=512, fs=sr)
    taps = signal.firls(A_WEIGHTING_TAPS, freqs, np.abs(response), fs=sr)
    return taps.astype(np.float16).astype(np.float32)


def prefilter(x: torch.Tensor) -> torch.Tensor:
    """A-weighting then the 3-tap "lp" stage, both zero-padded by 50 and cut to the input length
    ([B, C, T] → [B, C, T]); the ≈49-sample delay is the same on output and target."""
    batch, channels, length = x.shape
    flat = x.reshape(batch * channels, 1, length)
    for taps in (a_weighting_fir(), np.array(LP_KERNEL, dtype=np.float16).astype(np.float32)):
        kernel = torch.from_numpy(taps).to(x.device, x.dtype).view(1, 1, -1)
        flat = F.conv1d(flat, kernel, padding=PREFILTER_PAD)[..., :length]
    return flat.reshape(batch, channels, length)


def _loss_magnitude(x: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(LOSS_FFT, periodic=True, device=x.device, dtype=x.dtype).sqrt()
    mag = torch.stft(x, LOSS_FFT, LOSS_HOP, window=window, center=False, return_complex=True).abs()
    return mag[..., LOSS_EDGE_FRAMES:mag.shape[-1] - LOSS_EDGE_FRAMES]


def min_loss_length() -> int:
    """Shortest signal with at least one frame left after the edge frames are dropped."""
    return LOSS_FFT + 2 * LOSS_EDGE_FRAMES * LOSS_HOP


def automix_loss(output: torch.Tensor, target: torch.Tensor, kind: str = "Lb") -> torch.Tensor:
    """La or Lb (§6.3) between stereo [B, 2, T] output and target: pre-filter, sum and difference
    channels, |STFT| 4096/1024 without its 30 edge frames; per channel, La adds spectral
    convergence ‖Y − Ŷ‖_F/‖Y‖_F and the mean absolute log-magnitude difference, Lb replaces the
    first term by the mean squared magnitude difference."""
    if kind not in LOSSES:
        raise ConfigError(f"loss {kind!r}: expected La or Lb")
    if output.shape != target.shape or output.dim() != 3 or output.shape[1] != 2:
        raise ValueError(f"automix loss: output {tuple(output.shape)} and target {tuple(target.shape)} must both "
                         "be [B, 2, T]")
    if output.shape[-1] < min_loss_length():
        raise ValueError(f"automix loss: T = {output.shape[-1]} samples; needs at least {min_loss_length()}")
    out, tgt = prefilter(output), prefilter(target)
    total = output.new_zeros(())
    for combine in (torch.add, torch.sub):  # sum = L + R, diff = L − R
        out_mag = _loss_magnitude(combine(out[:, 0], out[:, 1]))
        tgt_mag = _loss_magnitude(combine(tgt[:, 0], tgt[:, 1]))
        if kind == "La":
            total = total + torch.linalg.norm(tgt_mag - out_mag) / torch.linalg.norm(tgt_mag).clamp_min(LOG_EPS)
        else:
            total = total + (out_mag - tgt_mag).square().mean()
        total = total + (torch.log(out_mag + LOG_EPS) - torch.log(tgt_mag + LOG_EPS)).abs().mean()
    return total
