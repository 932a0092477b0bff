"""The one confinement check for every path the daemon reads or writes: stems, references, request
files, output and staging folders.

A path passes when its real path (every symlink resolved) lies inside one of the daemon's roots
(config.roots(): the watch folders, the output root, the configured references' folders and
allowed_roots) and, for a file to read, when it is a regular file no larger than the limit. So a
link that leads out of the roots, a FIFO or device named drums.wav, and an 8 GB sparse file are
refused in one line before any work, wherever the path came from (OSC, a request file, a watch
folder, a reference set earlier). Callers use the resolved path the check returns, so a link
cannot be swapped in between check and use without its target still being inside the roots. The
one exception is a stem's or reference file's own name, which decides its role ("vocals.wav" linked
to "take 3.wav" is vocals): `named` keeps it, and the worker checks such a file again just before
it reads it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..defaults import MAX_INPUT_BYTES
from ..errors import MixdaemonError


class ConfinementError(MixdaemonError):
    """A path outside the daemon's roots, or one that is not a regular file of a sane size."""


class Roots:
    """The folders the daemon may read and write in, as real paths."""

    def __init__(self, roots: list[Path], max_file_bytes: int = MAX_INPUT_BYTES):
        self.paths = sorted({Path(os.path.realpath(r)) for r in roots})
        self.max_file_bytes = max_file_bytes

    def __iter__(self):
        return iter(self.paths)

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether path's real path is one of the roots or lies below one."""
        real = Path(os.path.realpath(path))
        return any(real == r or r in real.parents for r in self.paths)

    @staticmethod
    def _absolute(path: str | os.PathLike, what: str) -> str:
        """path as text, if it is absolute: a relative one would name a place by the daemon's
        working folder, which no client knows."""
        text = os.fspath(path)
        if "\x00" in text:
            raise ConfinementError(f"{what} {text[:200]!r}: a path cannot hold a NUL byte")
        if not os.path.isabs(text):
            raise ConfinementError(f"{what} {text[:200]!r}: give an absolute path")
        return text

    def _real(self, path: str | os.PathLike, what: str) -> Path:
        text = self._absolute(path, what)
        try:
            real = Path(os.path.realpath(text, strict=True))
        except FileNotFoundError:
            raise ConfinementError(f"{what} {text[:200]}: not found") from None
        except OSError as exc:
            raise ConfinementError(f"{what} {text[:200]}: cannot resolve ({exc.strerror or exc})") from None
        if not any(real == r or r in real.parents for r in self.paths):
            shown = text if Path(text) == real else f"{text} (a link to {real})"
            raise ConfinementError(f"{what} {shown[:300]}: refused, outside the allowed roots "
                                   f"({', '.join(map(str, self.paths))}); add it to allowed_roots in the config")
        return real

    def file(self, path: str | os.PathLike, what: str = "file") -> Path:
        """path's real path, if it is a regular file inside the roots and within the size limit."""
        real = self._real(path, what)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise ConfinementError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfinementError(f"{what} {path}: not a regular file (a FIFO, device or socket is refused)")
        if st.st_size > self.max_file_bytes:
            raise ConfinementError(f"{what} {path}: {st.st_size / 2**30:.1f} GiB is over the "
                                   f"{self.max_file_bytes / 2**30:.0f} GiB limit per file")
        return real

    def named(self, path: str | os.PathLike, what: str = "file") -> Path:
        """path with its folders resolved and its own name kept, if its real path passes `file`: a
        link's name is the name the user gave the stem, and its role."""
        self.file(path, what)
        given = Path(os.path.normpath(self._absolute(path, what)))
        return Path(os.path.realpath(given.parent)) / given.name

    def folder(self, path: str | os.PathLike, what: str = "folder") -> Path:
        """path's real path, if it is an existing folder inside the roots."""
        real = self._real(path, what)
        if not real.is_dir():
            raise ConfinementError(f"{what} {path}: not a folder")
        return real

    def entry(self, path: str | os.PathLike, what: str = "path") -> Path:
        """path's real path, if it is a regular file or a folder inside the roots (a reference, or a
        stems argument that may be either)."""
        real = self._real(path, what)
        return self.folder(path, what) if real.is_dir() else self.file(path, what)  # errors name the path given

    def new(self, path: str | os.PathLike, what: str = "output") -> Path:
        """Where a file or folder that may not exist yet will be written: its nearest existing
        ancestor must resolve inside the roots, and the path itself, if it exists, must not be a
        link (a planted link at a result or staging name would redirect the write)."""
        p = Path(os.path.normpath(self._absolute(path, what)))
        if os.path.islink(p):
            raise ConfinementError(f"{what} {p}: refused, a symbolic link stands at this name")
        existing = p  # the nearest entry that exists, a dangling link too (which _real then refuses)
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        real_parent = self._real(existing, what)
        return real_parent / p.relative_to(existing)

    def folder_or_new(self, path: str | os.PathLike, what: str = "folder") -> Path:
        """The real path of a folder that may not exist yet (an output folder named in a request, a
        folder a reference is set for): an existing one as `folder` checks it, else as `new`."""
        return self.folder(path, what) if os.path.isdir(self._absolute(path, what)) else self.new(path, what)


def read_small_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a small file the daemon reads whole (a request file, a reply file): only a
    regular file at path itself, never through a link, never blocking (a FIFO or a device is
    refused before any read), and no more than max_bytes (checked before reading and while
    reading, for a file that grows). FileNotFoundError if nothing is there; ConfinementError, in
    one line, for anything else that is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if os.path.islink(path):
            raise ConfinementError(f"{what} {path}: refused, a symbolic link (only a regular file is read)") from None
        raise ConfinementError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfinementError(f"{what} {path}: not a regular file (a FIFO, device or socket is refused)")
        chunks, size = [], 0
        while st.st_size <= max_bytes and size <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if max(st.st_size, size) > max_bytes:
            found = f"{st.st_size} bytes" if st.st_size > max_bytes else "it grew while read"
            raise ConfinementError(f"{what} {path}: over the {max_bytes}-byte limit ({found})")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfinementError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
