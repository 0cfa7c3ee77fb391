"""Persisted frame counts: each video of a data root is probed (decoded to count) once, not once per epoch.

The samplers need every video's frame count, which only a full decode gives exactly (see
:mod:`psbench.data.video`). ``frame_counts.json`` in the data root records, per video file, the count
and the file's size and modification time; an entry is used only while both still match the file, so
a changed or replaced video is re-probed (and named in a warning), never sampled with a stale count.
``psbench data verify`` and ``psbench data compress`` write the entries of the videos they decode; the
loaders fill in what is missing, in parallel, once, before the first batch.

Layout: ``{"schema_version": 1, "kind": "psbench-frame-counts", "videos": {relative path: {"frames",
"size", "mtime_ns"}}}``, paths relative to the data root (absolute for files outside it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psbench.data.video import VideoError, probe_video
from psbench.files import atomic, jsonio

log = logging.getLogger(__name__)

MANIFEST_NAME = "frame_counts.json"
KIND = "psbench-frame-counts"
SCHEMA_VERSION = 1
#: how many parent folders :meth:`FrameCounts.find` looks in for an existing manifest
MANIFEST_SEARCH_LEVELS = 3


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file cheaply: its size and modification time (ns)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclass
class FrameCounts:
    """The frame counts of one data root: ``count(path)`` is a recorded count that still matches the file."""

    root: Path
    entries: dict[str, dict[str, int]] = field(default_factory=dict)
    probed: int = 0  # counts measured in this process (new or stale entries)
    stale: list[str] = field(default_factory=list)  # files whose recorded entry no longer matched
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why it could not be probed

    @property
    def path(self) -> Path:
        return self.root / MANIFEST_NAME

    @classmethod
    def load(cls, root: str | Path) -> FrameCounts:
        """The manifest of ``root``; none yet gives an empty one, an unreadable one is rebuilt (with a warning)."""
        root = Path(root)
        file = root / MANIFEST_NAME
        if not file.is_file():
            return cls(root)
        try:
            data = jsonio.read_json(file)
            if data.get("kind") != KIND or not isinstance(data.get("videos"), dict):
                raise ValueError(f"not a psbench frame-count manifest (kind={data.get('kind')!r})")
            entries = {str(k): _entry(v) for k, v in data["videos"].items()}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s: unreadable frame-count manifest (%s); every video is probed again", file, exc)
            return cls(root)
        return cls(root, entries)

    @classmethod
    def find(cls, folder: str | Path, levels: int = MANIFEST_SEARCH_LEVELS) -> FrameCounts:
        """The manifest in ``folder`` or the nearest of its ``levels`` parents that has one (a split whose
        videos all sit in one sub-folder uses its data root's manifest); a new one in ``folder`` if none."""
        folder = Path(folder).absolute()
        for candidate in [folder, *folder.parents][: levels + 1]:
            if (candidate / MANIFEST_NAME).is_file():
                return cls.load(candidate)
        return cls(folder)

    def key(self, video: Path) -> str:
        video = Path(video).absolute()
        try:
            return video.relative_to(self.root.absolute()).as_posix()
        except ValueError:
            return str(video)

    def count(self, video: Path) -> int | None:
        """The recorded count of ``video`` if its size and mtime are unchanged; None if unknown, stale or gone
        (the caller's probe then names the file)."""
        entry = self.entries.get(self.key(video))
        if entry is None:
            return None
        try:
            stamp = FileStamp.of(video)
        except OSError:
            return None
        if (entry["size"], entry["mtime_ns"]) != (stamp.size, stamp.mtime_ns):
            self.stale.append(str(video))
            log.warning("%s changed since its frame count was recorded (size or mtime differ): probing it again", video)
            return None
        return entry["frames"]

    def record(self, video: Path, frames: int, stamp: FileStamp | None = None) -> None:
        stamp = stamp or FileStamp.of(video)
        self.entries[self.key(video)] = {"frames": int(frames), "size": stamp.size, "mtime_ns": stamp.mtime_ns}

    def save(self) -> bool:
        """Write the manifest atomically; a read-only data root keeps the counts in memory (with a warning)."""
        data = {"schema_version": SCHEMA_VERSION, "kind": KIND, "videos": dict(sorted(self.entries.items()))}
        try:
            atomic.write_json(self.path, data)
        except OSError as exc:
            log.warning("cannot write %s (%s): frame counts are kept for this process only", self.path, exc)
            return False
        return True


def manifest_folder(videos: Iterable[Path]) -> Path:
    """Where the manifest of these videos lives: the folder that holds them all (their data root's video folder)."""
    folders = {str(Path(v).absolute().parent) for v in videos}
    if not folders:
        raise ValueError("no videos")
    return Path(os.path.commonpath(sorted(folders)))


def _entry(value: Any) -> dict[str, int]:
    return {"frames": int(value["frames"]), "size": int(value["size"]), "mtime_ns": int(value["mtime_ns"])}


def _probe(path: str) -> tuple[str, int | None, FileStamp | None, str | None]:
    """(path, frame count, stamp taken before decoding, None), or (path, None, None, the error) for a video
    that cannot be read: it stays unrecorded and fails, naming the file, where the loader reads it."""
    try:
        stamp = FileStamp.of(Path(path))
        return path, probe_video(path).num_frames, stamp, None
    except (OSError, VideoError) as exc:
        return path, None, None, str(exc)


def ensure_counts(
    counts: FrameCounts,
    videos: Iterable[Path],
    workers: int = 0,
    advance: Callable[..., None] | None = None,
) -> dict[str, int]:
    """Every readable video's frame count (path -> count): recorded ones reused, the others probed
    (``workers`` processes; 0 = this process) and saved. Unreadable videos are left out (listed in
    ``counts.unreadable``): they fail, or are skipped under ``train.skip_corrupt``, where they are read."""
    advance = advance or (lambda n=1, **info: None)
    known: dict[str, int] = {}
    missing: list[str] = []
    for video in dict.fromkeys(Path(v) for v in videos):
        recorded = counts.count(video) if video.is_file() else None
        if recorded is None:
            missing.append(str(video))
        else:
            known[str(video)] = recorded
            advance(1)
    if not missing:
        return known
    log.info("probing the frame counts of %d video(s) (once; recorded in %s)", len(missing), counts.path)
    if workers > 0 and len(missing) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_probe, missing, chunksize=max(1, len(missing) // (8 * workers)))
            _collect(counts, results, known, advance)
    else:
        _collect(counts, map(_probe, missing), known, advance)
    if counts.probed:
        counts.save()
    if counts.unreadable:
        log.info("%d video(s) could not be probed; they fail where they are read", len(counts.unreadable))
    return known


def _collect(
    counts: FrameCounts,
    results: Iterable[tuple[str, int | None, FileStamp | None, str | None]],
    known: dict[str, int],
    advance: Callable[..., None],
) -> None:
    for path, frames, stamp, error in results:
        if frames is None or stamp is None:
            counts.unreadable[path] = str(error)
        else:
            counts.record(Path(path), frames, stamp)
            known[path] = frames
            counts.probed += 1
        advance(1)
