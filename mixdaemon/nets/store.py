"""The networks' model files, read and written in one place: MST pairs, automix models, and the
authors' checkpoints they are imported from. Where the files are and how a name finds one, and
the torch-free parameter predictors, are nets/repo.py's; this module is the part that needs torch.

**Authors' checkpoints** (``FXencoder_ps.pt``, ``MixFXcloner_ps.pt``): ``torch.save`` of
``{"model": state_dict, ...}`` from a DDP-wrapped model, so every key starts with ``module.``; other
entries (optimizer, scheduler, epoch) are ignored. They are read with ``weights_only=True`` (no
arbitrary unpickling) and ``map_location="cpu"`` (they may hold CUDA tensors), every tensor name and
shape is checked against the architecture, and a mismatch raises ``ModelFileError`` naming the
tensors. They are only ever imported, never used directly.

**The project's format: one file per model pair.** A pair is an FXencoder and the MixFXcloner that
was trained on its embeddings; it is stored as ONE safetensors file, ``<store>/<name>.safetensors``:

- tensors ``fxencoder.<state_dict name>`` and ``mixfxcloner.<state_dict name>`` (the authors' names);
- safetensors metadata key ``"mixdaemon"``: a JSON object ::

      {"format": "mixdaemon-mst-pair", "format_version": 1, "created": "<UTC ISO date>",
       "training": {...} | null,                        # free-form, for pairs we train
       "models": {"fxencoder":   {"config": EncoderConfig.to_dict(), "weights_sha256": "...",
                                  "provenance": {...}},  # e.g. source file and its sha256
                  "mixfxcloner": {"config": ClonerConfig.to_dict(), ...}}}

Why one file for both: a cloner is only meaningful with the encoder whose embeddings it was trained
on, so one name gives one file that cannot be half-copied or mixed up with another pair's encoder,
and the encoder/cloner agreement (embedding size = cond_dim) is checked once, when it is written.
The cost is that pairs sharing a frozen encoder each hold a copy of it (326 MB); each model keeps
its own ``weights_sha256`` so the cache of exported graphs and TensorRT plans can key on one model.

**Automix models** (FxNorm-automix, docs/ALGORITHMS.md §6) are single networks, one safetensors file
each, ``<store>/<name>.safetensors``: the state_dict's tensor names as they are, and metadata key
``"mixdaemon"`` ::

      {"format": "mixdaemon-automix", "format_version": 1, "created": "<UTC ISO date>",
       "architecture": "automix" | "wave-u-net", "config": {...}, "weights_sha256": "...",
       "normalization": {"order": "fxnorm", "stats_sha256": "..."},  # what its inputs must be
       "provenance": {...}, "training": {...} | null}
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import safetensors.torch
import torch
from torch import nn

from mixdaemon.errors import ConfigError, ModelFileError
from mixdaemon.files import file_sha256
from mixdaemon.nets.automix import ARCHITECTURES as AUTOMIX_ARCHITECTURES
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner
from mixdaemon.nets.repo import (
    MODEL_SUFFIX,
    list_models,
    metadata_errors,
    model_path,
    named_file,
    read_metadata,
    store_dir,
    write_model_file,
)

log = logging.getLogger(__name__)

FORMAT = "mixdaemon-mst-pair"
FORMAT_VERSION = 1
KINDS = {"fxencoder": (FXencoder, EncoderConfig), "mixfxcloner": (MixFXcloner, ClonerConfig)}
AUTOMIX_FORMAT = "mixdaemon-automix"
AUTOMIX_FORMAT_VERSION = 1
_LISTED = 4  # tensor names spelled out per kind of mismatch; the rest are counted


@dataclass(frozen=True)
class ModelInfo:
    kind: str  # "fxencoder" | "mixfxcloner"
    config: EncoderConfig | ClonerConfig
    weights_sha256: str
    provenance: dict


@dataclass(frozen=True)
class PairInfo:
    name: str  # the file name without .safetensors
    path: Path
    created: str
    encoder: ModelInfo
    cloner: ModelInfo
    training: dict | None


@dataclass(frozen=True)
class AutomixModelInfo:
    name: str  # the file name without .safetensors
    path: Path
    created: str
    architecture: str  # "automix" | "wave-u-net" (nets/automix.py's ARCHITECTURES)
    config: dict
    weights_sha256: str
    normalization: dict  # {"order": ..., "stats_sha256": ...}: how the inputs were FX-normalized
    provenance: dict
    training: dict | None


# --- checks ---------------------------------------------------------------------------------------

def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in sorted-name order: name, dtype, shape, then the raw bytes.

    Independent of dict order, device and file format, so an imported checkpoint and the stored
    pair hash the same. It covers the weights only: two configs that differ only in dilation give
    the same shapes, so the artifact cache (nets/onnx_export.py) keys on the config too.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def _checked(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str,
             kind: str) -> dict[str, torch.Tensor]:
    """The state_dict in the model's order and dtypes, or ModelFileError naming every bad tensor."""
    expected = model.state_dict()
    missing = [n for n in expected if n not in state_dict]
    unexpected = [n for n in state_dict if n not in expected]
    wrong_shape = [f"{n} {list(state_dict[n].shape)} (expected {list(t.shape)})"
                   for n, t in expected.items() if n in state_dict and state_dict[n].shape != t.shape]
    wrong_dtype = [f"{n} {state_dict[n].dtype} (expected {t.dtype})" for n, t in expected.items()
                   if n in state_dict and state_dict[n].dtype.is_floating_point != t.dtype.is_floating_point]
    problems = [f"{what} {_listing(items)}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape),
                 ("wrong dtype", wrong_dtype)) if items]
    if problems:
        raise ModelFileError(f"{source}: does not match the {kind} architecture: {'; '.join(problems)}")
    # NaN and Inf always reach the sum, so a finite sum proves a finite tensor (10× faster than an
    # elementwise check over 81 M weights); only a non-finite sum, which may be overflow, is checked
    not_finite = [n for n, t in state_dict.items() if t.is_floating_point()
                  and not torch.isfinite(t.sum()) and not torch.isfinite(t).all()]
    if not_finite:
        raise ModelFileError(f"{source}: NaN or Inf in {_listing(not_finite)}")
    return {n: state_dict[n].to(t.dtype) for n, t in expected.items()}


def _build(kind: str, config, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """The model with these weights, in eval mode. Built on the meta device, so that no time goes
    into random initialisation of weights that are replaced at once."""
    model_cls = KINDS[kind][0] if kind in KINDS else AUTOMIX_ARCHITECTURES[kind][0]
    with torch.device("meta"):
        model = model_cls(config)
    model.load_state_dict(_checked(state_dict, model, source, kind), strict=True, assign=True)
    return model.eval()


# --- authors' checkpoints -------------------------------------------------------------------------

def load_authors_checkpoint(path: str | os.PathLike, kind: str) -> nn.Module:
    """An authors'-format checkpoint of the default-size FXencoder or MixFXcloner, checked, eval mode."""
    path = Path(path)
    if kind not in KINDS:
        raise ConfigError(f"model kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any class outside torch's allowlist instead of running its code
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise ModelFileError(f"{path}: holds Python objects other than tensors ({unsafe[1]}), "
                                 f"refused for safety") from None
        raise ModelFileError(f"{path}: not a readable torch checkpoint (damaged, or not a torch file)") from None
    except Exception as e:  # torch raises several types for files that are not checkpoints
        raise ModelFileError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})".split("\n")[0]) from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = ckpt["model"]
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt  # a bare state_dict, as torch.save(model.state_dict()) writes
    else:
        keys = ", ".join(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelFileError(f"{path}: no 'model' state_dict in the checkpoint (found: {keys})")
    state = {name.removeprefix("module."): t for name, t in state.items()}  # saved from a DDP wrapper
    return _build(kind, KINDS[kind][1](), state, str(path))


def import_authors_checkpoints(encoder_path: str | os.PathLike, cloner_path: str | os.PathLike,
                               store: str | os.PathLike | None = None, name: str = "mst-official",
                               overwrite: bool = False) -> Path:
    """Check the authors' FXencoder and MixFXcloner files and store them as one pair; returns its path."""
    path = named_file(name, store_dir(store))
    if path.exists() and not overwrite:
        raise ModelFileError(f"{path}: a model pair named {name!r} already exists (remove it or import with overwrite)")
    models, provenance = {}, {}
    for kind, source in (("fxencoder", Path(encoder_path)), ("mixfxcloner", Path(cloner_path))):
        models[kind] = load_authors_checkpoint(source, kind)
        provenance[kind] = {"source": str(source.resolve()), "source_sha256": file_sha256(source),
                            "source_format": "authors' torch checkpoint (jhtonyKoo/music_mixing_style_transfer)"}
    save_pair(path, models["fxencoder"], models["mixfxcloner"],
              encoder_provenance=provenance["fxencoder"], cloner_provenance=provenance["mixfxcloner"])
    return path


# --- the project's pair files ---------------------------------------------------------------------

def save_pair(path: str | os.PathLike, encoder: FXencoder, cloner: MixFXcloner, *,
              encoder_provenance: dict | None = None, cloner_provenance: dict | None = None,
              training: dict | None = None) -> PairInfo:
    """Write a pair file (atomically: a reader never sees half a file); returns what it recorded."""
    path = Path(path)
    if cloner.config.cond_dim != encoder.config.embedding_dim:
        raise ConfigError(f"{path}: the cloner's cond_dim {cloner.config.cond_dim} differs from the encoder's "
                          f"embedding size {encoder.config.embedding_dim}")
    tensors, models = {}, {}
    for kind, model, provenance in (("fxencoder", encoder, encoder_provenance),
                                    ("mixfxcloner", cloner, cloner_provenance)):
        state = {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
        tensors.update({f"{kind}.{n}": t for n, t in state.items()})
        models[kind] = {"config": model.config.to_dict(), "weights_sha256": weights_sha256(state),
                        "provenance": provenance or {}}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "training": training, "models": models}
    write_model_file(path, tensors, metadata, safetensors.torch.save_file)
    return _pair_info(path, metadata)


def _pair_info(path: Path, metadata: dict) -> PairInfo:
    with metadata_errors(path):
        if metadata["format"] != FORMAT or metadata["format_version"] != FORMAT_VERSION:
            raise ModelFileError(f"{path}: format {metadata['format']!r} version {metadata['format_version']!r} "
                                 f"(this mixdaemon reads {FORMAT!r} version {FORMAT_VERSION})")
        infos = {kind: ModelInfo(kind, config_cls.from_dict(metadata["models"][kind]["config"]),
                                 metadata["models"][kind]["weights_sha256"], metadata["models"][kind]["provenance"])
                 for kind, (_, config_cls) in KINDS.items()}
        return PairInfo(path.name.removesuffix(MODEL_SUFFIX), path, metadata["created"], infos["fxencoder"],
                        infos["mixfxcloner"], metadata["training"])


def read_pair_info(path: str | os.PathLike) -> PairInfo:
    """A pair file's metadata, without reading its tensors."""
    path = Path(path)
    metadata = read_metadata(path, "model pair")
    if metadata.get("format") == AUTOMIX_FORMAT:
        raise ModelFileError(f"{path}: an automix model, not an MST model pair (use it with mixdaemon automix)")
    return _pair_info(path, metadata)


def load_pair_file(path: str | os.PathLike, device: str | torch.device = "cpu",
                   verify: bool = True) -> tuple[FXencoder, MixFXcloner, PairInfo]:
    """(encoder, cloner, info) from a pair file, in eval mode on `device`.

    verify: recompute each model's weights hash and refuse a file whose weights differ from the
    recorded ones (a damaged or hand-edited file); about 0.3 s for the official pair.
    """
    info = read_pair_info(path)
    try:
        tensors = safetensors.torch.load_file(info.path)
    except Exception as e:
        raise ModelFileError(f"{info.path}: cannot read the tensors ({e})") from None
    models = []
    for model_info in (info.encoder, info.cloner):
        prefix = f"{model_info.kind}."
        state = {n.removeprefix(prefix): t for n, t in tensors.items() if n.startswith(prefix)}
        if verify and weights_sha256(state) != model_info.weights_sha256:
            raise ModelFileError(f"{info.path}: the {model_info.kind} weights do not match their recorded sha256 "
                                 f"(damaged or edited file)")
        models.append(_build(model_info.kind, model_info.config, state, f"{info.path} [{model_info.kind}]").to(device))
    encoder, cloner = models
    return encoder, cloner, info


def load_pair(name_or_path: str | os.PathLike, store: str | os.PathLike | None = None,
              device: str | torch.device = "cpu") -> tuple[FXencoder, MixFXcloner, PairInfo]:
    """A pair by store name (e.g. "mst-official") or by file path; (encoder, cloner, info), eval mode."""
    return load_pair_file(model_path(name_or_path, FORMAT, "model pair", store), device)


def list_pairs(store: str | os.PathLike | None = None) -> list[PairInfo]:
    """The readable pairs in the store (the user's, then the shipped ones), by name within each
    folder; unreadable files are skipped with a warning."""
    pairs = []
    for model in list_models(store):
        if model.format == FORMAT:  # other kinds share the store
            try:
                pairs.append(_pair_info(model.path, model.metadata))
            except ModelFileError as e:
                log.warning("skipping %s", e)
    return pairs


# --- automix models ---------------------------------------------------------------------------------

def save_automix_model(path: str | os.PathLike, model: nn.Module, architecture: str, *, normalization: dict,
                       provenance: dict | None = None, training: dict | None = None) -> AutomixModelInfo:
    """Write an automix model file (atomically); returns what it recorded."""
    path = Path(path)
    if architecture not in AUTOMIX_ARCHITECTURES:
        raise ConfigError(f"architecture {architecture!r}: expected one of {', '.join(AUTOMIX_ARCHITECTURES)}")
    state = {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
    metadata = {"format": AUTOMIX_FORMAT, "format_version": AUTOMIX_FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "architecture": architecture, "config": model.config.to_dict(), "weights_sha256": weights_sha256(state),
                "normalization": normalization, "provenance": provenance or {}, "training": training}
    write_model_file(path, state, metadata, safetensors.torch.save_file)
    return _automix_info(path, metadata)


def _automix_info(path: Path, metadata: dict) -> AutomixModelInfo:
    if metadata.get("format") == FORMAT:
        raise ModelFileError(f"{path}: an MST model pair, not an automix model (use it with --engine neural)")
    with metadata_errors(path):
        if metadata["format"] != AUTOMIX_FORMAT or metadata["format_version"] != AUTOMIX_FORMAT_VERSION:
            raise ModelFileError(f"{path}: format {metadata['format']!r} version {metadata['format_version']!r} "
                                 f"(this mixdaemon reads {AUTOMIX_FORMAT!r} version {AUTOMIX_FORMAT_VERSION})")
        architecture = metadata["architecture"]
        if architecture not in AUTOMIX_ARCHITECTURES:
            raise ModelFileError(f"{path}: unknown automix architecture {architecture!r}")
        AUTOMIX_ARCHITECTURES[architecture][1].from_dict(metadata["config"])  # a bad config fails here, by name
        return AutomixModelInfo(path.name.removesuffix(MODEL_SUFFIX), path, metadata["created"], architecture,
                                metadata["config"], metadata["weights_sha256"], metadata["normalization"],
                                metadata["provenance"], metadata["training"])


def read_automix_info(path: str | os.PathLike) -> AutomixModelInfo:
    """An automix model file's metadata, without reading its tensors."""
    path = Path(path)
    return _automix_info(path, read_metadata(path, "automix model"))


def load_automix_model(name_or_path: str | os.PathLike, store: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, AutomixModelInfo]:
    """(model in eval mode on `device`, info) of an automix model by store name or path; the
    weights are checked against their recorded sha256."""
    info = read_automix_info(model_path(name_or_path, AUTOMIX_FORMAT, "automix model", store))
    try:
        state = safetensors.torch.load_file(info.path)
    except Exception as e:
        raise ModelFileError(f"{info.path}: cannot read the tensors ({e})") from None
    if weights_sha256(state) != info.weights_sha256:
        raise ModelFileError(f"{info.path}: the weights do not match their recorded sha256 (damaged or edited file)")
    config = AUTOMIX_ARCHITECTURES[info.architecture][1].from_dict(info.config)
    return _build(info.architecture, config, state, str(info.path)).to(device), info
