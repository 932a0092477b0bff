"""Files, the bottom of the house: content hashes, and the one way the package writes a file.

Every file the package writes where a user or another process may read it (audio, manifests, model
files, ONNX graphs, TensorRT plans, caches, checkpoints, reports, reply files) goes through
`atomic_path` or `atomic_write` — only files inside a staging folder that is renamed into place
whole, and temporary files, are written directly. The bytes go to a hidden
partial file created exclusively beside the destination, are flushed to disk, and the partial file
is renamed over the destination. A reader sees the old file or the whole new one, never half of it,
and a crash leaves at worst a hidden `.NAME.*.part` file behind. A write that fails (a full disk, a
read-only file system) raises an OSError naming the destination, even through a writer that hides
the file's error (soundfile reports a short write as a bare AssertionError).

A finished folder is moved into place with `rename_no_replace`, which never replaces what stands at
the destination (a plain rename would silently replace an empty folder).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import sys
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


class _WriteErrors:
    """A file that remembers the first OSError its write() raised: libsndfile calls write() from C
    through soundfile, which swallows the error and reports a short write instead."""

    def __init__(self, file: IO):
        self._file = file
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):
        return getattr(self._file, name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yield an open partial file (mode "wb" or "w"); renamed over `path` as `atomic_path` does.
    A failed write raises OSError(errno, strerror, path), whatever the writer made of it."""
    with atomic_path(path) as partial:
        with open(partial, mode, encoding=encoding if "b" not in mode else None) as raw:
            f = _WriteErrors(raw)
            try:
                yield f
                f.flush()
            except Exception as exc:
                failed = f.error or (exc if isinstance(exc, OSError) and exc.filename is None else None)
                if failed is None:
                    raise
                raise OSError(failed.errno, failed.strerror, os.fspath(path)) from exc


# renameat2(2) with RENAME_NOREPLACE (Linux 3.15, glibc 2.28): the kernel refuses to replace the
# destination, atomically. Where it is missing, a check before the rename leaves a window of
# microseconds in which an entry appearing at the destination could be replaced.
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_renameat2 = getattr(_libc, "renameat2", None)


def rename_no_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename src to dst; FileExistsError if anything (a file, a folder, even an empty one, or a
    link) stands at dst."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: a file system without the flag
            raise OSError(code, os.strerror(code), os.fspath(dst))
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    os.rename(src, dst)


def lock_exclusive(path: str | os.PathLike, flags: int) -> int:
    """Open path (os.open flags) and take an exclusive lock on it without waiting: the descriptor,
    the lock held until it is closed. BlockingIOError (the descriptor closed) when another process
    holds the lock. POSIX only (imported here: the rest of this module serves every platform)."""
    import fcntl
    fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
