"""Files, the bottom of the house: content hashes, and the one way the package writes a file.

Every file the package writes where a user or another process may read it (audio, manifests, model
files, ONNX graphs, TensorRT plans, caches, checkpoints, reports, reply files) goes through
`atomic_path` or `atomic_write` — only files inside a staging folder that is renamed into place
whole, and temporary files, are written directly. The bytes go to a hidden
partial file created exclusively beside the destination, are flushed to disk, and the partial file
is renamed over the destination. A reader sees the old file or the whole new one, never half of it,
and a crash leaves at worst a hidden `.NAME.*.part` file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

PARTIAL_SUFFIX = ".part"

# (resolved path, size, mtime in ns, inode) → digest. A daemon hashes the same reference and model
# files for every job; a file that changes gets a new mtime, hence a new key.
_digests: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in this folder durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partial_beside(path: Path) -> Path:
    """A new, empty hidden file beside path, created exclusively: never an existing file, never
    through a planted link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            os.close(os.open(partial, flags, 0o666))  # the umask decides, as for any new file
            return partial
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a partial file's path for a writer that wants a path (safetensors, ONNX export); once
    the block ends without an error the file is fsynced and renamed over `path`. On an error the
    partial file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_beside(path)
    try:
        yield partial
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
        fsync_dir(path.parent)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yield an open partial file (mode "wb" or "w"); renamed over `path` as `atomic_path` does."""
    with atomic_path(path) as partial:
        with open(partial, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
