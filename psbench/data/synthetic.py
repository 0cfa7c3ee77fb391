"""The generated synthetic data set: short videos whose captions only a frame-order-aware method can match.

Every video is 2-3 events in consecutive time segments; an event is a coloured shape that appears,
disappears or moves left/right/up/down. Every video has a time-reversed twin (the same frames in
reverse order) in the same split, captioned with the reversed events ("moves left" <-> "moves right",
"moves up" <-> "moves down", "appears" <-> "disappears", event order reversed). A method that ignores
frame order cannot tell twins apart. The generator is symmetric under time reversal (segment jitter,
actions and fades are mirror images), so the two members of a pair are exchangeable.

Why ``num_frames = 56``: 56 - 1 = 55 is divisible by 11 and by 5, so ``linspace(0, 55, n)`` for
n = 12 (step 5) and n = 6 (step 11) gives exact integers, and the index set is closed under
``i -> 55 - i``: uniform sampling of the reversed video picks exactly the reversed frames of the
original, whatever rounding a sampler uses.

Output files use the MSR-VTT formats (so :mod:`psbench.data.msrvtt` reads them): ``videos/<id>.mp4``,
``MSRVTT_data.json`` (train and val sentences, plus a ``videos`` list with ``split``),
``train_list.csv``, ``val.csv`` and ``test.csv`` (JSFUSION, one row per caption), ``twins.json``,
``frame_captions.json`` (single-frame descriptions of train videos, for pretraining a tiny CLIP),
``synthetic_config.json`` (written first; guards resumption) and ``synthetic_meta.json`` (written last).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from psbench.data.msrvtt import load_msrvtt_test, load_msrvtt_train
from psbench.data.paths import AnnotationError
from psbench.data.split import RetrievalSplit
from psbench.data.video_writer import write_video
from psbench.files import atomic
from psbench.files.jsonio import decode_error_message

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
MSRVTT_SPLIT_NAME = {
    "train": "train",
    "val": "validate",
    "test": "test",
}  # "split" values of MSRVTT_data.json

BACKGROUND = (110, 110, 110)
COLOURS = {"red": (225, 35, 35), "green": (40, 190, 60), "blue": (45, 75, 235), "yellow": (240, 215, 30)}
SHAPES = ("circle", "square", "triangle")
ACTIONS = ("appears", "disappears", "moves left", "moves right", "moves up", "moves down")
REVERSED_ACTION = {
    "appears": "disappears",
    "disappears": "appears",
    "moves left": "moves right",
    "moves right": "moves left",
    "moves up": "moves down",
    "moves down": "moves up",
}
GERUND = {
    "appears": "appearing",
    "disappears": "disappearing",
    "moves left": "moving left",
    "moves right": "moving right",
    "moves up": "moving up",
    "moves down": "moving down",
}
GRID = (12.0, 32.0, 52.0)  # cell centres at size 64 (pixel i has centre i + 0.5)
RADIUS = 9.0  # object half-size at size 64: ~18 px objects, ~9 px after resizing to 32
ROW_WORDS = ("top", "middle", "bottom")
COL_WORDS = ("left", "center", "right")
MULTI_CAPTION_FRACTION = 0.3
#: twin pairs per split written by default (two videos each): 800 train, 100 val, 200 test videos
DEFAULT_PAIRS = {"train": 400, "val": 50, "test": 100}
FRAME_CAPTIONS_PER_VIDEO = 6
BOUNDARY_JITTER = 0.06  # segment boundaries move by up to this fraction of the video
VIDEO_CODEC, VIDEO_CRF = "libx264", 0  # lossless: a twin decodes to exactly the reversed frames

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Event:
    """One object and what it does in its segment; cells are (row, col) in the 3x3 grid."""

    colour: str
    shape: str
    action: str
    start: tuple[int, int]
    end: tuple[int, int]

    def reversed(self) -> Event:
        return Event(self.colour, self.shape, REVERSED_ACTION[self.action], self.end, self.start)

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} {self.action}"

    def gerund(self) -> str:
        return f"a {self.colour} {self.shape} {GERUND[self.action]}"


@dataclass(frozen=True)
class VideoSpec:
    """Events in time order; event i occupies frames [boundaries[i], boundaries[i+1]] (continuous)."""

    events: tuple[Event, ...]
    boundaries: tuple[float, ...]

    def reversed(self, num_frames: int) -> VideoSpec:
        """The spec of the time-reversed video (frame t becomes frame num_frames - 1 - t)."""
        last = num_frames - 1
        return VideoSpec(
            tuple(e.reversed() for e in reversed(self.events)),
            tuple(last - b for b in reversed(self.boundaries)),
        )


# ----------------------------------------------------------------------------------------------- scene


def trajectory(spec: VideoSpec, i: int, num_frames: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y (pixels) and opacity of event ``i``'s object in every frame, each (T,)."""
    ev = spec.events[i]
    b0, b1 = spec.boundaries[i], spec.boundaries[i + 1]
    t = np.arange(num_frames, dtype=np.float64)  # (T,)
    u = np.clip((t - b0) / (b1 - b0), 0.0, 1.0)  # (T,) progress through the segment
    scale = size / 64.0
    (r0, c0), (r1, c1) = ev.start, ev.end
    cx = scale * (GRID[c0] + (GRID[c1] - GRID[c0]) * u)  # (T,)
    cy = scale * (GRID[r0] + (GRID[r1] - GRID[r0]) * u)  # (T,)
    if ev.action == "appears":
        alpha = np.clip((u - 0.25) / 0.5, 0.0, 1.0)  # (T,) fades in over the middle half
    elif ev.action == "disappears":
        alpha = np.clip((0.75 - u) / 0.5, 0.0, 1.0)  # (T,) the mirror image of "appears"
    else:
        alpha = np.ones(num_frames)  # (T,) movers are visible throughout
    return cx, cy, alpha


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Distance inside the shape's edge (positive inside) for offsets from its centre."""
    if shape == "circle":
        return r - np.sqrt(dx * dx + dy * dy)
    if shape == "square":
        return r - np.maximum(np.abs(dx), np.abs(dy))
    if shape == "triangle":  # apex up at (0, -r), base corners (+-r, r)
        inv = 1.0 / np.sqrt(5.0)
        left = (2.0 * dx + dy + r) * inv
        right = (-2.0 * dx + dy + r) * inv
        return np.minimum(np.minimum(left, right), r - dy)
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def render_video(spec: VideoSpec, num_frames: int, size: int) -> np.ndarray:
    """Frames (T, size, size, 3) uint8: anti-aliased shapes on a plain background."""
    centres = np.arange(size, dtype=np.float64) + 0.5  # (S,)
    r = RADIUS * size / 64.0
    frames = np.empty((num_frames, size, size, 3), dtype=np.float64)  # (T, H, W, 3)
    frames[:] = BACKGROUND
    for i, ev in enumerate(spec.events):
        cx, cy, alpha = trajectory(spec, i, num_frames, size)  # (T,) each
        dx = centres[None, None, :] - cx[:, None, None]  # (T, 1, W)
        dy = centres[None, :, None] - cy[:, None, None]  # (T, H, 1)
        cover = np.clip(_signed_distance(ev.shape, dx, dy, r) + 0.5, 0.0, 1.0)  # (T, H, W)
        cover = (cover * alpha[:, None, None])[..., None]  # (T, H, W, 1)
        frames = frames * (1.0 - cover) + np.asarray(COLOURS[ev.colour], dtype=np.float64) * cover
    return np.round(frames).astype(np.uint8)


def _overlaps(spec: VideoSpec, num_frames: int, size: int) -> bool:
    """True if two visible objects' boxes touch in any frame."""
    reach = 2.0 * (RADIUS + 0.5) * size / 64.0
    tracks = [trajectory(spec, i, num_frames, size) for i in range(len(spec.events))]
    for a in range(len(tracks)):
        for b in range(a + 1, len(tracks)):
            (xa, ya, pa), (xb, yb, pb) = tracks[a], tracks[b]
            hit = (pa > 0) & (pb > 0) & (np.abs(xa - xb) < reach) & (np.abs(ya - yb) < reach)  # (T,)
            if hit.any():
                return True
    return False


# --------------------------------------------------------------------------------------------- captions


def video_captions(spec: VideoSpec) -> list[str]:
    """The three phrasings of a video's events, the canonical one first."""
    p = [e.phrase() for e in spec.events]
    g = [e.gerund() for e in spec.events]
    if len(p) == 2:
        return [f"{p[0]}, then {p[1]}", f"first {p[0]} and then {p[1]}", f"{g[0]} followed by {g[1]}"]
    if len(p) == 3:
        return [
            f"{p[0]}, then {p[1]}, then {p[2]}",
            f"first {p[0]}, then {p[1]} and finally {p[2]}",
            f"{g[0]} followed by {g[1]} and then {g[2]}",
        ]
    raise ValueError(f"videos have 2 or 3 events, got {len(p)}")


def _place(row: int, col: int) -> str:
    if (row, col) == (1, 1):
        return "in the center"
    if row == 1:
        return f"on the {COL_WORDS[col]}"
    if col == 1:
        return f"at the {ROW_WORDS[row]}"
    return f"at the {ROW_WORDS[row]} {COL_WORDS[col]}"


def frame_captions(spec: VideoSpec, num_frames: int, size: int) -> list[str | None]:
    """For every frame, what it shows (objects in reading order), or None unless it is unambiguous.

    Unambiguous: at least one object visible, every object either absent or fully opaque, and every
    visible object within a quarter of the cell spacing of a grid cell (a mover between two cells
    and a half-faded object have no single right description).
    """
    grid = np.asarray(GRID) * size / 64.0
    tolerance = (GRID[1] - GRID[0]) * size / 64.0 / 4.0
    tracks = [trajectory(spec, i, num_frames, size) for i in range(len(spec.events))]
    texts: list[str | None] = []
    for t in range(num_frames):
        seen: list[tuple[float, float, str]] = []
        for ev, (cx, cy, alpha) in zip(spec.events, tracks, strict=True):
            if alpha[t] == 0.0:
                continue
            dist_x, dist_y = np.abs(grid - cx[t]), np.abs(grid - cy[t])
            if alpha[t] < 1.0 or dist_x.min() > tolerance or dist_y.min() > tolerance:
                seen = []
                break
            place = _place(int(dist_y.argmin()), int(dist_x.argmin()))
            seen.append((cy[t], cx[t], f"a {ev.colour} {ev.shape} {place}"))
        words = [w for _, _, w in sorted(seen)]
        texts.append(
            None if not words else words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        )
    return texts


# -------------------------------------------------------------------------------------------- sampling


def _sample_event(rng: np.random.Generator, colour: str, shape: str) -> Event:
    action = ACTIONS[int(rng.integers(len(ACTIONS)))]
    line = int(rng.integers(3))  # row of a horizontal mover, column of a vertical one
    if action in ("appears", "disappears"):
        cell = (int(rng.integers(3)), int(rng.integers(3)))
        return Event(colour, shape, action, cell, cell)
    ends = {
        "moves left": ((line, 2), (line, 0)),
        "moves right": ((line, 0), (line, 2)),
        "moves up": ((2, line), (0, line)),
        "moves down": ((0, line), (2, line)),
    }[action]
    return Event(colour, shape, action, *ends)


def sample_spec(rng: np.random.Generator, num_frames: int, size: int, used: set[str]) -> VideoSpec:
    """A video whose objects never overlap and whose caption (and its twin's) is not in ``used``."""
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    for _ in range(10_000):
        k = int(rng.integers(2, 4))
        picks = rng.choice(len(objects), size=k, replace=False)
        events = tuple(_sample_event(rng, *objects[int(j)]) for j in picks)
        jitter = rng.uniform(-BOUNDARY_JITTER, BOUNDARY_JITTER, size=k - 1)
        inner = [(num_frames - 1) * (i / k + jitter[i - 1]) for i in range(1, k)]
        spec = VideoSpec(events, (0.0, *inner, float(num_frames - 1)))
        own, twin = video_captions(spec)[0], video_captions(spec.reversed(num_frames))[0]
        if own == twin or own in used or twin in used or _overlaps(spec, num_frames, size):
            continue
        used.update((own, twin))
        return spec
    raise RuntimeError("could not sample a new synthetic video; the caption space is exhausted")


# ---------------------------------------------------------------------------------------------- files


def _write_text(path: Path, text: str) -> None:
    atomic.write_text(path, text)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


@dataclass
class _Plan:
    """Every video of a set: its spec, split and captions (ids in order), and the twin pairs."""

    specs: dict[str, VideoSpec] = field(default_factory=dict)
    split_of: dict[str, str] = field(default_factory=dict)
    captions: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def ids_of(self, split: str) -> list[str]:
        return [v for v in self.specs if self.split_of[v] == split]


def _plan(seed: int, pairs: dict[str, int], num_frames: int, size: int) -> _Plan:
    """Sample every pair (the second video of a pair is the reverse of the first) and its captions."""
    rng = np.random.default_rng([seed, 0])
    plan, used = _Plan(), set()
    for split in SPLITS:
        for _ in range(pairs[split]):
            spec = sample_spec(rng, num_frames, size, used)
            n = 2 * len(plan.pairs)
            ids = (f"synth{n:05d}", f"synth{n + 1:05d}")
            for vid, s in zip(ids, (spec, spec.reversed(num_frames)), strict=True):
                extra = int(rng.integers(1, 3)) if rng.random() < MULTI_CAPTION_FRACTION else 0
                plan.captions[vid] = video_captions(s)[: 1 + extra]
                plan.specs[vid], plan.split_of[vid] = s, split
            plan.pairs.append(ids)
    return plan


def _frame_entries(plan: _Plan, seed: int, num_frames: int, size: int) -> list[dict[str, Any]]:
    """Up to FRAME_CAPTIONS_PER_VIDEO unambiguous frames of every train video, with their captions."""
    rng = np.random.default_rng([seed, 1])
    entries = []
    for vid in plan.ids_of("train"):
        texts = frame_captions(plan.specs[vid], num_frames, size)
        clean = [f for f, text in enumerate(texts) if text is not None]
        picked = rng.choice(len(clean), size=min(FRAME_CAPTIONS_PER_VIDEO, len(clean)), replace=False)
        for frame in sorted(clean[int(j)] for j in picked):
            entries.append({"video_id": vid, "frame": frame, "caption": texts[frame]})
    return entries


def _jsfusion_text(plan: _Plan, split: str) -> str:
    rows = [(v, c) for v in plan.ids_of(split) for c in plan.captions[v]]
    return _csv_text(
        ["key", "vid_key", "video_id", "sentence"],
        [[f"ret{i}", f"msr{v.removeprefix('synth')}", v, c] for i, (v, c) in enumerate(rows)],
    )


def _annotation_texts(plan: _Plan, seed: int, num_frames: int, size: int) -> dict[str, str]:
    """File name -> content of every annotation file, in MSR-VTT formats."""
    described = plan.ids_of("train") + plan.ids_of("val")
    sentences = [(v, c) for v in described for c in plan.captions[v]]
    data_json = {
        "info": {"description": "psbench synthetic set", "version": GENERATOR_VERSION, "seed": seed},
        "videos": [
            {"video_id": v, "split": MSRVTT_SPLIT_NAME[plan.split_of[v]], "id": i} for i, v in enumerate(plan.specs)
        ],
        "sentences": [{"caption": c, "video_id": v, "sen_id": i} for i, (v, c) in enumerate(sentences)],
    }
    twins = {a: b for pair in plan.pairs for a, b in (pair, pair[::-1])}
    return {
        "MSRVTT_data.json": _json_text(data_json),
        "train_list.csv": _csv_text(["video_id"], [[v] for v in plan.ids_of("train")]),
        "val.csv": _jsfusion_text(plan, "val"),
        "test.csv": _jsfusion_text(plan, "test"),
        "twins.json": _json_text(dict(sorted(twins.items()))),
        "frame_captions.json": _json_text(_frame_entries(plan, seed, num_frames, size)),
    }


def _encode_pair(spec: VideoSpec, paths: tuple[Path, Path], num_frames: int, size: int, fps: int) -> str:
    """Render a video, write it and its reversed twin unless present; sha256 of the rendered frames."""
    frames = render_video(spec, num_frames, size)  # (T, H, W, 3)
    for path, clip in zip(paths, (frames, frames[::-1]), strict=True):
        if not path.is_file():
            write_video(path, clip, fps=fps, codec=VIDEO_CODEC, crf=VIDEO_CRF)
    return hashlib.sha256(frames.tobytes()).hexdigest()


def encode_in_processes(
    encode: Callable[..., str],
    jobs: list[tuple[Any, ...]],
    workers: int,
    progress: ProgressFn | None,
    videos_per_job: int = 1,
) -> list[str]:
    """``encode(*job)`` for every job, in ``workers`` spawned processes (in this one if ``workers <= 1``);
    the results in job order. ``progress(done, total)`` counts videos (``videos_per_job`` per job)."""
    total, results = videos_per_job * len(jobs), [""] * len(jobs)
    if workers <= 1:
        for i, job in enumerate(jobs):
            results[i] = encode(*job)
            if progress:
                progress(videos_per_job * (i + 1), total)
        return results
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(encode, *job): i for i, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress:
                progress(videos_per_job * done, total)
    return results


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse to resume into a folder generated with other settings; record the settings otherwise."""
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != config:
            changed = sorted(k for k in config.keys() | previous.keys() if config.get(k) != previous.get(k))
            raise ValueError(
                f"{path} records a synthetic set generated with other settings ({', '.join(changed)}); "
                "use an empty folder"
            )
    else:
        _write_text(path, _json_text(config))


def generate_synthetic(
    out_dir: Path,
    seed: int = 0,
    n_train_pairs: int = DEFAULT_PAIRS["train"],
    n_val_pairs: int = DEFAULT_PAIRS["val"],
    n_test_pairs: int = DEFAULT_PAIRS["test"],
    size: int = 64,
    num_frames: int = 56,
    fps: int = 8,
    workers: int = 2,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write the synthetic set into ``out_dir`` and return its metadata (also ``synthetic_meta.json``).

    Deterministic for a seed: same annotation bytes, same decoded pixels. Resumable: existing videos
    are kept (each is written atomically), annotations are rewritten. ``progress(done, total)``
    counts videos.
    """
    pairs = {"train": n_train_pairs, "val": n_val_pairs, "test": n_test_pairs}
    if min(pairs.values()) < 1:
        raise ValueError(f"every split needs at least one twin pair, got {pairs}")
    if size % 2 or size < 32:
        raise ValueError(f"size must be even and at least 32, got {size}")
    if num_frames < 12:
        raise ValueError(f"num_frames must be at least 12, got {num_frames}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    config = {
        "generator": "psbench-synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "pairs": pairs,
        "size": size,
        "num_frames": num_frames,
        "fps": fps,
        "codec": VIDEO_CODEC,
        "crf": VIDEO_CRF,
    }
    _check_config(out_dir / "synthetic_config.json", config)

    plan = _plan(seed, pairs, num_frames, size)
    texts = _annotation_texts(plan, seed, num_frames, size)
    for name, text in texts.items():
        _write_text(out_dir / name, text)

    videos = out_dir / "videos"
    jobs = [(plan.specs[a], (videos / f"{a}.mp4", videos / f"{b}.mp4")) for a, b in plan.pairs]
    log.info("synthetic set: encoding %d videos into %s with %d worker(s)", 2 * len(jobs), out_dir, workers)
    frame_hashes = encode_in_processes(
        _encode_pair, [(*job, num_frames, size, fps) for job in jobs], workers, progress, videos_per_job=2
    )

    file_sha = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in texts.items()}
    listing = [f"{name}\t{sha}" for name, sha in sorted(file_sha.items())] + [f"videos/{v}.mp4" for v in plan.specs]
    meta = {
        **config,
        "pyav": av.__version__,
        "counts": {
            s: {
                "pairs": pairs[s],
                "videos": len(plan.ids_of(s)),
                "captions": sum(len(plan.captions[v]) for v in plan.ids_of(s)),
                "multi_caption_videos": sum(len(plan.captions[v]) > 1 for v in plan.ids_of(s)),
            }
            for s in SPLITS
        },
        "frame_captions": len(json.loads(texts["frame_captions.json"])),
        "annotation_sha256": file_sha,
        "file_list_sha256": hashlib.sha256("\n".join(listing).encode("utf-8")).hexdigest(),
        "frames_sha256": hashlib.sha256("".join(frame_hashes).encode("ascii")).hexdigest(),
    }
    _write_text(out_dir / "synthetic_meta.json", _json_text(meta))
    return meta


# --------------------------------------------------------------------------------------------- loading


def _read_twins(path: Path) -> dict[str, str]:
    try:
        twins = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(decode_error_message(path, err)) from err
    if not isinstance(twins, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in twins.items()):
        raise AnnotationError(f"{path}: expected an object mapping video id -> twin video id")
    for vid, twin in twins.items():
        if twins.get(twin) != vid:
            raise AnnotationError(f"{path}: {vid!r} -> {twin!r} is not mirrored by {twin!r} -> {vid!r}")
    return twins


def recorded_split_videos(root: Path, split: str) -> int | None:
    """Videos the generator wrote for ``split`` (2 x its pairs in synthetic_config.json); None if unrecorded."""
    path = Path(root) / "synthetic_config.json"
    if not path.is_file():
        return None
    try:
        pairs = json.loads(path.read_text(encoding="utf-8")).get("pairs", {})
    except json.JSONDecodeError as err:
        raise AnnotationError(decode_error_message(path, err)) from err
    count = pairs.get(split) if isinstance(pairs, dict) else None
    return 2 * count if isinstance(count, int) and not isinstance(count, bool) else None


def load_synthetic(root: Path, split: str) -> RetrievalSplit:
    """One split of a generated set (train from MSRVTT_data.json + train_list.csv, val/test from csv)."""
    root = Path(root)
    videos = root / "videos"
    if split == "train":
        loaded = load_msrvtt_train(root / "MSRVTT_data.json", root / "train_list.csv", videos, name="train")
    elif split in ("val", "test"):
        loaded = load_msrvtt_test(root / f"{split}.csv", videos, name=split)
    else:
        raise ValueError(f"unknown synthetic split {split!r}; valid splits: {', '.join(SPLITS)}")
    twins_path = root / "twins.json"
    twins = _read_twins(twins_path)
    gallery = set(loaded.video_ids)
    for vid in loaded.video_ids:
        if twins.get(vid) not in gallery:
            raise AnnotationError(f"{twins_path}: video {vid!r} of split {split!r} has no twin in that split")
    loaded.twin_of = {v: twins[v] for v in loaded.video_ids}
    return loaded
