"""Atomic file writes: one helper for every file psbench writes whole (run files, manifests, indexes,
weights, efficiency results, compressed videos).

A file is written to a temporary name in its own directory, flushed to disk, given the mode a plain
``open(path, "w")`` would give it (``0o666 & ~umask``; ``tempfile.mkstemp`` alone leaves 0600), then
renamed over the target: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it: restore at once
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; on success it is fsynced, chmodded to
    :func:`default_file_mode` and renamed to ``path``; on any exception it is removed.

    The temporary name keeps ``path``'s suffix, so writers that pick a format by extension (PyAV) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Atomically write ``path`` by calling ``writer(temporary_path)``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = True) -> None:
    """Atomically write ``obj`` as JSON (non-JSON values through ``str``) with a final newline."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def torch_save(obj: Any, path: str | Path) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``; the same object always gives the same bytes.

    Saved through an open file: given a path, torch names the zip archive's folder after the file, which
    would put the random temporary name into the bytes (and the sha256 of identical weights would differ).
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def check_writable_dir(folder: Path) -> None:
    """Raise OSError (with the reason) unless a file can be created in ``folder`` or, if it does not exist
    yet, in its nearest existing parent. Probes with the same temporary-file call the atomic writers use,
    so a read-only file system or a folder without write permission is found before any work is done."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{existing} is not writable (permission denied)")
    fd, tmp = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    os.close(fd)
    Path(tmp).unlink()
