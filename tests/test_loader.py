"""Datasets, collate functions, batch samplers and loaders on tiny videos that encode their frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from psbench.backbone.clip import CLIP_MEAN, CLIP_STD, Tokenizer
from psbench.data.loader import (
    FrameSpec,
    GalleryDataset,
    ShuffledBatchSampler,
    TwinPairBatchSampler,
    VideoCaptionDataset,
    collate_train,
    item_rng,
    make_gallery_loader,
    make_train_loader,
    set_loader_epoch,
)
from psbench.data.sampling import sample_frames
from psbench.data.split import Caption, RetrievalSplit
from psbench.data.video import VideoDecodeError, VideoNotFoundError
from psbench.data.video_writer import write_video
from psbench.method import Batch
from psbench.registry import UnknownKeyError

SIZE, BLOCK = 64, 16
LENGTHS = {"v0": 20, "v1": 20, "v2": 24, "v3": 24, "v4": 21, "v5": 21}
TWINS = {"v0": "v1", "v1": "v0", "v2": "v3", "v3": "v2", "v4": "v5", "v5": "v4"}


def coded_video(video_number: int, length: int) -> np.ndarray:
    """Top two block rows: 8 bits of the frame number; bottom two: 8 bits of the video number."""
    frames = np.zeros((length, SIZE, SIZE, 3), dtype=np.uint8)
    for t in range(length):
        for b in range(8):
            r, c = divmod(b, 4)
            frames[t, r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 230 if (t >> b) & 1 else 25
            rows = slice((r + 2) * BLOCK, (r + 3) * BLOCK)
            frames[t, rows, c * BLOCK : (c + 1) * BLOCK] = 230 if (video_number >> b) & 1 else 25
    return frames


def read_codes(frames: torch.Tensor) -> list[tuple[int, int]]:
    """(F, 3, 64, 64) normalised frames -> [(frame number, video number)]."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    codes = []
    for frame in frames:
        pixels = ((frame * std + mean) * 255).mean(0)  # (64, 64)
        bits = [
            [
                pixels[r * BLOCK + 4 : (r + 1) * BLOCK - 4, c * BLOCK + 4 : (c + 1) * BLOCK - 4].mean() > 128
                for c in range(4)
            ]
            for r in range(4)
        ]
        flat = [bool(bits[r][c]) for r in range(4) for c in range(4)]
        codes.append((sum(flat[b] << b for b in range(8)), sum(flat[8 + b] << b for b in range(8))))
    return codes


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> RetrievalSplit:
    root = tmp_path_factory.mktemp("loader_videos")
    paths = {}
    for number, (vid, length) in enumerate(LENGTHS.items()):
        paths[vid] = root / f"{vid}.mp4"
        write_video(paths[vid], coded_video(number, length))
    captions = [Caption(f"a clip number {k} of {vid}", vid) for vid in LENGTHS for k in range(2)]
    return RetrievalSplit("tiny", list(LENGTHS), captions, paths, dict(TWINS))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(max_words=16, context_length=32)


def video_number(video_id: str) -> int:
    return list(LENGTHS).index(video_id)


def test_train_item_shapes_and_frames(split: RetrievalSplit, tokenizer: Tokenizer) -> None:
    ds = VideoCaptionDataset(split, FrameSpec(4, "uniform"), "resize_center_crop", SIZE, tokenizer, seed=0)
    assert len(ds) == 12
    item = ds[5]  # caption 1 of v2 (24 frames)
    assert item["frames"].shape == (4, 3, SIZE, SIZE) and item["frames"].dtype == torch.float32
    assert item["mask"].dtype == torch.bool and item["mask"].tolist() == [True] * 4
    assert item["tokens"].shape == (32,) and item["tokens"].dtype == torch.long
    assert item["tokens"][0] == tokenizer.sot_id and tokenizer.eot_id in item["tokens"].tolist()
    assert (item["video_id"], item["index"]) == ("v2", 5)
    assert read_codes(item["frames"]) == [(i, 2) for i in (0, 7, 15, 23)]  # linspace(0, 23, 4)


def test_random_sampler_frames_follow_the_item_rng(split: RetrievalSplit, tokenizer: Tokenizer) -> None:
    spec = FrameSpec(4, "random_per_segment")
    ds = VideoCaptionDataset(split, spec, "resize_center_crop", SIZE, tokenizer, seed=7)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        for index in (0, 9):
            vid = split.captions[index].video_id
            expected = sample_frames("random_per_segment", LENGTHS[vid], 4, item_rng(7, epoch, index))
            assert read_codes(ds[index]["frames"]) == [(i, video_number(vid)) for i in expected]


def test_same_item_same_epoch_is_identical_other_epoch_differs(split: RetrievalSplit, tokenizer: Tokenizer) -> None:
    spec = FrameSpec(4, "random_per_segment")
    ds = VideoCaptionDataset(split, spec, "random_resized_crop_flip", 32, tokenizer, seed=1)
    ds.set_epoch(2)
    first, again = ds[3]["frames"], ds[3]["frames"]
    assert torch.equal(first, again)
    ds.set_epoch(3)
    assert not torch.equal(first, ds[3]["frames"])
    other = VideoCaptionDataset(split, spec, "random_resized_crop_flip", 32, tokenizer, seed=1)
    other.set_epoch(2)  # a fresh instance (another worker) reproduces the item
    assert torch.equal(first, other[3]["frames"])


def test_gallery_chunked_interleave(split: RetrievalSplit) -> None:
    ds = GalleryDataset(split, FrameSpec(12, "chunked_interleave", 6), "resize_center_crop", SIZE)
    assert len(ds) == 6
    item = ds[2]  # v2: 24 frames; boundaries 0,4,..,24; step 3 // 3 = 1
    assert (item["video_id"], item["index"]) == ("v2", 2)
    expected = [1, 5, 9, 13, 17, 21, 2, 6, 10, 14, 18, 22]
    assert read_codes(item["frames"]) == [(i, 2) for i in expected]
    assert item["mask"].all() and item["mask"].shape == (12,)


def test_gallery_rejects_random_sampler(split: RetrievalSplit) -> None:
    ds = GalleryDataset(split, FrameSpec(4, "random_per_segment"), "resize_center_crop", SIZE)
    with pytest.raises(ValueError, match="needs an rng"):
        ds[0]


def test_gallery_loader_covers_every_video_once(split: RetrievalSplit) -> None:
    ds = GalleryDataset(split, FrameSpec(3, "uniform"), "resize_center_crop", SIZE)
    batches = list(make_gallery_loader(ds, batch_size=4, num_workers=0))
    assert [b["frames"].shape for b in batches] == [(4, 3, 3, SIZE, SIZE), (2, 3, 3, SIZE, SIZE)]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    assert sum((b["video_ids"] for b in batches), []) == split.video_ids
    assert batches[1]["mask"].shape == (2, 3)
    for b in batches:
        for frames, vid in zip(b["frames"], b["video_ids"], strict=True):
            assert {v for _, v in read_codes(frames)} == {video_number(vid)}


def test_workers_do_not_change_the_batches(split: RetrievalSplit, tokenizer: Tokenizer) -> None:
    spec = FrameSpec(4, "random_per_segment")
    runs = []
    for workers in (0, 2):
        ds = VideoCaptionDataset(split, spec, "random_resized_crop_flip", 32, tokenizer, seed=3)
        loader = make_train_loader(ds, batch_size=4, num_workers=workers, seed=3, twin_pairs=False)
        set_loader_epoch(loader, 1)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 3
    for a, b in zip(*runs, strict=True):
        assert isinstance(a, Batch) and a.frames.shape == (4, 4, 3, 32, 32)
        assert a.video_ids == b.video_ids
        assert torch.equal(a.frames, b.frames) and torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


def test_twin_loader_puts_twins_in_every_batch(split: RetrievalSplit, tokenizer: Tokenizer) -> None:
    ds = VideoCaptionDataset(split, FrameSpec(2, "uniform"), "resize_center_crop", 32, tokenizer, seed=0)
    loader = make_train_loader(ds, batch_size=4, num_workers=0, seed=5, twin_pairs=True, drop_last=False)
    seen = []
    for epoch in range(3):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            ids = set(batch.video_ids)
            assert {TWINS[v] for v in ids} == ids
            seen += batch.video_ids
    assert sorted(seen) == sorted(list(LENGTHS) * 3)  # every video once per epoch


def test_twin_sampler_determinism_and_epochs() -> None:
    video_ids = [f"v{k // 3}" for k in range(3 * 40)]  # 40 videos, 3 captions each
    twins = {f"v{k}": f"v{k ^ 1}" for k in range(40)}
    sampler = TwinPairBatchSampler(video_ids, twins, batch_size=8, seed=11)
    same = TwinPairBatchSampler(video_ids, twins, batch_size=8, seed=11)
    sampler.set_epoch(4)
    same.set_epoch(4)
    batches = list(sampler)
    assert batches == list(same) and len(sampler) == 5
    for batch in batches:
        vids = [video_ids[i] for i in batch]
        assert len(batch) == 8 and len(set(vids)) == 8
        assert {twins[v] for v in vids} == set(vids)
    assert sorted(video_ids[i] for b in batches for i in b) == sorted(set(video_ids))
    sampler.set_epoch(5)
    assert list(sampler) != batches
    captions_used = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        captions_used.update(i for b in sampler for i in b)
    assert captions_used == set(range(120))  # every caption gets its turn


def test_twin_sampler_fills_a_lone_slot_with_an_unpaired_video() -> None:
    # 3 pairs + 3 singles, batch 3: a pair never straddles batches; singles fill the odd slots
    video_ids = ["a", "b", "c", "d", "e", "f", "x", "y", "z"]
    twins = {"a": "b", "b": "a", "c": "d", "d": "c", "e": "f", "f": "e"}
    for seed in range(20):
        sampler = TwinPairBatchSampler(video_ids, twins, batch_size=3, seed=seed, drop_last=False)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(9))
        assert all(len(b) <= 3 for b in batches)
        for b in batches:
            for i in b:
                if video_ids[i] in twins:
                    assert video_ids.index(twins[video_ids[i]]) in b
        singles = {video_ids.index(v) for v in "xyz"}
        for k, b in enumerate(batches[:-1]):
            if len(b) < 3:  # closed short only when no single was left to fill it
                assert not singles & {i for later in batches[k + 1 :] for i in later}


def test_twin_sampler_drop_last_and_sharding() -> None:
    video_ids = [f"v{k}" for k in range(10)]
    twins = {f"v{k}": f"v{k ^ 1}" for k in range(10)}
    full = TwinPairBatchSampler(video_ids, twins, batch_size=4, seed=2, drop_last=True)
    assert [len(b) for b in full] == [4, 4]
    kept = TwinPairBatchSampler(video_ids, twins, batch_size=4, seed=2, drop_last=False)
    assert [len(b) for b in kept] == [4, 4, 2]
    shards = [list(TwinPairBatchSampler(video_ids, twins, 4, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards, strict=True)] == list(full)
    with pytest.raises(ValueError, match="not symmetric"):
        TwinPairBatchSampler(video_ids, {"v0": "v1", "v1": "v2"}, 4, seed=0)


def test_shuffled_batch_sampler() -> None:
    sampler = ShuffledBatchSampler(10, batch_size=4, seed=0, drop_last=False)
    first = list(sampler)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(i for b in first for i in b) == list(range(10))
    assert list(ShuffledBatchSampler(10, 4, seed=0, drop_last=False)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(ShuffledBatchSampler(10, 4, seed=0)) == 2
    shards = [list(ShuffledBatchSampler(10, 4, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards, strict=True)] == first[:2]


def test_collate_unique_videos_keeps_first_occurrence() -> None:
    def item(vid: str, value: float) -> dict:
        return {
            "frames": torch.full((2, 3, 4, 4), value),
            "mask": torch.ones(2, dtype=torch.bool),
            "tokens": torch.full((5,), int(value), dtype=torch.long),
            "video_id": vid,
            "index": int(value),
        }

    items = [item("a", 0), item("b", 1), item("a", 2), item("c", 3)]
    assert collate_train(items).video_ids == ["a", "b", "a", "c"]
    batch = collate_train(items, unique_videos=True)
    assert batch.video_ids == ["a", "b", "c"]
    assert batch.frames[:, 0, 0, 0, 0].tolist() == [0.0, 1.0, 3.0]
    assert batch.tokens.shape == (3, 5)


@pytest.mark.slow  # spawns DataLoader worker processes
def test_missing_video_error_names_the_file_through_workers(
    split: RetrievalSplit, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    missing = tmp_path / "gone" / "lost_video.mp4"
    broken = RetrievalSplit(
        "broken", split.video_ids, split.captions, {**split.video_paths, "v3": missing}, dict(TWINS)
    )
    ds = VideoCaptionDataset(broken, FrameSpec(2, "uniform"), "resize_center_crop", 32, tokenizer, seed=0)
    loader = make_train_loader(ds, batch_size=12, num_workers=2, seed=0, twin_pairs=False)
    with pytest.raises(VideoNotFoundError, match=str(missing)):
        list(loader)
    gallery = GalleryDataset(broken, FrameSpec(2, "uniform"), "resize_center_crop", 32)
    with pytest.raises(VideoNotFoundError, match=str(missing)):
        list(make_gallery_loader(gallery, batch_size=2, num_workers=2))


@pytest.mark.slow  # spawns DataLoader worker processes
def test_corrupt_video_error_names_the_file_through_workers(split: RetrievalSplit, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt_clip.mp4"
    corrupt.write_bytes(split.video_paths["v1"].read_bytes()[:-400])
    broken = RetrievalSplit("broken", split.video_ids, split.captions, {**split.video_paths, "v1": corrupt})
    gallery = GalleryDataset(broken, FrameSpec(2, "uniform"), "resize_center_crop", 32)
    with pytest.raises(VideoDecodeError, match=str(corrupt)):
        list(make_gallery_loader(gallery, batch_size=3, num_workers=2))


def test_frame_spec_validates() -> None:
    with pytest.raises(UnknownKeyError, match="chunked_interleave"):
        FrameSpec(12, "no_such_sampler")
    with pytest.raises(ValueError, match="num_frames"):
        FrameSpec(0, "uniform")
    with pytest.raises(ValueError, match="no twin videos"):
        ds = VideoCaptionDataset(
            RetrievalSplit("plain", [], [], {}), FrameSpec(2, "uniform"), "resize_square", 8, lambda t: t, 0
        )
        make_train_loader(ds, batch_size=2, num_workers=0, seed=0, twin_pairs=True)
