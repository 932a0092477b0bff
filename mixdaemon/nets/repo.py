"""Where model files are and how one is found, read without torch: the model store's folders, a
model's file by name, every file's metadata, and the parameter predictors (numpy MLPs). A job whose
engine needs no network (the param engine) reads its model through this module alone, so it never
pays torch's import; the networks' files (MST pairs, automix models) are nets/store.py's.

**The model store** is two folders of ``<name>.safetensors`` files, searched in this order for a
model by name:

- the user's store, where imported and trained models (and the built ONNX graphs and TensorRT plans,
  nets/onnx_export.py) are written: the ``store`` argument, else ``$MIXDAEMON_ENGINES``, else
  ``engines/`` in the per-user data folder (platformdirs: ``~/.local/share/mixdaemon/engines`` on
  Linux, honouring XDG_DATA_HOME; ``~/Library/Application Support/mixdaemon/engines`` on macOS;
  ``%LOCALAPPDATA%\\mixdaemon\\engines`` on Windows);
- the shipped models, read-only and always present: the repository's ``engines/`` folder, which a
  wheel installs as the data package ``mixdaemon/engines`` (pyproject.toml).

A user model of the same name as a shipped one is the one found; `list_models` shows both.

Every kind of model file holds safetensors metadata key ``"mixdaemon"``: a JSON object whose
``"format"`` says the kind (nets/store.py documents the pairs' and automix models'). All kinds share
the store; each loader refuses the other kinds with a message that says which kind the file holds.

**Parameter predictors** (the param engine, mixing/param_estimation.py's ParamPredictor) are small
MLPs, float32 tensors, with metadata ::

      {"format": "mixdaemon-param-predictor", "format_version": 1, "created": "<UTC ISO date>",
       "slots": [...], "feature_size": N, "provenance": {...}}   # what it predicts, from what
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import platformdirs
import safetensors
import safetensors.numpy

from mixdaemon.errors import ConfigError, MixdaemonError, ModelFileError
from mixdaemon.files import atomic_path, file_sha256

log = logging.getLogger(__name__)

ENGINES_ENV = "MIXDAEMON_ENGINES"
MODEL_SUFFIX = ".safetensors"
METADATA_KEY = "mixdaemon"
PREDICTOR_FORMAT = "mixdaemon-param-predictor"
PREDICTOR_FORMAT_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Where the shipped models are: installed from a wheel, the data package beside this one; in a
# source checkout (editable installs included), engines/ at the repository's root.
_INSTALLED_SHIPPED = Path(__file__).resolve().parents[1] / "engines"
_CHECKOUT_SHIPPED = Path(__file__).resolve().parents[2] / "engines"


# --- the store ------------------------------------------------------------------------------------

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


def named_file(name: str, folder: Path) -> Path:
    """The file a model called `name` has in `folder`; a name that cannot be a file name is refused."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (not first)")
    return folder / f"{name}{MODEL_SUFFIX}"


def _stored_file(name: str, store: str | os.PathLike | None) -> Path | None:
    """The file of the model called `name`: the first of the store's folders that holds one."""
    for folder in store_folders(store):
        path = named_file(name, folder)
        if path.is_file():
            return path
    return None


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
        for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")):
            try:
                metadata = read_metadata(path, "model")
            except ModelFileError as e:
                log.warning("skipping %s", e)
                continue
            name = path.name.removesuffix(MODEL_SUFFIX)
            models.append(StoredModel(name, path, str(metadata.get("format")), metadata, hidden=name in seen))
            seen.add(name)
    return models


def model_path(name_or_path: str | os.PathLike, fmt: str, what: str, store: str | os.PathLike | None = None) -> Path:
    """The file of a model of format `fmt` given by store name (e.g. "automix-default") or by path;
    a missing name lists the store's models of that format."""
    given = Path(name_or_path)
    if given.suffix == MODEL_SUFFIX or len(given.parts) > 1:
        return given
    path = _stored_file(str(name_or_path), store)
    if path is None:
        names = ", ".join(dict.fromkeys(m.name for m in list_models(store) if m.format == fmt)) or "none"
        raise ModelFileError(f"no {what} named {str(name_or_path)!r} in {_where(store)} (available: {names})")
    return path


# --- model files ------------------------------------------------------------------------------------

def write_model_file(path: Path, tensors: Mapping, metadata: dict,
                     save_file: Callable = safetensors.numpy.save_file) -> None:
    """Write atomically (a reader never sees half a file): `tensors` by `save_file` (safetensors'
    numpy writer, or its torch one for torch tensors), `metadata` under the "mixdaemon" key."""
    with atomic_path(path) as partial:
        save_file(tensors, partial, metadata={METADATA_KEY: json.dumps(metadata)})


@contextlib.contextmanager
def metadata_errors(path: Path):
    """A missing key or a bad value in a file's metadata → a ModelFileError naming the file."""
    try:
        yield
    except ModelFileError:
        raise
    except KeyError as e:
        raise ModelFileError(f"{path}: metadata key {e} is missing") from None
    except (MixdaemonError, TypeError) as e:
        raise ModelFileError(f"{path}: bad metadata ({e})") from None


def read_metadata(path: Path, what: str) -> dict:
    """The "mixdaemon" metadata of a model file, without reading its tensors."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with safetensors.safe_open(path, framework="np") as f:
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


# --- parameter predictors ---------------------------------------------------------------------------

def save_param_predictor(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], description: dict) -> Path:
    """Write a parameter predictor (float32 tensors) atomically; `description` (slots, feature_size,
    provenance) goes into its metadata."""
    path = Path(path)
    metadata = {"format": PREDICTOR_FORMAT, "format_version": PREDICTOR_FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **description}
    write_model_file(path, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata)
    return path


def load_param_predictor(name_or_path: str | os.PathLike, store: str | os.PathLike | None = None):
    """(tensors as float64 numpy arrays, metadata, path, file sha256) of a parameter predictor by
    store name (e.g. "params-default") or path."""
    try:
        path = model_path(name_or_path, PREDICTOR_FORMAT, "parameter predictor", store)
        metadata = read_metadata(path, "parameter predictor")
    except ModelFileError as e:
        raise ModelFileError(f"{e}; train one with `mixdaemon train params`") from None
    if metadata.get("format") != PREDICTOR_FORMAT or metadata.get("format_version") != PREDICTOR_FORMAT_VERSION:
        raise ModelFileError(f"{path}: format {metadata.get('format')!r} version {metadata.get('format_version')!r}, "
                             f"not a parameter predictor ({PREDICTOR_FORMAT!r} version {PREDICTOR_FORMAT_VERSION}; "
                             "train one with `mixdaemon train params`)")
    try:
        tensors = {k: v.astype(np.float64) for k, v in safetensors.numpy.load_file(path).items()}
    except Exception as e:
        raise ModelFileError(f"{path}: cannot read the tensors ({e})") from None
    return tensors, metadata, path, file_sha256(path)
