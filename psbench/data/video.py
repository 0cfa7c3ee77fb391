"""Frame-accurate video decoding with PyAV.

Frame ``i`` of a video is, by definition here, the ``i``-th frame the decoder outputs in
presentation order, counting from 0. Timestamps are never used to address frames: containers
start at non-zero pts (AVI with B-frames starts at 1), B-frames reorder decoding, and seeking to a
timestamp lands on the previous key frame (see ``tests/test_video.py``, which shows the trap).
``probe_video`` and ``decode_frames`` therefore both walk the decoder's output sequentially, so
they agree on the index space by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

log = logging.getLogger(__name__)

#: a decoded count may fall short of the container's declared count by this many frames (or by
#: 1/TRUNCATION_FRACTION of it, whichever is larger) before the file is called truncated: edit
#: lists legitimately make the decoder discard a few leading frames.
TRUNCATION_SLACK_FRAMES = 2
TRUNCATION_FRACTION = 20


class VideoError(RuntimeError):
    """A video could not be read; the message always names the file.

    Built as ``VideoError(reason, path)``. The one-argument form ``VideoError(message)`` exists so
    that torch's DataLoader can re-raise the same class in the main process (it rebuilds worker
    exceptions from their formatted message, which still contains the path).
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason, self.path = reason, None if path is None else str(path)
        super().__init__(reason if path is None else f"{reason}: {path}")

    def __reduce__(self):  # keep (reason, path) through pickling
        return (type(self), (self.reason, self.path))


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video file does not exist."""


class VideoDecodeError(VideoError):
    """The file exists but is not a decodable video (corrupt, truncated, no video stream)."""


class FrameIndexError(VideoError, IndexError):
    """A requested frame index is outside [0, number of frames)."""


@dataclass(frozen=True)
class VideoInfo:
    """Facts about one video; ``num_frames`` is the number of frames the decoder really outputs."""

    path: Path
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise VideoNotFoundError("video file not found", path)
    if path.stat().st_size == 0:
        raise VideoDecodeError("empty video file (0 bytes)", path)
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open video ({exc.strerror or exc})", path) from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError("no video stream in file", path)
    # One decoding thread: data-loader workers already decode videos in parallel, and FFmpeg's
    # per-open thread pool costs more than it saves on short clips (measured: 6.9 -> 3.0 ms per clip).
    container.streams.video[0].thread_count = 1
    return container


def _frames(container: av.container.InputContainer, path: Path) -> Iterator[av.VideoFrame]:
    """Decoded frames of the first video stream, in presentation order; errors name the file."""
    stream = container.streams.video[0]
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"corrupt video data ({exc.strerror or exc})", path) from exc


def _parse_clock(text: str) -> float | None:
    """``"00:00:07.000000000"`` (a Matroska DURATION tag) -> 7.0 seconds; None if it is not a clock."""
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def declared_duration(container: av.container.InputContainer) -> float | None:
    """The first video stream's duration as the file declares it (seconds), whatever the container.

    The stream's own duration (mp4, avi), else its DURATION tag (Matroska / WebM writers), else the
    container's duration when the video is the only stream (a longer audio track would inflate it).
    """
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tags = {k.upper(): v for k, v in (stream.metadata or {}).items()}
    if "DURATION" in tags and (seconds := _parse_clock(tags["DURATION"])) is not None:
        return seconds
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def declared_frames(container: av.container.InputContainer, fps: float) -> tuple[int, str]:
    """Frames the file declares for its video stream, and where that number comes from (for messages).

    The stream's frame count when the container stores one (mp4, avi), else its declared duration x
    frame rate (Matroska / WebM store a duration, not a count); 0 when the file declares neither.
    """
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames), f"container declares {int(stream.frames)} frames"
    seconds = declared_duration(container)
    if seconds and fps:
        frames = round(seconds * fps)
        return frames, f"container declares {seconds:g} s at {fps:g} fps = {frames} frames"
    return 0, "no declared length"


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path`` and count its frames by decoding all of them (no colour conversion).

    We count decoded frames rather than demuxed packets or the container's ``frames`` field:
    packets can carry frames the decoder discards (edit lists, corrupt data), the header count is
    absent in some containers and stale in truncated ones, and the decoded count is exactly the
    index space of :func:`decode_frames`. The declared length (:func:`declared_frames`: the header
    count, or the declared duration x fps for containers without a count, such as Matroska) is used
    only as evidence of truncation: a decoded count well below it raises :class:`VideoDecodeError`,
    as does a file that decodes to no frame at all.
    """
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in _frames(container, path))
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        declared, source = declared_frames(container, fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = count / fps if fps else 0.0
    if count == 0:
        raise VideoDecodeError("video decodes to zero frames", path)
    if declared > count:
        missing = declared - count
        if missing > max(TRUNCATION_SLACK_FRAMES, declared // TRUNCATION_FRACTION):
            raise VideoDecodeError(f"truncated video: {source}, only {count} decode", path)
        log.warning("%s: %s, %d decode; using %d", path, source, count, count)
    return VideoInfo(path, count, fps, duration, width, height)


def decode_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames numbered ``indices`` -> (len(indices), H, W, 3) uint8 RGB.

    The k-th output is decoded frame ``indices[k]``; indices may be unsorted and may repeat.
    Decoding is sequential from the start of the file and stops after the largest index (no
    seeking, hence frame-accurate for every codec and container). An index outside the video
    raises :class:`FrameIndexError` naming the file.
    """
    path = Path(path)
    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError(f"no frame indices requested for {path}")
    if min(wanted) < 0:
        raise FrameIndexError(f"negative frame index {min(wanted)} requested", path)
    last = max(wanted)
    slots: dict[int, list[int]] = {}  # frame number -> its positions in the output
    for position, number in enumerate(wanted):
        slots.setdefault(number, []).append(position)
    out: np.ndarray | None = None  # (len(indices), H, W, 3), allocated at the first decoded frame
    count = 0
    # One colour converter for the whole clip, single-threaded like the decoder: ``frame.to_ndarray(format=
    # "rgb24")`` builds a fresh swscale context (and thread pool) per frame, which cost as much as decoding
    # on 224 px video; the pixels are identical (tests/test_video.py).
    to_rgb = VideoReformatter()
    with _open(path) as container:
        for number, frame in enumerate(_frames(container, path)):
            count = number + 1
            if out is None:
                out = np.empty((len(wanted), frame.height, frame.width, 3), dtype=np.uint8)
            if number in slots:
                if (frame.height, frame.width) != out.shape[1:3]:
                    raise VideoDecodeError(f"frame size changes within the video (frame {number})", path)
                rgb = to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()  # (H, W, 3)
                for position in slots[number]:
                    out[position] = rgb
            if number >= last:
                break
    if out is None or last >= count:
        raise FrameIndexError(f"frame index {last} out of range: the video has {count} frames", path)
    return out
