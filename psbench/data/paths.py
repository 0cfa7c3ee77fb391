"""Video ids from annotation files and the files they name, kept inside the data root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file (and the line where known)."""


def safe_video_id(video_id: str, source: str) -> str:
    """Return ``video_id`` if it is a plain file stem; raise AnnotationError naming it and ``source``.

    ``source`` says where the id was read, e.g. ``"MSRVTT_train.9k.csv line 12"``. Rejected: empty
    ids, ``.``/``..``, absolute paths, drive letters, path separators and NUL characters, i.e. every id
    that could name a file outside the video folder.
    """
    problem = None
    if not isinstance(video_id, str) or not video_id.strip():
        problem = "is empty or not a string"
    elif "\x00" in video_id:
        problem = "contains a NUL character"
    elif "/" in video_id or "\\" in video_id:
        problem = "contains a path separator"
    elif video_id == "." or ".." in video_id:
        problem = "is '.' or contains '..'"
    elif PurePosixPath(video_id).is_absolute() or PureWindowsPath(video_id).drive:
        problem = "is an absolute path"
    if problem:
        raise AnnotationError(f"{source}: video id {video_id!r} {problem}; ids must be plain file names")
    return video_id


def find_video(video_dir: Path, video_id: str) -> Path | None:
    """The existing file ``<video_dir>/<video_id><ext>`` for the first extension that exists, else None.

    Raises ValueError if the id is unsafe or the file resolves (e.g. through a link) outside ``video_dir``.
    """
    video_dir = Path(video_dir)
    safe_video_id(video_id, f"video folder {video_dir}")
    root = video_dir.resolve()
    for ext in VIDEO_EXTENSIONS:
        candidate = video_dir / f"{video_id}{ext}"
        if candidate.is_file():
            if not candidate.resolve().is_relative_to(root):
                raise ValueError(f"video {candidate} resolves to {candidate.resolve()}, outside {root}")
            return candidate
    return None
