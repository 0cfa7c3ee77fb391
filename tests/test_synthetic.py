"""The generated synthetic set: determinism, time-reversed twins, captions, splits, MSR-VTT formats."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from psbench.data.paths import AnnotationError
from psbench.data.synthetic import (
    COLOURS,
    GRID,
    SHAPES,
    Event,
    VideoSpec,
    frame_captions,
    generate_synthetic,
    load_synthetic,
    render_video,
    sample_spec,
    video_captions,
)

TINY = {"n_train_pairs": 6, "n_val_pairs": 2, "n_test_pairs": 3}
ANNOTATION_FILES = (
    "MSRVTT_data.json",
    "train_list.csv",
    "val.csv",
    "test.csv",
    "twins.json",
    "frame_captions.json",
    "synthetic_config.json",
    "synthetic_meta.json",
)
T = 56


@cache
def decode(path: Path) -> np.ndarray:
    """All frames of a video file, (T, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


class _Generations(dict):
    """Tiny generations made on first use (a fast run builds only the one its tests read): "a" seed 0 with
    1 worker, "b" seed 0 again with 2 workers, "other" seed 1."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, name: str) -> Path:
        seed, workers = {"a": (0, 1), "b": (0, 2), "other": (1, 1)}[name]
        root = self.factory.mktemp(name)
        calls: list[tuple[int, int]] = []
        generate_synthetic(root, seed=seed, workers=workers, progress=lambda d, t: calls.append((d, t)), **TINY)
        total = 2 * sum(TINY.values())
        assert calls[-1] == (total, total) and len(calls) == sum(TINY.values())
        self[name] = root
        return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _Generations(tmp_path_factory)


def all_ids(root: Path) -> list[str]:
    return sorted(json.loads((root / "twins.json").read_text()))


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.slow  # generates the synthetic set twice end to end
def test_same_seed_same_bytes_and_pixels(sets: dict[str, Path]) -> None:
    a, b = sets["a"], sets["b"]
    for name in ANNOTATION_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert all_ids(a) == all_ids(b)
    for vid in all_ids(a):
        assert np.array_equal(decode(a / "videos" / f"{vid}.mp4"), decode(b / "videos" / f"{vid}.mp4")), vid


@pytest.mark.slow  # generates another set
def test_different_seed_differs(sets: dict[str, Path]) -> None:
    a, other = sets["a"], sets["other"]
    assert (a / "test.csv").read_bytes() != (other / "test.csv").read_bytes()
    meta_a = json.loads((a / "synthetic_meta.json").read_text())
    meta_o = json.loads((other / "synthetic_meta.json").read_text())
    assert meta_a["frames_sha256"] != meta_o["frames_sha256"]
    assert meta_a["seed"] == 0 and meta_o["seed"] == 1
    assert not np.array_equal(decode(a / "videos" / "synth00000.mp4"), decode(other / "videos" / "synth00000.mp4"))


@pytest.mark.slow  # generates another set
def test_resume_keeps_videos_and_rewrites_missing(sets: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "set"
    meta = generate_synthetic(root, seed=0, workers=1, **TINY)
    kept = root / "videos" / "synth00003.mp4"
    stamp = kept.stat().st_mtime_ns
    (root / "videos" / "synth00004.mp4").unlink()
    (root / "test.csv").unlink()
    assert generate_synthetic(root, seed=0, workers=1, **TINY) == meta
    assert kept.stat().st_mtime_ns == stamp  # not re-encoded
    again = decode(root / "videos" / "synth00004.mp4")
    assert np.array_equal(again, decode(sets["a"] / "videos" / "synth00004.mp4"))
    assert (root / "test.csv").read_bytes() == (sets["a"] / "test.csv").read_bytes()
    with pytest.raises(ValueError, match=r"synthetic_config.json records .* other settings \(seed\)"):
        generate_synthetic(root, seed=5, workers=1, **TINY)


# ------------------------------------------------------------------------------------------ twins


def test_twin_frames_are_reversed(sets: dict[str, Path]) -> None:
    root = sets["a"]
    twins = json.loads((root / "twins.json").read_text())
    assert len(twins) == 2 * sum(TINY.values())
    for vid, twin in twins.items():
        assert twins[twin] == vid and twin != vid
        x, y = decode(root / "videos" / f"{vid}.mp4"), decode(root / "videos" / f"{twin}.mp4")
        assert x.shape == y.shape == (T, 64, 64, 3)
        reversed_error = np.abs(x.astype(int) - y[::-1].astype(int)).mean()
        forward_error = np.abs(x.astype(int) - y.astype(int)).mean()
        assert reversed_error < 1.0, (vid, reversed_error)  # codec tolerance
        assert forward_error > 5 * reversed_error + 0.5, (vid, forward_error)  # order is visible


def test_uniform_sampling_picks_the_reversed_frames(sets: dict[str, Path]) -> None:
    for n in (12, 6):
        grid = np.linspace(0, T - 1, n)
        assert np.array_equal(grid, np.round(grid)), "56 frames: linspace gives integers"
        for rounding in (np.floor, np.round, np.ceil):
            idx = rounding(grid).astype(int)
            assert np.array_equal(np.sort(T - 1 - idx), idx)
        x = decode(sets["a"] / "videos" / "synth00000.mp4")
        y = decode(sets["a"] / "videos" / "synth00001.mp4")
        idx = grid.astype(int)
        assert np.abs(y[idx].astype(int) - x[idx][::-1].astype(int)).mean() < 1.0
    # the property is not free: with 48 frames truncation breaks it
    idx = np.linspace(0, 47, 12).astype(int)
    assert not np.array_equal(np.sort(47 - idx), idx)


def test_rendered_reversed_spec_is_the_reversed_video() -> None:
    rng = np.random.default_rng(3)
    used: set[str] = set()
    for _ in range(20):
        spec = sample_spec(rng, T, 64, used)
        twin = spec.reversed(T)
        diff = np.abs(render_video(twin, T, 64).astype(int) - render_video(spec, T, 64)[::-1].astype(int))
        assert diff.max() <= 1  # float rounding at most
        assert twin.reversed(T).events == spec.events
        assert not set(video_captions(spec)) & set(video_captions(twin))


def test_captions_of_a_hand_made_video() -> None:
    spec = VideoSpec(
        (
            Event("red", "circle", "moves left", (1, 2), (1, 0)),
            Event("blue", "square", "appears", (0, 1), (0, 1)),
        ),
        (0.0, 27.0, 55.0),
    )
    assert video_captions(spec) == [
        "a red circle moves left, then a blue square appears",
        "first a red circle moves left and then a blue square appears",
        "a red circle moving left followed by a blue square appearing",
    ]
    twin = spec.reversed(T)
    assert twin.boundaries == (0.0, 28.0, 55.0)
    assert video_captions(twin)[0] == "a blue square disappears, then a red circle moves right"
    three = VideoSpec((*spec.events, Event("green", "triangle", "moves up", (2, 0), (0, 0))), (0, 18, 37, 55))
    assert video_captions(three.reversed(T))[1] == (
        "first a green triangle moves down, then a blue square disappears and finally a red circle moves right"
    )
    # single frames: the square is absent at the start, both are visible at the end
    texts = frame_captions(spec, T, 64)
    assert texts[0] == "a red circle on the right"
    assert texts[55] == "a blue square at the top and a red circle on the left"
    # the circle moves 40 px over frames 0..27: near a cell for u <= 1/8, between cells at u = 1/4
    assert texts[3] == "a red circle on the right" and texts[7] is None
    assert texts[14] == "a red circle in the center"
    # the square fades in over u in [0.25, 0.75] of frames 27..55: ambiguous frames have no caption
    assert texts[41] is None and texts[50] == texts[55]
    frames = render_video(spec, T, 64)
    assert tuple(frames[0, 32, 52]) == COLOURS["red"] and tuple(frames[0, 12, 32]) == (110, 110, 110)
    assert tuple(frames[55, 32, 12]) == COLOURS["red"] and tuple(frames[55, 12, 32]) == COLOURS["blue"]


def test_no_caption_equals_its_twins(sets: dict[str, Path]) -> None:
    root = sets["a"]
    twins = json.loads((root / "twins.json").read_text())
    texts: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for c in load_synthetic(root, split).captions:
            texts.setdefault(c.video_id, set()).add(c.text)
    assert set(texts) == set(twins)
    for vid, twin in twins.items():
        assert not texts[vid] & texts[twin], vid
    # captions are unique across the whole set
    every = [t for ts in texts.values() for t in ts]
    assert len(every) == len(set(every))


# ------------------------------------------------------------------------------------------ splits


def test_splits_loaders_and_meta_agree(sets: dict[str, Path]) -> None:
    root = sets["a"]
    meta = json.loads((root / "synthetic_meta.json").read_text())
    loaded = {s: load_synthetic(root, s) for s in ("train", "val", "test")}
    seen: set[str] = set()
    for name, split in loaded.items():
        pairs = TINY[f"n_{name}_pairs"]
        assert split.name == name
        assert len(split.video_ids) == 2 * pairs == meta["counts"][name]["videos"]
        assert len(split.captions) == meta["counts"][name]["captions"]
        assert not seen & set(split.video_ids)
        seen |= set(split.video_ids)
        assert set(split.twin_of) == set(split.video_ids)
        assert all(split.twin_of[split.twin_of[v]] == v for v in split.video_ids)
        assert all(p == root / "videos" / f"{v}.mp4" and p.is_file() for v, p in split.video_paths.items())
        assert sorted(set(split.caption_video_index())) == list(range(len(split.video_ids)))
    assert loaded["train"].video_ids == (root / "train_list.csv").read_text().split()[1:]
    data = json.loads((root / "MSRVTT_data.json").read_text())
    assert {v["split"] for v in data["videos"]} == {"train", "validate", "test"}
    described = {s["video_id"] for s in data["sentences"]}
    assert described == set(loaded["train"].video_ids) | set(loaded["val"].video_ids)
    multi = sum(meta["counts"][s]["multi_caption_videos"] for s in loaded)
    measured = sum(
        sum(n > 1 for n in np.bincount(sp.caption_video_index(), minlength=len(sp.video_ids))) for sp in loaded.values()
    )
    assert multi == measured > 0
    with pytest.raises(ValueError, match="unknown synthetic split 'dev'"):
        load_synthetic(root, "dev")


def test_unmirrored_twins_are_rejected(sets: dict[str, Path], tmp_path: Path) -> None:
    for name in ("test.csv", "twins.json"):
        (tmp_path / name).write_bytes((sets["a"] / name).read_bytes())
    twins = json.loads((tmp_path / "twins.json").read_text())
    first = next(iter(twins))
    twins[first] = first
    (tmp_path / "twins.json").write_text(json.dumps(twins))
    with pytest.raises(AnnotationError, match="twins.json"):
        load_synthetic(tmp_path, "test")


# ------------------------------------------------------------------------------------------ frame captions


def test_frame_captions_match_pixels(sets: dict[str, Path]) -> None:
    """Every object a frame caption names has its colour in the 20x20 window of the named cell."""
    root = sets["a"]
    entries = json.loads((root / "frame_captions.json").read_text())
    train = set(load_synthetic(root, "train").video_ids)
    assert {e["video_id"] for e in entries} == train
    places = {}
    for r, rw in enumerate(("top", "middle", "bottom")):
        for c, cw in enumerate(("left", "center", "right")):
            name = {(1, 1): "in the center"}.get((r, c))
            name = name or (f"on the {cw}" if r == 1 else f"at the {rw}" if c == 1 else f"at the {rw} {cw}")
            places[name] = (r, c)
    for e in entries:
        frame = decode(root / "videos" / f"{e['video_id']}.mp4")[e["frame"]].astype(int)  # (H, W, 3)
        for part in e["caption"].replace(" and ", ", ").split(", "):
            words = part.split(" ", 3)
            assert words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES, part
            r, c = places[words[3]]
            y, x = int(GRID[r]), int(GRID[c])
            window = frame[y - 10 : y + 10, x - 10 : x + 10]  # (20, 20, 3)
            close = np.abs(window - np.asarray(COLOURS[words[1]])).max(axis=-1) < 40
            assert close.sum() >= 20, (e, part)
