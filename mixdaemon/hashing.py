"""Content hashes of files: the one place that reads a file to hash it (job deduplication, model
provenance, the separation cache's model identity, the training cache's statistics key)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
