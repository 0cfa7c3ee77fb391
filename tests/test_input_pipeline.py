"""The video input pipeline: frame counts probed once and persisted (no video decoded twice per epoch, stale
entries caught), persistent workers with the per-epoch determinism rule, workers sized to the machine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from psbench.backbone.clip import Tokenizer
from psbench.data import video as video_module
from psbench.data.frame_counts import MANIFEST_NAME, FrameCounts, ensure_counts
from psbench.data.loader import (
    FrameSpec,
    GalleryDataset,
    VideoCaptionDataset,
    make_gallery_loader,
    make_train_loader,
    prepare_frame_counts,
    set_loader_epoch,
)
from psbench.data.split import Caption, RetrievalSplit
from psbench.data.video import VideoDecodeError
from psbench.data.video_writer import write_video


def _videos(folder: Path, lengths: dict[str, int]) -> RetrievalSplit:
    rng = np.random.default_rng(0)
    paths = {}
    for vid, length in lengths.items():
        paths[vid] = folder / f"{vid}.mp4"
        write_video(paths[vid], rng.integers(0, 255, (length, 32, 32, 3), dtype=np.uint8), fps=8)
    captions = [Caption(f"caption {i} of {vid}", vid) for vid in lengths for i in range(2)]
    return RetrievalSplit("train", list(lengths), captions, paths)


@pytest.fixture()
def opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every decoder open appends one line (path) to a file: counts opens in worker processes too (fork)."""
    log = tmp_path / "opens.txt"
    real_open = video_module._open

    def counting_open(path):  # type: ignore[no-untyped-def]
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return real_open(path)

    monkeypatch.setattr(video_module, "_open", counting_open)
    return log


def _count(log: Path) -> dict[str, int]:
    lines = log.read_text().splitlines() if log.is_file() else []
    return {Path(p).stem: lines.count(p) for p in dict.fromkeys(lines)}


@pytest.mark.parametrize("workers", [0, 2])
def test_each_epoch_decodes_each_needed_video_once(tmp_path: Path, opens: Path, workers: int) -> None:
    split = _videos(tmp_path / "videos", {f"v{i}": 20 + i for i in range(4)})
    tokenizer = Tokenizer(max_words=8, context_length=16)
    dataset = VideoCaptionDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32, tokenizer, seed=0)
    facts = prepare_frame_counts(dataset, workers)
    assert facts["probed"] == 4 and facts["reused"] == 0
    assert _count(opens) == {f"v{i}": 1 for i in range(4)}  # the one probe per video, ever
    opens.unlink()
    loader = make_train_loader(dataset, batch_size=4, num_workers=workers, seed=0, twin_pairs=False)
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        for _ in loader:
            pass
        # one open per item read (each video has 2 captions), no probe: 2 decodes per video per epoch
        assert _count(opens) == {f"v{i}": 2 * (epoch + 1) for i in range(4)}, epoch
    # a second run (a new process would do the same) reuses the manifest: no probe at all
    opens.unlink()
    again = VideoCaptionDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32, tokenizer, seed=0)
    assert prepare_frame_counts(again, workers)["probed"] == 0 and not opens.exists()


def test_manifest_records_counts_with_size_and_mtime(tmp_path: Path) -> None:
    split = _videos(tmp_path / "videos", {"a": 9, "b": 13})
    counts = FrameCounts.load(tmp_path / "videos")
    known = ensure_counts(counts, split.video_paths.values())
    assert sorted(known.values()) == [9, 13]
    data = json.loads((tmp_path / "videos" / MANIFEST_NAME).read_text())
    assert data["kind"] == "psbench-frame-counts" and set(data["videos"]) == {"a.mp4", "b.mp4"}
    stat = os.stat(split.video_paths["a"])
    assert data["videos"]["a.mp4"] == {"frames": 9, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def test_changed_video_is_named_and_probed_again_never_sampled_with_the_stale_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = _videos(tmp_path / "videos", {"a": 30, "b": 12})
    gallery = GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32)
    prepare_frame_counts(gallery, 0)
    write_video(split.video_paths["a"], np.zeros((6, 32, 32, 3), dtype=np.uint8), fps=8)  # now 6 frames, not 30
    with caplog.at_level(logging.WARNING, logger="psbench"):
        item = gallery[0]  # the loader checks the stamp before using the count
    assert item["frames"].shape[0] == 4
    assert any(str(split.video_paths["a"]) in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)
    fresh = FrameCounts.load(tmp_path / "videos")
    assert fresh.count(split.video_paths["a"]) is None  # stale in the manifest too
    assert prepare_frame_counts(GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32), 0)[
        "stale"
    ] == [str(split.video_paths["a"])]
    assert FrameCounts.load(tmp_path / "videos").count(split.video_paths["a"]) == 6


def test_corrupt_video_with_a_recorded_count_is_named(tmp_path: Path) -> None:
    split = _videos(tmp_path / "videos", {"a": 10, "b": 10})
    gallery = GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32)
    prepare_frame_counts(gallery, 0)
    split.video_paths["a"].write_bytes(b"\x00garbage" * 100)
    with pytest.raises(VideoDecodeError, match="a.mp4"):
        gallery[0]
    facts = prepare_frame_counts(GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32), 0)
    assert facts["unreadable"] == [str(split.video_paths["a"])]  # left to fail where it is read, naming it
    loader = make_gallery_loader(gallery, 2, 0)
    with pytest.raises(VideoDecodeError, match="a.mp4"):
        list(loader)


def test_unreadable_manifest_is_rebuilt_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    split = _videos(tmp_path / "videos", {"a": 7})
    (tmp_path / "videos" / MANIFEST_NAME).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="psbench"):
        counts = FrameCounts.load(tmp_path / "videos")
    assert counts.entries == {} and "unreadable frame-count manifest" in caplog.text
    assert ensure_counts(counts, split.video_paths.values()) == {str(split.video_paths["a"]): 7}


def test_verify_and_compress_write_the_counts_the_loaders_reuse(tmp_path: Path, opens: Path) -> None:
    from psbench.data.prepare.compress import CompressSettings, compress_videos
    from psbench.data.prepare.verify import verify_dataset

    split = _videos(tmp_path / "raw", {"a": 16, "b": 24})
    verify_dataset([split])
    opens.unlink()
    gallery = GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 32)
    assert prepare_frame_counts(gallery, 0)["probed"] == 0 and not opens.exists()  # verify already counted

    compress_videos(tmp_path / "raw", tmp_path / "small", CompressSettings(fps=4.0, size=32))
    small = RetrievalSplit("test", ["a", "b"], split.captions, {v: tmp_path / "small" / f"{v}.mp4" for v in "ab"})
    opens.unlink(missing_ok=True)
    facts = prepare_frame_counts(GalleryDataset(small, FrameSpec(4, "uniform"), "resize_center_crop", 32), 0)
    assert facts["probed"] == 0 and facts["reused"] == 2 and not opens.exists()
    recorded = json.loads((tmp_path / "small" / MANIFEST_NAME).read_text())["videos"]
    assert {k: v["frames"] for k, v in recorded.items()} == {"a.mp4": 8, "b.mp4": 12}  # 2 s and 3 s at 4 fps


def test_persistent_workers_give_exactly_the_items_of_a_fresh_in_process_loader(tmp_path: Path) -> None:
    """Workers live across epochs; the (epoch, index) keys keep each item a pure function of (seed, epoch, index)."""
    split = _videos(tmp_path / "videos", {f"v{i}": 20 + i for i in range(4)})
    tokenizer = Tokenizer(max_words=8, context_length=16)

    def epochs(workers: int) -> list[list]:
        dataset = VideoCaptionDataset(
            split, FrameSpec(4, "random_per_segment"), "random_resized_crop_flip", 32, tokenizer, seed=3
        )
        loader = make_train_loader(dataset, batch_size=4, num_workers=workers, seed=3, twin_pairs=False)
        assert loader.persistent_workers == (workers > 0)
        out = []
        for epoch in range(3):
            set_loader_epoch(loader, epoch)
            out.append([(b.video_ids, b.frames.clone()) for b in loader])
        return out

    fresh, persistent = epochs(0), epochs(2)
    for a, b in zip(fresh, persistent, strict=True):
        assert [ids for ids, _ in a] == [ids for ids, _ in b]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert not torch.equal(fresh[0][0][1], fresh[1][0][1])  # epochs do differ


def test_real_protocols_use_every_cpu_and_the_number_is_known() -> None:
    from psbench.data.datasets import GENERATED
    from psbench.data.loader import ALL_CPUS, available_cpus, usable_workers
    from psbench.protocol import list_protocols, load_protocol, resolve

    assert usable_workers(ALL_CPUS) == available_cpus() and usable_workers(10_000) == available_cpus()
    with pytest.raises(ValueError, match="-1"):
        usable_workers(-2)
    for name in list_protocols():
        cfg = resolve(load_protocol(name), "meanpool")
        if cfg.data.dataset not in GENERATED:
            assert cfg.train.num_workers == cfg.test.num_workers == ALL_CPUS, name


def test_every_loader_worker_keeps_the_memory_it_frees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both loaders run allocator.keep_freed_memory once in each worker process (glibc mallopt there)."""
    import sys

    from psbench.data import allocator

    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert allocator.keep_freed_memory()  # mallopt accepted both settings
    log = tmp_path / "workers.txt"

    def recording() -> bool:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return True

    monkeypatch.setattr(allocator, "keep_freed_memory", recording)
    split = _videos(tmp_path, {"a": 8, "b": 8, "c": 8, "d": 8})
    gallery = GalleryDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 16)
    list(make_gallery_loader(gallery, batch_size=1, num_workers=2))
    pids = log.read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2 and str(os.getpid()) not in pids
    tokenizer = Tokenizer(max_words=8, context_length=16)
    train = VideoCaptionDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", 16, tokenizer, seed=0)
    loader = make_train_loader(train, batch_size=2, num_workers=2, seed=0, twin_pairs=False)
    for epoch in range(2):  # persistent workers: initialised once, not per epoch
        set_loader_epoch(loader, epoch)
        list(loader)
    assert len(log.read_text().split()) == 4
