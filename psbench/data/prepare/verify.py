"""Check that a dataset's videos exist and decode, and record what was seen in a JSON manifest.

:func:`verify_dataset` decodes every video a set of splits needs (each file once, even when several
splits or captions share it), counts its real frames (``probe_video``), hashes the file (sha256) and
returns a :class:`Manifest`: counts, missing videos, corrupt videos with the reason, and per-video
frames, duration, fps, size and sha256. :func:`missing_videos` is the cheap existence check the runner
uses to refuse an incomplete dataset.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psbench.data.frame_counts import FrameCounts, manifest_folder
from psbench.data.split import RetrievalSplit
from psbench.data.video import VideoError, probe_video

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
_HASH_BLOCK = 1 << 20


class IncompleteDatasetError(FileNotFoundError):
    """Videos a split needs are missing; the message names the split, the count and some ids."""


def missing_videos(split: RetrievalSplit) -> list[str]:
    """Ids of the split's gallery videos whose file does not exist (gallery order). No decoding."""
    return [v for v in split.video_ids if not (p := split.video_paths.get(v)) or not Path(p).is_file()]


def require_videos(split: RetrievalSplit, skip_missing: bool = False) -> RetrievalSplit:
    """The split if every video exists; with ``skip_missing`` the split without the missing videos
    (logged as a warning); otherwise IncompleteDatasetError naming the split and the first ids."""
    missing = missing_videos(split)
    if not missing:
        return split
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    if not skip_missing:
        first = split.video_paths.get(missing[0])
        raise IncompleteDatasetError(
            f"split {split.name!r}: {len(missing)} of {len(split.video_ids)} video file(s) missing ({shown}; "
            f"e.g. expected {first}). Run `psbench data verify` for the full list, or set data.skip_missing=true "
            "to evaluate on the videos present (the scores are then not comparable to published ones)."
        )
    log.warning("split %s: skipping %d missing video(s): %s", split.name, len(missing), shown)
    gone = set(missing)
    return split.subset([v for v in split.video_ids if v not in gone])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class VideoRecord:
    """Facts about one video file that decoded."""

    path: str
    frames: int
    duration: float
    fps: float
    width: int
    height: int
    size: int
    sha256: str


@dataclass
class Manifest:
    """What :func:`verify_dataset` found. ``ok`` is True when nothing is missing or corrupt."""

    splits: dict[str, dict[str, int]]
    videos: dict[str, VideoRecord]
    missing: dict[str, str]  # id -> expected path
    corrupt: dict[str, str]  # id -> "path: reason"
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def counts(self) -> dict[str, int]:
        total = len(self.videos) + len(self.missing) + len(self.corrupt)
        return {"videos": total, "ok": len(self.videos), "missing": len(self.missing), "corrupt": len(self.corrupt)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "created": self.created,
            "counts": self.counts(),
            "splits": self.splits,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "videos": {vid: asdict(rec) for vid, rec in sorted(self.videos.items())},
        }

    def write(self, path: Path) -> None:
        """Write the manifest JSON atomically (temporary file + rename)."""
        from psbench.files import atomic

        atomic.write_json(Path(path), self.to_dict())


def check_video(path: str) -> tuple[VideoRecord | None, str | None]:
    """Probe and hash one existing file -> (record, None) or (None, reason). Runs in worker processes."""
    try:
        info = probe_video(path)
        size = Path(path).stat().st_size
        digest = sha256_file(Path(path))
    except VideoError as exc:
        return None, exc.reason
    except (OSError, ValueError, RuntimeError) as exc:  # anything else a broken file can raise in FFmpeg/PyAV
        return None, f"{type(exc).__name__}: {exc}"
    record = VideoRecord(str(path), info.num_frames, info.duration, info.fps, info.width, info.height, size, digest)
    return record, None


def _needed_videos(splits: Iterable[RetrievalSplit]) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    needed: dict[str, Path] = {}
    summary: dict[str, dict[str, int]] = {}
    for split in splits:
        summary[split.name] = {"videos": len(split.video_ids), "captions": len(split.captions)}
        for vid in split.video_ids:
            path = Path(split.video_paths[vid])
            if needed.setdefault(vid, path) != path:
                raise ValueError(f"video {vid!r} has two different files in the splits: {needed[vid]} and {path}")
    return needed, summary


def verify_dataset(
    split_list: list[RetrievalSplit],
    workers: int = 1,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Check every video of ``split_list``: exists, decodes (real frame count), sha256.

    ``workers`` > 1 probes in that many processes. ``progress(done, total)`` is called after each
    video. With ``out`` the manifest is also written there atomically.
    """
    needed, summary = _needed_videos(split_list)
    missing = {vid: str(p) for vid, p in needed.items() if not p.is_file()}
    present = [(vid, str(p)) for vid, p in needed.items() if vid not in missing]
    total, done = len(needed), len(missing)
    if progress:
        progress(done, total)
    videos: dict[str, VideoRecord] = {}
    corrupt: dict[str, str] = {}

    def collect(vid: str, path: str, result: tuple[VideoRecord | None, str | None]) -> None:
        nonlocal done
        record, reason = result
        if record is None:
            corrupt[vid] = f"{path}: {reason}"
            log.warning("corrupt video %s: %s", path, reason)
        else:
            videos[vid] = record
        done += 1
        if progress:
            progress(done, total)

    if workers <= 1 or len(present) <= 1:
        for vid, path in present:
            collect(vid, path, check_video(path))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, min(64, len(present) // (workers * 8) or 1))
            results = pool.map(check_video, [p for _, p in present], chunksize=chunk)
            for (vid, path), result in zip(present, results, strict=True):
                collect(vid, path, result)
    manifest = Manifest(summary, videos, missing, corrupt)
    if out is not None:
        manifest.write(out)
    if videos:  # the frame counts just decoded: loaders never probe these videos again
        counts = FrameCounts.find(manifest_folder(Path(r.path) for r in videos.values()))
        for record in videos.values():
            counts.record(Path(record.path), record.frames)
        counts.save()
    return manifest
