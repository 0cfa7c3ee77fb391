"""sha256 of files that move a score (CLIP weights, the tokenizer vocabulary), streamed and cached.

A file is read once per process in 8 MiB chunks (a 600 MB checkpoint hashes in well under a few
seconds); the digest is cached by (absolute path, size, mtime), so evaluating a run several times
never hashes its weights again, and a file changed in place is hashed anew.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK_BYTES = 8 << 20

_cache: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    """sha256 of the file's bytes, read in :data:`CHUNK_BYTES` chunks into one reused buffer."""
    h = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The full sha256 (64 hex) of a file's bytes; cached by (absolute path, size, mtime_ns)."""
    path = Path(os.path.abspath(path))
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        _cache[key] = _digest(path)
    return _cache[key]


def clear_cache() -> None:
    """Forget every cached digest (tests)."""
    _cache.clear()
