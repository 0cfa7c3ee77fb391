"""The field's usual video preprocessing, with PyAV: shorter side -> ``size``, frame rate -> ``fps``.

Every video under ``src`` (``.mp4 .avi .mkv .webm``, any depth) is written to the same relative path
under ``dst`` with the suffix ``.mp4`` (H.264, yuv420p, no audio). The shorter side is resized to
``size`` (bicubic; the longer side keeps the aspect ratio, rounded to an even number), as CLIP4Clip's
``compress_video.py`` does with ffmpeg. The frame rate is reduced by selecting frames on their
timestamps: output frame k (time k / fps) is the first source frame whose time is at least
k / fps minus half a source frame interval, i.e. the nearest one; a source slower than ``fps`` has
frames repeated, so the output has a constant rate.

Work runs in parallel processes and is resumable: an output that exists and decodes is skipped, and
every output is written to a temporary file, then renamed. The recipe (fps, size, codec, crf, x264 tune, the
psbench and PyAV versions, the source folder, counts) is written to ``dst/compress_recipe.json``; a
run with a different recipe into the same ``dst`` is refused. :func:`read_compress_recipe` reads it
back (the runner copies it into run records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import av

from psbench.data.frame_counts import FrameCounts
from psbench.data.paths import VIDEO_EXTENSIONS
from psbench.data.video import VideoDecodeError, VideoError, probe_video
from psbench.files.atomic import atomic_path
from psbench.files.jsonio import decode_error_message

log = logging.getLogger(__name__)

RECIPE_FILE = "compress_recipe.json"
RECIPE_SCHEMA_VERSION = 1
#: recipe keys that must match for a resumed run to write into an existing ``dst``
RECIPE_IDENTITY = ("fps", "size", "codec", "crf", "preset", "pix_fmt", "interpolation", "tune")
#: the value of an identity key in recipes written before the key existed
RECIPE_LEGACY_VALUES = {"tune": ""}
#: libx264 ``tune`` values; ``fastdecode`` (no CABAC, no deblocking filter, no weighted prediction) trades
#: a slightly larger file for a much cheaper decode (reports/cpu_2cores/video_input.md)
X264_TUNES = ("", "film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode", "zerolatency")


@dataclass(frozen=True)
class CompressSettings:
    fps: float = 3.0
    size: int = 224
    codec: str = "libx264"
    crf: int = 23
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    interpolation: str = "BICUBIC"
    tune: str = ""  # libx264 --tune; "" = none

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"compress: fps must be > 0, got {self.fps}")
        if self.tune not in X264_TUNES:
            choices = ", ".join(t for t in X264_TUNES if t)
            raise ValueError(f"compress: unknown tune {self.tune!r}; libx264 knows {choices}")
        if self.tune and self.codec != "libx264":
            raise ValueError(f"compress: tune {self.tune!r} is a libx264 option; codec is {self.codec!r}")
        if self.size < 2 or self.size % 2:
            raise ValueError(f"compress: size must be an even number >= 2 (yuv420p), got {self.size}")


@dataclass
class CompressReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # source path -> reason
    recipe_path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` and the longer one scaled, rounded to even."""
    if width <= height:
        return size, _even(height * size / width)
    return _even(width * size / height), size


def find_sources(src: Path, exclude: Path | None = None) -> list[Path]:
    """Video files under ``src`` (sorted); hidden files and anything under ``exclude`` are ignored."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"compress: source folder {src} does not exist")
    skip = Path(exclude).resolve() if exclude is not None else None
    out = []
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() not in VIDEO_EXTENSIONS or path.name.startswith(".") or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        out.append(path)
    return out


def plan_outputs(sources: list[Path], src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(source, output) pairs; two sources that would share one output are an error naming both."""
    pairs: list[tuple[Path, Path]] = []
    seen: dict[Path, Path] = {}
    for path in sources:
        target = Path(dst) / path.relative_to(src).with_suffix(".mp4")
        if target in seen:
            raise ValueError(f"compress: {seen[target]} and {path} would both be written to {target}")
        seen[target] = path
        pairs.append((path, target))
    return pairs


def _frame_time(frame: av.VideoFrame, index: int, rate: float) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / rate if rate else float(index)


def _fresh_frame(frame: av.VideoFrame, width: int, height: int, settings: CompressSettings) -> av.VideoFrame:
    """The resized frame as a NEW frame without the source's timing fields.

    A reformatted frame keeps the source time base, which the encoder would rescale our pts from;
    and re-sending one frame object for a repeated slot breaks libx264's presets with B-frames.
    """
    small = frame.reformat(width, height, format=settings.pix_fmt, interpolation=settings.interpolation)
    return av.VideoFrame.from_ndarray(small.to_ndarray(), format=settings.pix_fmt)


def compress_video(src: Path, dst: Path, settings: CompressSettings) -> int:
    """Compress one video to ``dst`` (via a temporary file + rename); returns the frames written."""
    src, dst = Path(src), Path(dst)
    try:
        inp = av.open(str(src))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open video ({exc.strerror or exc})", src) from exc
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with inp, atomic_path(dst) as tmp:
        if not inp.streams.video:
            raise VideoDecodeError("no video stream in file", src)
        stream = inp.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        half = 0.5 / float(rate) if rate else 0.0
        with av.open(str(tmp), mode="w", format="mp4") as out:
            enc = None
            start: float | None = None
            try:
                for index, frame in enumerate(inp.decode(stream)):
                    t = _frame_time(frame, index, float(rate or 0))
                    start = t if start is None else start
                    if enc is None:
                        width, height = output_size(frame.width, frame.height, settings.size)
                        out_rate = Fraction(settings.fps).limit_denominator(1000)
                        enc = out.add_stream(settings.codec, rate=out_rate)
                        enc.width, enc.height, enc.pix_fmt = width, height, settings.pix_fmt
                        if settings.codec == "libx264":
                            tune = {"tune": settings.tune} if settings.tune else {}
                            enc.options = {"crf": str(settings.crf), "preset": settings.preset, **tune}
                    while written / settings.fps <= (t - start) + half:
                        small = _fresh_frame(frame, enc.width, enc.height, settings)
                        small.pts = written  # in the encoder's time base, 1 / fps
                        out.mux(enc.encode(small))
                        written += 1
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(f"corrupt video data ({exc.strerror or exc})", src) from exc
            if enc is None:
                raise VideoDecodeError("video decodes to zero frames", src)
            out.mux(enc.encode())
    return written


def _output_frames(path: Path) -> int | None:
    """The decoded frame count of an existing output, or None (absent, or it does not decode)."""
    if not path.is_file():
        return None
    try:
        return probe_video(path).num_frames
    except VideoError as exc:
        log.info("re-compressing %s: existing output does not decode (%s)", path, exc.reason)
        return None


def _compress_task(src: str, dst: str, settings: CompressSettings) -> tuple[str, str, str, int | None]:
    """Worker: -> (source, status, detail, the output's decoded frame count) with status written | skipped |
    failed; every output is decoded once after writing, which checks it and gives the frame-count manifest."""
    existing = _output_frames(Path(dst))
    if existing is not None:
        return src, "skipped", "", existing
    try:
        compress_video(Path(src), Path(dst), settings)
        frames = probe_video(Path(dst)).num_frames
    except VideoError as exc:
        return src, "failed", exc.reason, None
    except (OSError, ValueError, RuntimeError) as exc:  # anything else FFmpeg/PyAV raise on a broken file
        return src, "failed", f"{type(exc).__name__}: {exc}", None
    return src, "written", str(frames), frames


def _versions() -> dict[str, str]:
    try:
        psbench_version = metadata.version("psbench")
    except metadata.PackageNotFoundError:
        psbench_version = "unknown"
    libs = {name: ".".join(map(str, v)) for name, v in getattr(av, "library_versions", {}).items()}
    return {"psbench": psbench_version, "pyav": av.__version__, **{f"ffmpeg_{k}": v for k, v in libs.items()}}


def read_compress_recipe(video_dir: Path) -> dict[str, Any] | None:
    """The recipe ``video_dir/compress_recipe.json`` (None if absent); malformed JSON raises ValueError."""
    import json

    path = Path(video_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(decode_error_message(path, err)) from err
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return recipe


def _check_existing_recipe(dst: Path, recipe: dict[str, Any]) -> None:
    old = read_compress_recipe(dst)
    if old is None:
        return
    old = {k: old.get(k, RECIPE_LEGACY_VALUES.get(k)) for k in RECIPE_IDENTITY}
    differ = [k for k in RECIPE_IDENTITY if old[k] is not None and old[k] != recipe[k]]
    if differ:
        detail = ", ".join(f"{k}: {old[k]!r} there, {recipe[k]!r} now" for k in differ)
        raise ValueError(f"compress: {dst} was written with a different recipe ({detail}); choose another --dst")


def compress_videos(
    src: Path,
    dst: Path,
    settings: CompressSettings | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> CompressReport:
    """Compress every video under ``src`` into ``dst``; see the module docstring. ``progress(done, total)``."""
    settings = settings or CompressSettings()
    src, dst = Path(src), Path(dst)
    sources = find_sources(src, exclude=dst)
    if not sources:
        raise FileNotFoundError(f"compress: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {src}")
    pairs = plan_outputs(sources, src, dst)
    recipe: dict[str, Any] = {
        "schema_version": RECIPE_SCHEMA_VERSION,
        "fps": settings.fps,
        "size": settings.size,
        "codec": settings.codec,
        "crf": settings.crf,
        "preset": settings.preset,
        "pix_fmt": settings.pix_fmt,
        "interpolation": settings.interpolation,
        "tune": settings.tune,
        "frame_selection": "nearest source frame to each k/fps timestamp; repeated when the source is slower",
        "resize": "shorter side to size, aspect kept, longer side rounded to even",
        "audio": "dropped",
        "source_dir": str(src.resolve()),
        "versions": _versions(),
    }
    _check_existing_recipe(dst, recipe)
    dst.mkdir(parents=True, exist_ok=True)
    report = CompressReport()
    done, total = 0, len(pairs)
    if progress:
        progress(done, total)

    counts = FrameCounts.find(dst)
    outputs = {str(s): d for s, d in pairs}

    def collect(result: tuple[str, str, str, int | None]) -> None:
        nonlocal done
        source, status, detail, frames = result
        if frames is not None:
            counts.record(outputs[source], frames)
        if status == "failed":
            report.failed[source] = detail
            log.warning("cannot compress %s: %s", source, detail)
        else:
            (report.written if status == "written" else report.skipped).append(source)
        done += 1
        if progress:
            progress(done, total)

    if workers <= 1:
        for s, d in pairs:
            collect(_compress_task(str(s), str(d), settings))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_compress_task, str(s), str(d), settings) for s, d in pairs]
            for future in as_completed(futures):
                collect(future.result())
    counts.save()  # the outputs' frame counts: loaders never probe them again
    from psbench.files import atomic

    recipe["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    recipe["counts"] = {
        "videos": total,
        "written": len(report.written),
        "skipped": len(report.skipped),
        "failed": len(report.failed),
    }
    recipe["failed"] = report.failed
    report.recipe_path = dst / RECIPE_FILE
    atomic.write_json(report.recipe_path, recipe)
    return report
