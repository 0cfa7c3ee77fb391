"""The relation probe: generated videos whose test pairs no mean of per-frame features can tell apart.

Every video has two halves. The first half shows one object doing one thing, the second half another
object doing another (the renderer, shapes, colours, actions and video format of
:mod:`psbench.data.synthetic`); no object is visible outside its own half. Captions describe both
objects without naming a colour and end with the relation: "both the same colour" or "two different
colours". Videos come in *groups of four* sharing everything but the colours a != b:

    aa, bb  ("same")        ab, ba  ("different")

so in every frame slot t the two "same" videos show exactly the frames the two "different" videos
show (slot t of the first half: colour a in aa and ab, b in bb and ba; of the second half: a in aa and
ba, b in bb and ab). Any additive pooling of per-frame features, whatever the frame position coding,
``v(V) = sum_t f(x_t, t)``, therefore satisfies ``v(aa) + v(bb) = v(ab) + v(ba)``; with a cosine
readout, a video's preference between two captions is the sign of a linear function of ``v(V)``, and
the four preferences of a group cannot all be right (the argument and its numerical check are in
``protocols/README.md``, section "relation probe"). A method whose frames exchange information can
get them right.

Files: the formats of the synthetic set (``psbench.data.synthetic`` reads them), with ``twins.json``
pairing each "same" video with the "different" video that shares its first half (the hard negative in
its training batch) and ``relation_groups.json`` listing the groups of every split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from psbench.data.paths import AnnotationError
from psbench.data.split import RelationGroup
from psbench.data.synthetic import (
    COLOURS,
    GERUND,
    MSRVTT_SPLIT_NAME,
    SHAPES,
    SPLITS,
    VIDEO_CODEC,
    VIDEO_CRF,
    Event,
    VideoSpec,
    _check_config,
    _csv_text,
    _json_text,
    _sample_event,
    encode_in_processes,
    frame_captions,
    render_video,
)
from psbench.data.video_writer import write_video
from psbench.files import atomic
from psbench.files.jsonio import decode_error_message

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
GROUPS_FILE = "relation_groups.json"
#: groups of four videos per split written by default: 800 train, 100 val, 400 test videos
DEFAULT_GROUPS = {"train": 200, "val": 25, "test": 100}
RELATIONS = ("same", "different")
RELATION_WORDS = {"same": "both the same colour", "different": "two different colours"}
FRAME_CAPTIONS_PER_VIDEO = 6

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Geometry:
    """What a group's videos share: the event of each half, colour left open."""

    first: Event
    second: Event

    def caption(self, relation: str) -> str:
        a, b = self.first, self.second
        return f"a {a.shape} {GERUND[a.action]}, then a {b.shape} {GERUND[b.action]}, {RELATION_WORDS[relation]}"

    def coloured(self, first: str, second: str) -> tuple[VideoSpec, VideoSpec]:
        """The one-event spec of each half with the given colours (boundaries span a half each)."""
        return tuple(  # type: ignore[return-value]
            VideoSpec((Event(c, e.shape, e.action, e.start, e.end),), (0.0, 1.0))
            for e, c in ((self.first, first), (self.second, second))
        )


def half_lengths(num_frames: int) -> tuple[int, int]:
    return num_frames // 2, num_frames - num_frames // 2


def _half_spec(spec: VideoSpec, frames: int) -> VideoSpec:
    return VideoSpec(spec.events, (0.0, float(frames - 1)))


def render_probe_video(geometry: Geometry, first: str, second: str, num_frames: int, size: int) -> np.ndarray:
    """Frames (T, size, size, 3) uint8: the first half shows only the first event, the second only the second."""
    (h1, h2), (s1, s2) = half_lengths(num_frames), geometry.coloured(first, second)
    return np.concatenate([render_video(_half_spec(s1, h1), h1, size), render_video(_half_spec(s2, h2), h2, size)])


def member_colours(a: str, b: str) -> list[tuple[str, str, str]]:
    """(relation, first colour, second colour) of a group's four videos, in file order."""
    return [("same", a, a), ("same", b, b), ("different", a, b), ("different", b, a)]


@dataclass
class _Member:
    video_id: str
    split: str
    group: int
    relation: str
    colours: tuple[str, str]


def _plan(seed: int, groups: dict[str, int]) -> tuple[list[Geometry], list[_Member]]:
    rng = np.random.default_rng([seed, 2])
    colour_names = list(COLOURS)
    geometries: list[Geometry] = []
    members: list[_Member] = []
    for split in SPLITS:
        for _ in range(groups[split]):
            shapes = [SHAPES[int(j)] for j in rng.integers(len(SHAPES), size=2)]
            first, second = (_sample_event(rng, "", s) for s in shapes)
            a, b = (colour_names[int(j)] for j in rng.choice(len(colour_names), size=2, replace=False))
            g = len(geometries)
            geometries.append(Geometry(first, second))
            for relation, c1, c2 in member_colours(a, b):
                members.append(_Member(f"probe{len(members):05d}", split, g, relation, (c1, c2)))
    return geometries, members


def _frame_entries(
    geometries: list[Geometry], members: list[_Member], seed: int, num_frames: int, size: int
) -> list[dict[str, Any]]:
    """Single-frame descriptions of train videos (colours named), for pretraining the tiny CLIP."""
    rng = np.random.default_rng([seed, 3])
    h1, h2 = half_lengths(num_frames)
    entries = []
    for m in members:
        if m.split != "train":
            continue
        s1, s2 = geometries[m.group].coloured(*m.colours)
        texts = frame_captions(_half_spec(s1, h1), h1, size) + frame_captions(_half_spec(s2, h2), h2, size)
        clean = [f for f, text in enumerate(texts) if text is not None]
        picked = rng.choice(len(clean), size=min(FRAME_CAPTIONS_PER_VIDEO, len(clean)), replace=False)
        entries.extend(
            {"video_id": m.video_id, "frame": f, "caption": texts[f]} for f in sorted(clean[int(j)] for j in picked)
        )
    return entries


def _annotation_texts(
    geometries: list[Geometry], members: list[_Member], seed: int, num_frames: int, size: int
) -> dict[str, str]:
    caption = {m.video_id: geometries[m.group].caption(m.relation) for m in members}
    described = [m for m in members if m.split in ("train", "val")]
    data_json = {
        "info": {"description": "psbench relation probe", "version": GENERATOR_VERSION, "seed": seed},
        "videos": [
            {"video_id": m.video_id, "split": MSRVTT_SPLIT_NAME[m.split], "id": i} for i, m in enumerate(members)
        ],
        "sentences": [
            {"caption": caption[m.video_id], "video_id": m.video_id, "sen_id": i} for i, m in enumerate(described)
        ],
    }
    by_group: dict[int, list[_Member]] = {}
    for m in members:
        by_group.setdefault(m.group, []).append(m)
    twins: dict[str, str] = {}
    groups_json: dict[str, dict[str, Any]] = {}
    for g, (aa, bb, ab, ba) in by_group.items():
        twins.update(
            {aa.video_id: ab.video_id, ab.video_id: aa.video_id, bb.video_id: ba.video_id, ba.video_id: bb.video_id}
        )
        groups_json[f"group{g:04d}"] = {
            "split": aa.split,
            "same": [aa.video_id, bb.video_id],
            "different": [ab.video_id, ba.video_id],
        }

    def jsfusion(split: str) -> str:
        rows = [m for m in members if m.split == split]
        return _csv_text(
            ["key", "vid_key", "video_id", "sentence"],
            [
                [f"ret{i}", f"msr{m.video_id.removeprefix('probe')}", m.video_id, caption[m.video_id]]
                for i, m in enumerate(rows)
            ],
        )

    return {
        "MSRVTT_data.json": _json_text(data_json),
        "train_list.csv": _csv_text(["video_id"], [[m.video_id] for m in members if m.split == "train"]),
        "val.csv": jsfusion("val"),
        "test.csv": jsfusion("test"),
        "twins.json": _json_text(dict(sorted(twins.items()))),
        GROUPS_FILE: _json_text(groups_json),
        "frame_captions.json": _json_text(_frame_entries(geometries, members, seed, num_frames, size)),
    }


def _encode(geometry: Geometry, colours: tuple[str, str], path: Path, num_frames: int, size: int, fps: int) -> str:
    frames = render_probe_video(geometry, *colours, num_frames, size)  # (T, H, W, 3)
    if not path.is_file():
        write_video(path, frames, fps=fps, codec=VIDEO_CODEC, crf=VIDEO_CRF)
    return hashlib.sha256(frames.tobytes()).hexdigest()


def generate_relation_probe(
    out_dir: Path,
    seed: int = 0,
    groups: dict[str, int] | None = None,
    size: int = 64,
    num_frames: int = 56,
    fps: int = 8,
    workers: int = 2,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write the relation probe into ``out_dir``; deterministic for a seed, resumable (videos kept)."""
    groups = dict(DEFAULT_GROUPS if groups is None else groups)
    if set(groups) != set(SPLITS) or min(groups.values()) < 1:
        raise ValueError(f"every split ({', '.join(SPLITS)}) needs at least one group, got {groups}")
    if size % 2 or size < 32:
        raise ValueError(f"size must be even and at least 32, got {size}")
    if num_frames < 12 or num_frames % 2:
        raise ValueError(f"num_frames must be even and at least 12, got {num_frames}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    config = {
        "generator": "psbench-relation-probe",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "groups": groups,
        "pairs": {s: 2 * n for s, n in groups.items()},  # twin pairs, as the synthetic loader counts them
        "size": size,
        "num_frames": num_frames,
        "fps": fps,
        "codec": VIDEO_CODEC,
        "crf": VIDEO_CRF,
    }
    _check_config(out_dir / "synthetic_config.json", config)
    geometries, members = _plan(seed, groups)
    texts = _annotation_texts(geometries, members, seed, num_frames, size)
    for name, text in texts.items():
        atomic.write_text(out_dir / name, text)

    jobs = [
        (geometries[m.group], m.colours, out_dir / "videos" / f"{m.video_id}.mp4", num_frames, size, fps)
        for m in members
    ]
    log.info("relation probe: encoding %d videos into %s with %d worker(s)", len(jobs), out_dir, workers)
    hashes = encode_in_processes(_encode, jobs, workers, progress)
    meta = {
        **config,
        "pyav": av.__version__,
        "counts": {s: {"groups": groups[s], "videos": 4 * groups[s], "captions": 4 * groups[s]} for s in SPLITS},
        "annotation_sha256": {name: hashlib.sha256(t.encode("utf-8")).hexdigest() for name, t in sorted(texts.items())},
        "frames_sha256": hashlib.sha256("".join(hashes).encode("ascii")).hexdigest(),
    }
    atomic.write_text(out_dir / "synthetic_meta.json", _json_text(meta))
    return meta


def load_relation_groups(root: Path, split: str, gallery: set[str]) -> list[RelationGroup]:
    """The groups of ``split`` from ``relation_groups.json``; every member must be in the gallery."""
    path = Path(root) / GROUPS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path} not found; the relation probe needs it (run `psbench data probe`)") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(decode_error_message(path, err)) from err
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected an object mapping group name -> {{split, same, different}}")
    out = []
    for name, entry in raw.items():
        where = f"{path} group {name!r}"
        if not isinstance(entry, dict) or entry.get("split") not in SPLITS:
            raise AnnotationError(f"{where}: expected an object with a 'split' among {', '.join(SPLITS)}")
        if entry["split"] != split:
            continue
        pairs = []
        for relation in RELATIONS:
            ids = entry.get(relation)
            if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(v, str) for v in ids)):
                raise AnnotationError(f"{where}: {relation!r} must list two video ids")
            missing = [v for v in ids if v not in gallery]
            if missing:
                raise AnnotationError(f"{where}: video {missing[0]!r} is not in split {split!r}")
            pairs.append(tuple(ids))
        out.append(RelationGroup(name, pairs[0], pairs[1]))  # type: ignore[arg-type]
    if not out:
        raise AnnotationError(f"{path}: no group of split {split!r}")
    return out
