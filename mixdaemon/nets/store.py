"""Every MST model file, read and written in one place.

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

**Parameter predictors** (the param engine, mixing/param_estimation.py's ParamPredictor) are small
MLPs stored the same way, ``<store>/<name>.safetensors``, with metadata ::

      {"format": "mixdaemon-param-predictor", "format_version": 1, "created": "<UTC ISO date>",
       "slots": [...], "feature_size": N, "provenance": {...}}   # what it predicts, from what

All kinds share the store; each loader refuses the other kinds with a message that says which kind
the file holds, and `list_models` lists them all.

**The model store** is two folders of such files, searched in this order for a model by name:

- the user's store, where imported and trained models (and the built ONNX graphs and TensorRT plans,
  nets/onnx_export.py) are written: the ``store`` argument, else ``$MIXDAEMON_ENGINES``, else
  ``engines/`` in the per-user data folder (platformdirs: ``~/.local/share/mixdaemon/engines`` on
  Linux, honouring XDG_DATA_HOME; ``~/Library/Application Support/mixdaemon/engines`` on macOS;
  ``%LOCALAPPDATA%\\mixdaemon\\engines`` on Windows);
- the shipped models, read-only and always present: the repository's ``engines/`` folder, which a
  wheel installs as the data package ``mixdaemon/engines`` (pyproject.toml).

A user model of the same name as a shipped one is the one found; `list_models` shows both.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import platformdirs
import safetensors
import safetensors.torch
import torch
from torch import nn

from mixdaemon.errors import ConfigError, MixdaemonError, ModelFileError
from mixdaemon.files import atomic_path, file_sha256
from mixdaemon.nets.automix import ARCHITECTURES as AUTOMIX_ARCHITECTURES
from mixdaemon.nets.mst import ClonerConfig, EncoderConfig, FXencoder, MixFXcloner

log = logging.getLogger(__name__)

ENGINES_ENV = "MIXDAEMON_ENGINES"
PAIR_SUFFIX = ".safetensors"
FORMAT = "mixdaemon-mst-pair"
FORMAT_VERSION = 1
METADATA_KEY = "mixdaemon"
KINDS = {"fxencoder": (FXencoder, EncoderConfig), "mixfxcloner": (MixFXcloner, ClonerConfig)}
AUTOMIX_FORMAT = "mixdaemon-automix"
AUTOMIX_FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
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


# --- the store ------------------------------------------------------------------------------------

# Where the shipped models are: installed from a wheel, the data package beside this one; in a
# source checkout (editable installs included), engines/ at the repository's root.
_INSTALLED_SHIPPED = Path(__file__).resolve().parents[1] / "engines"
_CHECKOUT_SHIPPED = Path(__file__).resolve().parents[2] / "engines"


def shipped_store() -> Path:
    """The folder of the models that ship with mixdaemon (read-only)."""
    return _INSTALLED_SHIPPED if _INSTALLED_SHIPPED.is_dir() else _CHECKOUT_SHIPPED


def store_dir(store: str | os.PathLike | None = None) -> Path:
    """The user's store, where models are written: the argument, else $MIXDAEMON_ENGINES, else
    engines/ in the per-user data folder."""
    if store is not None:
        return Path(store).expanduser()
    if os.environ.get(ENGINES_ENV):
        return Path(os.environ[ENGINES_ENV]).expanduser()
    return platformdirs.user_data_path("mixdaemon", appauthor=False) / "engines"


def store_folders(store: str | os.PathLike | None = None) -> list[Path]:
    """The folders a model is looked up in by name, in order: the user's store, the shipped models."""
    user, shipped = store_dir(store), shipped_store()
    same = user.is_dir() and shipped.is_dir() and os.path.samefile(user, shipped)
    return [user] if same else [user, shipped]


def _where(store: str | os.PathLike | None) -> str:
    """The store's folders as an error names them."""
    return " or ".join(str(folder) for folder in store_folders(store))


def _pair_path(name: str, store: Path) -> Path:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"model pair name {name!r}: use letters, digits, '.', '_' and '-' (not first)")
    return store / f"{name}{PAIR_SUFFIX}"


def _stored_file(name: str, store: str | os.PathLike | None) -> Path | None:
    """The file of the model called `name`: the first of the store's folders that holds one."""
    for folder in store_folders(store):
        path = _pair_path(name, folder)
        if path.is_file():
            return path
    return None


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
    path = _pair_path(name, store_dir(store))
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
    _write_model_file(path, tensors, metadata)
    return _pair_info(path, metadata)


def _write_model_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write atomically: a reader never sees half a file."""
    with atomic_path(path) as partial:
        safetensors.torch.save_file(tensors, partial, metadata={METADATA_KEY: json.dumps(metadata)})


@contextlib.contextmanager
def _metadata_errors(path: Path):
    """A missing key or a bad value in a file's metadata → a ModelFileError naming the file."""
    try:
        yield
    except ModelFileError:
        raise
    except KeyError as e:
        raise ModelFileError(f"{path}: metadata key {e} is missing") from None
    except (MixdaemonError, TypeError) as e:
        raise ModelFileError(f"{path}: bad metadata ({e})") from None


def _pair_info(path: Path, metadata: dict) -> PairInfo:
    with _metadata_errors(path):
        if metadata["format"] != FORMAT or metadata["format_version"] != FORMAT_VERSION:
            raise ModelFileError(f"{path}: format {metadata['format']!r} version {metadata['format_version']!r} "
                                 f"(this mixdaemon reads {FORMAT!r} version {FORMAT_VERSION})")
        infos = {kind: ModelInfo(kind, config_cls.from_dict(metadata["models"][kind]["config"]),
                                 metadata["models"][kind]["weights_sha256"], metadata["models"][kind]["provenance"])
                 for kind, (_, config_cls) in KINDS.items()}
        return PairInfo(path.name.removesuffix(PAIR_SUFFIX), path, metadata["created"], infos["fxencoder"],
                        infos["mixfxcloner"], metadata["training"])


def _read_metadata(path: Path, what: str) -> dict:
    """The "mixdaemon" metadata of a model file, without reading its tensors."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as e:  # safetensors' header errors have no public base class
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise ModelFileError(f"{path}: no {METADATA_KEY!r} metadata: not a mixdaemon {what}")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: metadata is not a JSON object")
    return metadata


def read_pair_info(path: str | os.PathLike) -> PairInfo:
    """A pair file's metadata, without reading its tensors."""
    path = Path(path)
    metadata = _read_metadata(path, "model pair")
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


@dataclass(frozen=True)
class StoredModel:
    name: str  # the file name without .safetensors
    path: Path
    format: str
    metadata: dict
    hidden: bool  # a model of the same name earlier in the store is the one its name finds


def list_models(store: str | os.PathLike | None = None) -> list[StoredModel]:
    """Every readable model file in the store, the user's folder first, by name within each folder;
    unreadable files are skipped with a warning."""
    models, seen = [], set()
    for folder in store_folders(store):
        for path in sorted(folder.glob(f"*{PAIR_SUFFIX}")):
            try:
                metadata = _read_metadata(path, "model")
            except ModelFileError as e:
                log.warning("skipping %s", e)
                continue
            name = path.name.removesuffix(PAIR_SUFFIX)
            models.append(StoredModel(name, path, str(metadata.get("format")), metadata, hidden=name in seen))
            seen.add(name)
    return models


def model_path(name_or_path: str | os.PathLike, fmt: str, what: str, store: str | os.PathLike | None = None) -> Path:
    """The file of a model of format `fmt` given by store name (e.g. "automix-default") or by path;
    a missing name lists the store's models of that format."""
    given = Path(name_or_path)
    if given.suffix == PAIR_SUFFIX or len(given.parts) > 1:
        return given
    path = _stored_file(str(name_or_path), store)
    if path is None:
        names = ", ".join(dict.fromkeys(m.name for m in list_models(store) if m.format == fmt)) or "none"
        raise ModelFileError(f"no {what} named {str(name_or_path)!r} in {_where(store)} (available: {names})")
    return path


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
    _write_model_file(path, state, metadata)
    return _automix_info(path, metadata)


def _automix_info(path: Path, metadata: dict) -> AutomixModelInfo:
    if metadata.get("format") == FORMAT:
        raise ModelFileError(f"{path}: an MST model pair, not an automix model (use it with --engine neural)")
    with _metadata_errors(path):
        if metadata["format"] != AUTOMIX_FORMAT or metadata["format_version"] != AUTOMIX_FORMAT_VERSION:
            raise ModelFileError(f"{path}: format {metadata['format']!r} version {metadata['format_version']!r} "
                                 f"(this mixdaemon reads {AUTOMIX_FORMAT!r} version {AUTOMIX_FORMAT_VERSION})")
        architecture = metadata["architecture"]
        if architecture not in AUTOMIX_ARCHITECTURES:
            raise ModelFileError(f"{path}: unknown automix architecture {architecture!r}")
        AUTOMIX_ARCHITECTURES[architecture][1].from_dict(metadata["config"])  # a bad config fails here, by name
        return AutomixModelInfo(path.name.removesuffix(PAIR_SUFFIX), path, metadata["created"], architecture,
                                metadata["config"], metadata["weights_sha256"], metadata["normalization"],
                                metadata["provenance"], metadata["training"])


def read_automix_info(path: str | os.PathLike) -> AutomixModelInfo:
    """An automix model file's metadata, without reading its tensors."""
    path = Path(path)
    return _automix_info(path, _read_metadata(path, "automix model"))


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


# --- parameter predictors ---------------------------------------------------------------------------

PREDICTOR_FORMAT = "mixdaemon-param-predictor"
PREDICTOR_FORMAT_VERSION = 1


def save_param_predictor(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], description: dict) -> Path:
    """Write a parameter predictor (float32 tensors) atomically; `description` (slots, feature_size,
    provenance) goes into its metadata."""
    path = Path(path)
    metadata = {"format": PREDICTOR_FORMAT, "format_version": PREDICTOR_FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **description}
    _write_model_file(path, {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()},
                      metadata)
    return path


def load_param_predictor(name_or_path: str | os.PathLike, store: str | os.PathLike | None = None):
    """(tensors as float64 numpy arrays, metadata, path, file sha256) of a parameter predictor by
    store name (e.g. "params-default") or path."""
    try:
        path = model_path(name_or_path, PREDICTOR_FORMAT, "parameter predictor", store)
        metadata = _read_metadata(path, "parameter predictor")
    except ModelFileError as e:
        raise ModelFileError(f"{e}; train one with `mixdaemon train params`") from None
    if metadata.get("format") != PREDICTOR_FORMAT or metadata.get("format_version") != PREDICTOR_FORMAT_VERSION:
        raise ModelFileError(f"{path}: format {metadata.get('format')!r} version {metadata.get('format_version')!r}, "
                             f"not a parameter predictor ({PREDICTOR_FORMAT!r} version {PREDICTOR_FORMAT_VERSION}; "
                             "train one with `mixdaemon train params`)")
    try:
        tensors = {k: v.double().numpy() for k, v in safetensors.torch.load_file(path).items()}
    except Exception as e:
        raise ModelFileError(f"{path}: cannot read the tensors ({e})") from None
    return tensors, metadata, path, file_sha256(path)
