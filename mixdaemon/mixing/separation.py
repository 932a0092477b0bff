"""A full mix → its four stems (drums, bass, other, vocals) with demucs, cached on disk by content.

The model comes from demucs's own loader: from a local folder of demucs models when
`model_dir` is given (offline), otherwise from the demucs download servers, which cache it on the
user's machine. Before it downloads, the download server is asked for a connection (a few seconds at
most); when none comes, only the download cache is read and a model not in it fails at once, in one
line: demucs's own loader would retry for half a minute, logging each try. (Models that demucs's
older servers put in torch's hub cache are not looked for then.) The model is loaded only when
something actually has to be separated, so a cache hit costs a hash of the audio and one file read.

Cache: one uncompressed `<key>.npz` per separation (the four stems as float32 (n, 2), so a hit is
bit-exact), where the key is the sha256 of the audio samples, the model identity (name, demucs
version and, for a local folder, the sha256 of the model files) and the separation settings.
Entries are written with files.atomic_write, so a crash never leaves a partial entry; a corrupt
entry is ignored and rewritten. Nothing is ever evicted: the folder can be deleted at any time.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import socket
import sys
import threading
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import demucs
import huggingface_hub.constants as hub
import numpy as np
import torch
import yaml
from demucs.apply import BagOfModels, apply_model
from demucs.hf import get_hf_model
from demucs.pretrained import get_model
from demucs.repo import LocalRepo, ModelLoadingError

from mixdaemon import defaults
from mixdaemon.audio.dsp import WORKING_RATE
from mixdaemon.audio.io import resample
from mixdaemon.audio.stems import STEM_NAMES
from mixdaemon.errors import ModelFileError, SeparationUnavailable
from mixdaemon.files import atomic_write, file_sha256
from mixdaemon.progress import Progress, no_progress

log = logging.getLogger(__name__)

CACHE_ENV = "MIXDAEMON_CACHE"
# Part of every cache key: bump it when the stored layout or the separation maths change.
CACHE_FORMAT = "mixdaemon-separation-v1"
# The setting that names a local model folder, as the user sees it (config.toml, CLI).
MODEL_DIR_SETTING = "separation_dir"
STEMS_INSTEAD = ("give a folder of stems (drums/bass/other/vocals) instead, or set "
                 f"{MODEL_DIR_SETTING} ([transfer] in the config, --separation-dir) to a folder with demucs models")


def default_cache_dir() -> Path:
    """$MIXDAEMON_CACHE/separation when that is set, else the platform's per-user cache folder
    (~/.cache/mixdaemon/separation on Linux, honouring XDG_CACHE_HOME)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "separation"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mixdaemon" / "separation"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_CONNECT_SECONDS = 3.0
_HUB_SWITCH = threading.Lock()  # hub.HF_HUB_OFFLINE is one switch for the whole process


def _download_server_reachable() -> bool:
    """Whether demucs's download server takes a connection; also true where a proxy is set (the
    downloads go through it) and false in the hub's offline mode (HF_HUB_OFFLINE)."""
    if hub.HF_HUB_OFFLINE:
        return False
    url = urllib.parse.urlsplit(hub.ENDPOINT)
    if urllib.request.getproxies().get(url.scheme) and not urllib.request.proxy_bypass(url.hostname):
        return True
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=_CONNECT_SECONDS).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline():
    with _HUB_SWITCH:
        previous, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
        try:
            yield
        finally:
            hub.HF_HUB_OFFLINE = previous


class Separator:
    """Separates full mixes into STEM_NAMES with one demucs model (a single model or a bag).

    `model` is a demucs model name ("htdemucs", "mdx_extra", ...) or model signature;
    `model_dir` a folder of demucs models (`<sig>[-<checksum>].th` packages and `<name>.yaml`
    bags), or None to let demucs download the model. `shifts` > 0 averages that many randomly
    time-shifted passes (demucs's "shift trick", seeded by the audio so results repeat); `overlap`
    is the fraction by which demucs's chunks overlap. Computation uses the current torch thread
    setting. Not thread-safe: give each worker thread its own Separator.
    """

    def __init__(self, model: str = defaults.SEPARATION_MODEL, model_dir: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 shifts: int = 0, overlap: float = 0.25):
        if not isinstance(shifts, int) or shifts < 0:
            raise ValueError(f"Separator(shifts={shifts!r}): must be a whole number >= 0")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"Separator(overlap={overlap!r}): must be in [0, 1)")
        self.model_name = model
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.device = torch.device(device)
        self.shifts = shifts
        self.overlap = overlap
        self._model: torch.nn.Module | None = None
        self._identity: str | None = None

    @property
    def model_identity(self) -> str:
        """What the model is, for cache keys: name and demucs version, plus the content hash of
        the model files when they come from a local folder (so replacing them invalidates the
        cache). Raises SeparationUnavailable when the local folder lacks the model."""
        if self._identity is None:
            identity = f"demucs {demucs.__version__} model {self.model_name}"
            if self.model_dir is not None:
                files = self._local_model_files()
                identity += "".join(f" {f.name}:{file_sha256(f)}" for f in files)
            self._identity = identity
        return self._identity

    def _unavailable(self, problem: str) -> SeparationUnavailable:
        return SeparationUnavailable(f"{problem}: {STEMS_INSTEAD}")

    def _local_model_files(self) -> list[Path]:
        """The files demucs will load for the model name from model_dir: a `.th` package, or a
        `.yaml` bag and the packages it lists (demucs's own LocalRepo decides the naming)."""
        folder = self.model_dir
        where = f"demucs model '{self.model_name}' in {MODEL_DIR_SETTING} {folder}"
        if not folder.is_dir():
            raise self._unavailable(f"{where}: no such folder")
        try:
            packages = LocalRepo(folder).list_model()
        except (OSError, ModelLoadingError) as exc:
            raise self._unavailable(f"{where}: {_one_line(exc)}") from None
        if self.model_name in packages:
            return [Path(packages[self.model_name])]
        bag_file = folder / f"{self.model_name}.yaml"
        if not bag_file.is_file():
            available = sorted(set(packages) | {p.stem for p in folder.glob("*.yaml")})
            holds = ", ".join(available) if available else "no demucs models"
            raise self._unavailable(f"{where}: not found (the folder holds {holds})")
        try:
            signatures = yaml.safe_load(bag_file.read_text())["models"]
        except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
            raise self._unavailable(f"{bag_file}: not a demucs bag of models ({_one_line(exc)})") from None
        missing = [sig for sig in signatures if sig not in packages]
        if missing:
            raise self._unavailable(f"{bag_file}: lists models {', '.join(missing)} that are not in {folder}")
        return [bag_file] + [Path(packages[sig]) for sig in signatures]

    def _load_model(self) -> torch.nn.Module:
        """Called after model_identity, which has already named a missing folder or model."""
        if self._model is not None:
            return self._model
        offline = self.model_dir is None and not _download_server_reachable()
        if offline:
            log.info("loading demucs model %s from the download cache %s (offline)", self.model_name,
                     hub.HF_HUB_CACHE)
            try:
                with _hub_offline():
                    model = get_hf_model(self.model_name.removeprefix("hf://"))
            except Exception as exc:
                raise self._unavailable(
                    f"demucs model '{self.model_name}': not downloaded yet (not in {hub.HF_HUB_CACHE}) and "
                    f"{urllib.parse.urlsplit(hub.ENDPOINT).hostname} cannot be reached to download it") from exc
            return self._checked(model)
        if self.model_dir is not None:
            where = f"{MODEL_DIR_SETTING} {self.model_dir}"
        else:
            where = f"the demucs download servers (no {MODEL_DIR_SETTING} set)"
        log.info("loading demucs model %s from %s", self.model_name, where)
        try:
            model = get_model(self.model_name, repo=self.model_dir)
        except (Exception, SystemExit) as exc:
            # demucs reports some failures (e.g. a quantized model without diffq) by sys.exit
            # after printing to stderr; a daemon must survive those too.
            reason = f"demucs exited with status {exc.code}" if isinstance(exc, SystemExit) else _one_line(exc)
            raise self._unavailable(
                f"demucs model '{self.model_name}' could not be loaded from {where} ({reason})") from exc
        return self._checked(model)

    def _checked(self, model: torch.nn.Module) -> torch.nn.Module:
        """The loaded model, kept for the next separation, if mixdaemon can use it."""
        if model.audio_channels != 2:
            raise ModelFileError(f"demucs model '{self.model_name}': takes {model.audio_channels} "
                                 "audio channels, mixdaemon needs a stereo model")
        missing = [s for s in STEM_NAMES if s not in model.sources]
        if missing:
            raise ModelFileError(f"demucs model '{self.model_name}': has no {', '.join(missing)} "
                                 f"source (it gives {', '.join(model.sources)})")
        self._model = model.to(self.device)
        return self._model

    def _cache_path(self, audio: np.ndarray) -> Path:
        key = hashlib.sha256()
        key.update(f"{CACHE_FORMAT}|{self.model_identity}|shifts={self.shifts}|overlap={self.overlap!r}"
                   f"|rate={WORKING_RATE}|shape={audio.shape}|".encode())
        key.update(memoryview(audio).cast("B"))
        return self.cache_dir / f"{key.hexdigest()}.npz"

    def separate(self, audio: np.ndarray, progress: Progress = no_progress) -> dict[str, np.ndarray]:
        """Stems of a float32 (n, 2) mixture at 44.1 kHz: {name: float32 (n, 2)} for STEM_NAMES.

        `progress("separating", fraction)` is called after each model pass over a chunk of audio,
        and with fraction 1 at the end (on a cache hit: once). Raises
        SeparationUnavailable when the model cannot be loaded."""
        audio = _checked_audio(audio)
        path = self._cache_path(audio)
        stems = _read_cache(path, audio.shape[0])
        if stems is not None:
            log.info("stems of this mixture found in the cache (%s)", path)
            progress("separating", 1.0)
            return stems
        # Seeded by the content, so a run with shifts gives the same stems every time.
        stems = self._run_model(audio, progress, seed=int(path.stem[:16], 16))
        _write_cache(path, stems)
        return stems

    def _run_model(self, audio: np.ndarray, progress: Progress, seed: int) -> dict[str, np.ndarray]:
        model = self._load_model()
        n = audio.shape[0]
        x = resample(audio, WORKING_RATE, model.samplerate)
        mix = torch.from_numpy(np.ascontiguousarray(x.T))
        # The demucs CLI and API standardise the mixture by its mono mean and deviation before the
        # model and undo it after, and the models expect it. (Population deviation here, so a
        # one-sample input stays finite; on real lengths it equals theirs to ~1e-7.)
        mono = mix.mean(0)
        mean, std = mono.mean(), mono.std(correction=0) + 1e-8
        total = _pass_count(model, mix.shape[-1], self.shifts, self.overlap)
        done = 0

        def on_chunk(info: dict) -> None:
            nonlocal done
            if info.get("state") == "end":
                done += 1
                progress("separating", min(done, total) / total)

        random_state = random.getstate()  # apply_model draws its shifts from the global generator
        random.seed(seed)
        try:
            with torch.inference_mode():
                out = apply_model(model, ((mix - mean) / std)[None], shifts=self.shifts, split=True,
                                  overlap=self.overlap, device=self.device, num_workers=0,
                                  callback=on_chunk)[0]
                out = out * std + mean
        finally:
            random.setstate(random_state)
        if done < total:
            progress("separating", 1.0)
        sources = list(model.sources)
        # Extra sources of 6-stem models (guitar, piano) belong to "other", so the stems still sum
        # to the mixture the model heard.
        extra = [i for i, s in enumerate(sources) if s not in STEM_NAMES]
        stems = {}
        for name in STEM_NAMES:
            indices = [sources.index(name)] + (extra if name == "other" else [])
            y = out[indices].sum(0).T.numpy()
            y = resample(y, model.samplerate, WORKING_RATE)
            y = y[:n] if y.shape[0] >= n else np.pad(y, ((0, n - y.shape[0]), (0, 0)))
            stems[name] = np.ascontiguousarray(y, dtype=np.float32)
        return stems


def _checked_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[1] != 2 or audio.shape[0] == 0:
        raise ValueError(f"separate() takes a non-empty stereo array of shape (n, 2), got {audio.shape}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("separate() got NaN or infinite samples")
    return audio


def _pass_count(model: torch.nn.Module, length: int, shifts: int, overlap: float) -> int:
    """How many chunk passes apply_model makes (split=True). With shifts each pass sees up to half
    a second more audio, so this is an upper bound that may overshoot by one chunk per shift."""
    total = 0
    for sub_model in model.models if isinstance(model, BagOfModels) else [model]:
        segment_length = int(sub_model.samplerate * sub_model.segment)
        stride = int((1 - overlap) * segment_length)
        seen = length + (int(0.5 * sub_model.samplerate) if shifts else 0)
        total += max(shifts, 1) * len(range(0, seen, stride))
    return total


def _read_cache(path: Path, n: int) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as entry:
            stems = {name: entry[name] for name in STEM_NAMES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable separation cache entry %s (%s)", path, _one_line(exc))
        return None
    if any(s.shape != (n, 2) or s.dtype != np.float32 for s in stems.values()):
        log.warning("ignoring separation cache entry %s: stems of the wrong shape", path)
        return None
    return stems


def _write_cache(path: Path, stems: dict[str, np.ndarray]) -> None:
    """Store atomically; a cache that cannot be written costs a re-separation later, not this job."""
    try:
        with atomic_write(path) as f:   # a file object: np.savez would append ".npz" to other names
            np.savez(f, **stems)
    except OSError as exc:
        log.warning("could not write the separation cache entry %s (%s)", path, _one_line(exc))
