"""ONNX graphs of the FXencoder and MixFXcloner, and the artifact cache that holds them and the
TensorRT plans built from them (nets/tensorrt.py).

Three graphs are exported from one model pair (inputs and outputs float32 unless said otherwise):

- ``fxencoder``: audio [batch, 2, time] → embedding [batch, D]; time ≥ the encoder's minimum input.
- ``mixfxcloner``: audio [batch, 2, time], embedding [batch, D] → converted [batch, 2, time]. The
  embedding has the audio's batch size (the backends repeat a single one), so that one batch axis
  describes both inputs, as a TensorRT optimization profile needs.
- ``mixfxcloner-stream``: one block of a song streamed through the cloner, see ``ClonerStream``:
  audio [batch, 2, block], embedding [batch, D], position and length (int64 scalars), state0…
  state{N−1} → converted [batch, 2, block], next_state0…next_state{N−1}.

Precision ``fp32`` computes in float32; ``fp16`` computes in float16 inside the graph, with float32
inputs and outputs. TensorRT 11 builds only strongly typed networks (the FP16 builder flag is gone),
so an FP16 plan is built from a graph whose types say FP16, which these are.

The exporter is torch.onnx's dynamo exporter (onnxscript), opset 18: it folds every BatchNorm into
its convolution and writes the reflection and zero padding as Pad / Conv pads, with named dynamic
batch and time axes. The legacy TorchScript exporter gives the same arithmetic but turns the FiLM
split into Shape/Gather/Div/Slice chains.

**Artifact cache.** Exported graphs and built TensorRT plans are build artifacts, kept in
``<store>/cache/<weights sha256[:16]>/<name>-<key digest[:16]><suffix>`` next to ``<file>.json``
holding the full key. The store is the user's model store (nets/repo.py's store_dir():
``$MIXDAEMON_ENGINES``, else the per-user data folder, e.g. ``~/.local/share/mixdaemon/engines``),
never the shipped models' read-only package data ``mixdaemon.engines``, so artifacts are built the
same way for an installed wheel as for a source checkout. The key names everything the artifact depends on (weights hash, model config, precision,
exporter and opset, and for plans the profile, TensorRT version and GPU); a changed key gives a
new file name, and an artifact is reused only when its JSON holds exactly the requested key.
Files are written with files.atomic_path, so a reader never sees half an artifact and two processes
building the same one at once both end with a whole file.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mixdaemon import defaults
from mixdaemon.errors import ConfigError, ModelFileError
from mixdaemon.files import atomic_path, atomic_write
from mixdaemon.nets.mst import AUDIO_CHANNELS, ClonerConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import store_dir

log = logging.getLogger(__name__)

OPSET = 18
# Bump when a graph's definition changes (names, inputs, the stream formulation), so that cached
# files from an older mixdaemon are not reused.
GRAPH_FORMAT = 2
GRAPHS = ("fxencoder", "mixfxcloner", "mixfxcloner-stream")
PRECISIONS = defaults.PRECISIONS
CACHE_FOLDER = "cache"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


# --- the graphs -----------------------------------------------------------------------------------

class EncoderGraph(nn.Module):
    """audio → embedding, computed in `dtype`; float32 in and out."""

    def __init__(self, encoder: FXencoder, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.encoder, self.dtype = encoder.to(dtype), dtype

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encoder(audio.to(self.dtype)).float()


# Channel width from which the dilated convolutions are written as 2-D ones (see _ConvBlock).
# ONNX Runtime CPU time of 2-D over 1-D, one thread, measured per cloner size (width/kernel):
# 16/5 (the shipped default) 1.4, 32/5 0.95, 64/5 0.85, 32/15 0.74, 128/15 (full size) 0.76.
NCHWC_MIN_WIDTH = 32


class _ConvBlock(nn.Module):
    """One TCN block (nets/mst.py's _TCNBlock) as the graphs compute it.

    The same function, written for ONNX Runtime's CPU kernels: BatchNorm is folded into the dilated
    convolution's weights and bias, and for wide blocks (NCHWC_MIN_WIDTH) the convolution is a 2-D
    one over a unit height axis ([B, C, 1, T]), with LeakyReLU applied before that axis is dropped.
    ONNX Runtime runs such 2-D convolutions with its blocked NCHWc kernels and fuses the activation
    into them, where a 1-D convolution goes through im2col and a GEMM: a quarter less CPU time for
    the full-size cloner. For narrow blocks the layout conversions around each NCHWc convolution
    cost more than they save. TensorRT runs 1-D convolutions as 2-D ones anyway. The parity tests
    hold this formulation to the torch model.
    """

    def __init__(self, layer, dtype: torch.dtype, two_d: bool):
        super().__init__()
        conv, bn = layer.conv1, layer.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("weight", (conv.weight * scale[:, None, None]).detach().to(dtype))
        self.register_buffer("bias", (bn.bias - bn.running_mean * scale).detach().to(dtype))
        self.dilation, self.two_d = conv.dilation[0], two_d
        self.half = conv.padding[0]  # (k − 1) / 2 · d
        self.film, self.res = layer.film.to(dtype), layer.res.to(dtype)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, valid: bool = False) -> torch.Tensor:
        """x zero-padded by the convolution (same length out), or with `valid` already holding the
        half-window on each side (2 · half samples shorter out)."""
        padding = 0 if valid else self.half
        if self.two_d:
            h = nn.functional.conv2d(x.unsqueeze(2), self.weight.unsqueeze(2), self.bias, padding=(0, padding),
                                     dilation=(1, self.dilation))
            h = nn.functional.leaky_relu(h, 0.01).squeeze(2)
        else:
            h = nn.functional.leaky_relu(nn.functional.conv1d(x, self.weight, self.bias, padding=padding,
                                                              dilation=self.dilation), 0.01)
        centre = x[..., self.half:x.shape[-1] - self.half] if valid else x
        return self.film(h, cond) + self.res(centre)


class _ClonerLayers(nn.Module):
    """The cloner's blocks as _ConvBlocks and its output layer, in `dtype`."""

    def __init__(self, cloner: MixFXcloner, dtype: torch.dtype):
        super().__init__()
        cloner = cloner if dtype == torch.float32 else _copy(cloner)  # BN is folded in float32, then cast
        two_d = cloner.config.channel_width >= NCHWC_MIN_WIDTH
        self.blocks = nn.ModuleList(_ConvBlock(layer, dtype, two_d) for layer in cloner.blocks)
        self.output, self.dtype = cloner.output.to(dtype), dtype


class ClonerGraph(_ClonerLayers):
    """(audio, embedding) → converted audio, computed in `dtype`; float32 in and out."""

    def forward(self, audio: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x, cond = audio.to(self.dtype), embedding.to(self.dtype)
        for block in self.blocks:
            x = block(x, cond)
        return self.output(x).clamp(-1.0, 1.0).float()


def stream_state_shapes(config: ClonerConfig, batch: int = 1) -> list[tuple[int, int, int]]:
    """Shape of each block's carried input: [batch, its input channels, (kernel − 1) · dilation]."""
    return [(batch, AUDIO_CHANNELS if n == 0 else config.channel_width, (config.kernel_size - 1) * d)
            for n, d in enumerate(config.dilations)]


class ClonerStream(_ClonerLayers):
    """The MixFXcloner applied to a song one block at a time, each sample computed once.

    Why: the cloner's context is 2.6 s on each side, so overlap-save chunks of 12 s recompute
    5.2 s of input per chunk (43 % more work). Here every block n keeps the last (k−1)·d_n samples
    of its own input (``states``) and prepends them to the next call's input, so that its dilated
    convolution needs no padding and sees exactly the samples it would see in a whole-song call.

    Block n's output lags its input by h_n = (k−1)/2 · d_n, so block n's outputs in a call are at song
    times t − D_n (D_n = h_0 + … + h_n) for the call's input times t = position … position+block−1.
    Outputs at times outside [0, length) are set to zero: that is exactly the zero padding that the
    next block sees at the ends of a whole-song call. Zero initial states stand for the padding
    before the song; feeding D = receptive_field // 2 zeros after the song flushes the last outputs.
    The stream's output is the whole-song output delayed by D, equal up to float rounding.
    """

    def __init__(self, cloner: MixFXcloner, dtype: torch.dtype = torch.float32):
        super().__init__(cloner, dtype)
        self.delays = np.cumsum([block.half for block in self.blocks]).tolist()

    def forward(self, audio: torch.Tensor, embedding: torch.Tensor, position: torch.Tensor, length: torch.Tensor,
                *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, cond = audio.to(self.dtype), embedding.to(self.dtype)
        times = position + torch.arange(x.shape[-1], device=x.device)
        next_states = []
        for block, state, delay in zip(self.blocks, states, self.delays):
            window = torch.cat([state.to(self.dtype), x], dim=-1)  # input times t − 2h … t + block − 1
            next_states.append(window[..., window.shape[-1] - 2 * block.half:].float())
            out_times = times - delay
            x = block(window, cond, valid=True) * ((out_times >= 0) & (out_times < length)).to(self.dtype)
        return (self.output(x).clamp(-1.0, 1.0).float(), *next_states)


def graph_module(graph: str, model: nn.Module, precision: str = "fp32") -> nn.Module:
    """The nn.Module that `graph` exports (eval mode; a copy when the precision changes the dtype)."""
    dtype = _DTYPES[_check_precision(precision)]
    if graph == "fxencoder":
        return EncoderGraph(model if dtype == torch.float32 else _copy(model), dtype).eval()
    if graph == "mixfxcloner":
        return ClonerGraph(model, dtype).eval()
    if graph == "mixfxcloner-stream":
        return ClonerStream(model, dtype).eval()
    raise ConfigError(f"ONNX graph {graph!r}: expected one of {', '.join(GRAPHS)}")


def _copy(model: nn.Module) -> nn.Module:
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def input_names(graph: str, config) -> list[str]:
    if graph == "fxencoder":
        return ["audio"]
    if graph == "mixfxcloner":
        return ["audio", "embedding"]
    return ["audio", "embedding", "position", "length"] + [f"state{n}" for n in range(config.nblocks)]


def output_names(graph: str, config) -> list[str]:
    if graph == "fxencoder":
        return ["embedding"]
    if graph == "mixfxcloner":
        return ["converted"]
    return ["converted"] + [f"next_state{n}" for n in range(config.nblocks)]


def _example_inputs(graph: str, config) -> tuple:
    """Small inputs for tracing, with sizes that no dynamic axis can be mistaken for (not 0 or 1)."""
    batch = 2
    if graph == "fxencoder":
        return (torch.zeros(batch, AUDIO_CHANNELS, 2 * config.min_input_length),)
    audio, embedding = torch.zeros(batch, AUDIO_CHANNELS, 4099), torch.zeros(batch, config.cond_dim)
    if graph == "mixfxcloner":
        return audio, embedding
    states = tuple(torch.zeros(shape) for shape in stream_state_shapes(config, batch))
    return (audio, embedding, torch.tensor(0), torch.tensor(4099), *states)


def _dynamic_shapes(graph: str, config) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=1024)
    if graph == "fxencoder":
        return ({0: batch, 2: torch.export.Dim("time", min=config.min_input_length)},)
    time_axis = torch.export.Dim("time", min=2)
    if graph == "mixfxcloner":
        return {0: batch, 2: time_axis}, {0: batch}
    # torch.export groups *states into one tuple
    return {0: batch, 2: time_axis}, {0: batch}, None, None, tuple({0: batch} for _ in range(config.nblocks))


def export_onnx(graph: str, model: nn.Module, path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Write `graph` of `model` (an FXencoder for "fxencoder", else a MixFXcloner) to `path`."""
    module = graph_module(graph, model, precision)
    config = model.config
    with _quiet_exporter():
        program = torch.onnx.export(module, _example_inputs(graph, config), dynamo=True, verbose=False,
                                    input_names=input_names(graph, config), output_names=output_names(graph, config),
                                    dynamic_shapes=_dynamic_shapes(graph, config), opset_version=OPSET)
    program.save(path, external_data=False)
    return Path(path)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter narrates every optimization pass at INFO and warns about its own deprecations and
    missing torchvision; none of it is about the graph (the parity tests check that), so a daemon
    log at INFO would fill with it."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --- the artifact cache -----------------------------------------------------------------------------

def cache_dir(store: str | os.PathLike | None = None) -> Path:
    return store_dir(store) / CACHE_FOLDER


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def artifact_path(store: str | os.PathLike | None, weights_sha256: str, name: str, key: dict, suffix: str) -> Path:
    return cache_dir(store) / weights_sha256[:16] / f"{name}-{key_digest(key)[:16]}{suffix}"


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _record(path: Path) -> dict | None:
    """What was recorded beside an artifact, or None when the artifact or its record is missing or unreadable."""
    try:
        record = json.loads(_meta_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if path.is_file() and isinstance(record, dict) and isinstance(record.get("key"), dict) else None


def cached_key(path: Path) -> dict | None:
    """The key recorded beside an artifact (see _record)."""
    record = _record(path)
    return record["key"] if record is not None else None


def ensure_artifact(path: Path, key: dict, build: Callable[[Path], None], what: str) -> tuple[Path, bool]:
    """(path, built): the artifact at `path`, built by `build(file)` unless one recorded with exactly
    `key` is already there. The artifact is renamed into place before its record, so an artifact
    without a record (a build cut short) is built again."""
    if cached_key(path) == key:
        log.debug("%s: reusing %s", what, path)
        return path, False
    started = time.monotonic()
    with atomic_path(path) as partial:
        build(partial)
        if partial.stat().st_size == 0:  # atomic_path hands the builder an empty file; one left empty is no artifact
            raise ModelFileError(f"{path}: building the {what} wrote nothing")
    record = {"key": key, "what": what, "bytes": path.stat().st_size,
              "build_seconds": round(time.monotonic() - started, 1),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with atomic_write(_meta_path(path), "w") as f:
        f.write(json.dumps(record, indent=1, sort_keys=True))
    log.info("%s: built %s in %.1f s", what, path, record["build_seconds"])
    return path, True


def list_artifacts(store: str | os.PathLike | None = None) -> list[dict]:
    """Every cached artifact's record, with its "path"; sorted by path. Unreadable records are skipped."""
    out = []
    for meta in sorted(cache_dir(store).glob("*/*.json")):
        path = meta.with_name(meta.name.removesuffix(".json"))
        record = _record(path)
        if record is not None:
            out.append({**record, "path": str(path)})
    return out


# --- exported graphs in the cache -----------------------------------------------------------------

def onnx_key(graph: str, config, weights_sha256: str, precision: str = "fp32") -> dict:
    """Everything an exported graph depends on."""
    import onnxscript

    return {"artifact": "onnx", "graph": graph, "weights_sha256": weights_sha256, "config": config.to_dict(),
            "precision": _check_precision(precision), "graph_format": GRAPH_FORMAT, "opset": OPSET,
            "exporter": f"torch {torch.__version__}, onnxscript {onnxscript.__version__}"}


def ensure_onnx(graph: str, model: nn.Module, weights_sha256: str, precision: str = "fp32",
                store: str | os.PathLike | None = None) -> Path:
    """The cached ONNX file of `graph`, exported first if needed (seconds for a small model, ~30 s
    for the full-size ones)."""
    key = onnx_key(graph, model.config, weights_sha256, precision)
    path = artifact_path(store, weights_sha256, f"{graph}-{precision}", key, ".onnx")
    if cached_key(path) != key:
        log.info("exporting %s (%s) to ONNX, once per model", graph, precision)
    try:
        return ensure_artifact(path, key, lambda file: export_onnx(graph, model, file, precision),
                               f"ONNX {graph} {precision}")[0]
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot write the exported {graph} graph ({exc.strerror or exc})") from None
