"""Torch datasets, collate functions, batch samplers and loaders for training and gallery encoding.

Randomness never comes from global state: a training item draws its frames and augmentation from
``np.random.default_rng([seed, epoch, index])`` and a batch sampler shuffles with
``np.random.default_rng([seed, epoch])``, so results do not depend on the number of workers or on
which worker loads an item. Call :func:`set_loader_epoch` (or ``set_epoch`` on the dataset and the
batch sampler) before iterating an epoch. Workers are not persistent, so each epoch's workers see
the current epoch.
"""

from __future__ import annotations

import functools
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from psbench.data.allocator import loader_worker_init
from psbench.data.frame_counts import FrameCounts, ensure_counts, manifest_folder
from psbench.data.sampling import SAMPLERS, sample_frames
from psbench.data.split import RetrievalSplit
from psbench.data.transforms import VideoTransform, make_transform
from psbench.data.video import FrameIndexError, VideoDecodeError, VideoNotFoundError, decode_frames, probe_video
from psbench.method import Batch

log = logging.getLogger(__name__)

Item = dict[str, Any]


@dataclass(frozen=True)
class FrameSpec:
    """How many frames a video yields and which named sampler chooses them."""

    num_frames: int
    sampler: str
    segments: int | None = None

    def __post_init__(self) -> None:
        SAMPLERS.get(self.sampler)  # unknown names fail here, listing the valid ones
        if self.num_frames < 1:
            raise ValueError(f"FrameSpec.num_frames must be >= 1, got {self.num_frames}")


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training item: a pure function of (seed, epoch, item index)."""
    return np.random.default_rng([seed, epoch, index])


#: what a loader item's frames are: CLIP-normalised float32, or the uint8 pixels the consumer normalises after
#: copying them to the device (``psbench.backbone.pixels.model_pixels``; same values, a quarter of the bytes)
PIXELS = ("normalized", "uint8")


def pixels_for(device: torch.device | str) -> str:
    """uint8 frames for a CUDA device (normalised there, after the copy), normalised floats otherwise."""
    return "uint8" if torch.device(device).type == "cuda" else "normalized"


class _VideoClips:
    """Reads the sampled, transformed frames of the split's videos.

    Frame counts come from a :class:`FrameCounts` (the persisted manifest after :meth:`use_frame_counts`,
    loaded once in the main process and inherited by every loader worker; otherwise an empty in-memory one),
    which trusts a recorded count only while the file's size and mtime are the recorded ones: a video
    changed since is named in a warning and probed again, never sampled with a stale count. A count probed
    here is recorded in that same object, so each process probes a video at most once.
    """

    def __init__(
        self, split: RetrievalSplit, frames: FrameSpec, transform: str, size: int, pixels: str = "normalized"
    ) -> None:
        if pixels not in PIXELS:
            raise ValueError(f"pixels={pixels!r}; valid: {', '.join(PIXELS)}")
        self.split, self.frames = split, frames
        self.transform: VideoTransform = make_transform(transform, size, normalized=pixels == "normalized")
        self.counts = FrameCounts(Path("."))  # in memory until use_frame_counts hands over the manifest

    def use_frame_counts(self, counts: FrameCounts) -> None:
        """Read frame counts from ``counts`` (the dataset's manifest, already ensured) from now on."""
        self.counts = counts

    def frame_count(self, path: Path) -> int:
        known = self.counts.count(path)
        if known is not None:
            return known
        frames = probe_video(path).num_frames  # a missing or corrupt file raises here, naming it
        self.counts.record(path, frames)
        return frames

    def path(self, video_id: str) -> Path:
        try:
            return Path(self.split.video_paths[video_id])
        except KeyError:
            raise VideoNotFoundError(f"split {self.split.name!r} has no file for video {video_id!r}") from None

    def clip(self, video_id: str, rng: np.random.Generator | None) -> tuple[Tensor, Tensor]:
        """-> frames (F, 3, S, S) float (uint8 with ``pixels="uint8"``), mask (F,) bool (all True: samplers
        always return F frames)."""
        path = self.path(video_id)
        spec = self.frames
        indices = sample_frames(spec.sampler, self.frame_count(path), spec.num_frames, rng, spec.segments)
        pixels = decode_frames(path, indices)  # (F, H, W, 3) uint8
        frames = self.transform(pixels, rng)  # (F, 3, S, S)
        return frames, torch.ones(spec.num_frames, dtype=torch.bool)


class VideoCaptionDataset(Dataset):
    """Training: one item per caption of ``split`` (a video with k captions appears k times).

    Item: frames (F, 3, S, S) float, mask (F,) bool, tokens (L,) int64, video_id str, index int.
    With ``skip_corrupt`` a video that fails to decode yields ``{"skipped": "<id>: <error>", ...}``
    instead (collate_train leaves it out and lists it in ``Batch.skipped``); otherwise the error
    (which names the file) propagates.
    """

    def __init__(
        self,
        split: RetrievalSplit,
        frames: FrameSpec,
        transform: str,
        size: int,
        tokenizer: Callable[[list[str]], Tensor],
        seed: int,
        skip_corrupt: bool = False,
        pixels: str = "normalized",
    ) -> None:
        self.split, self.tokenizer, self.seed, self.skip_corrupt = split, tokenizer, seed, skip_corrupt
        self.clips = _VideoClips(split, frames, transform, size, pixels)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def video_ids_needed(self) -> list[str]:
        """The videos this dataset reads: those with a caption, in caption order."""
        return [c.video_id for c in self.split.captions]

    def __len__(self) -> int:
        return len(self.split.captions)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        """Item ``index`` of the current epoch, or of the epoch named by an (epoch, index) key (the samplers')."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        caption = self.split.captions[index]
        try:
            frames, mask = self.clips.clip(caption.video_id, item_rng(self.seed, epoch, index))
        except (VideoDecodeError, FrameIndexError) as exc:
            if not self.skip_corrupt:
                raise
            log.warning("skipping corrupt video %s: %s", caption.video_id, exc)
            return {"skipped": f"{caption.video_id}: {exc}", "video_id": caption.video_id, "index": index}
        tokens = self.tokenizer([caption.text])[0].to(torch.long)  # (L,)
        return {
            "frames": frames,
            "mask": mask,
            "tokens": tokens,
            "video_id": caption.video_id,
            "index": index,
        }


class GalleryDataset(Dataset):
    """Evaluation: one item per gallery video (each decoded once), deterministic (no rng).

    Item: frames (F, 3, S, S) float, mask (F,) bool, video_id str, index int (gallery position).
    A random sampler or transform fails here with its own "needs an rng" error.
    """

    def __init__(
        self,
        split: RetrievalSplit,
        frames: FrameSpec,
        transform: str,
        size: int,
        frame_order: str = "keep",
        pixels: str = "normalized",
    ) -> None:
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"frame_order={frame_order!r}; valid: {', '.join(FRAME_ORDERS)}")
        self.split = split
        self.clips = _VideoClips(split, frames, transform, size, pixels)
        self.frame_order = frame_order

    def video_ids_needed(self) -> list[str]:
        """The gallery's videos, in gallery order."""
        return list(self.split.video_ids)

    def __len__(self) -> int:
        return len(self.split.video_ids)

    def __getitem__(self, index: int) -> Item:
        video_id = self.split.video_ids[index]
        frames, mask = self.clips.clip(video_id, None)  # (F, 3, S, S), (F,)
        if self.frame_order != "keep":
            order = reorder_frames(len(frames), self.frame_order, index)
            frames, mask = frames[order], mask[order]
        return {"frames": frames, "mask": mask, "video_id": video_id, "index": index}


FRAME_ORDERS = ("keep", "reverse", "shuffle")


def reorder_frames(num_frames: int, order: str, index: int) -> torch.Tensor:
    """Frame permutation for the frame-order diagnostics: reversed, or a fixed shuffle per gallery index."""
    if order == "reverse":
        return torch.arange(num_frames - 1, -1, -1)
    if order == "shuffle":
        return torch.from_numpy(np.random.default_rng([20261129, index]).permutation(num_frames))
    return torch.arange(num_frames)


def collate_train(items: Sequence[Item], unique_videos: bool = False) -> Batch:
    """Stack training items into a :class:`Batch`.

    ``unique_videos``: keep only the first item of each video (Prompt Switch's collate, spec §6.7),
    so a video is never its own negative; the batch can then be smaller than requested.
    Items marked ``skipped`` (corrupt videos) are left out and listed in ``Batch.skipped``.
    """
    skipped = [it["skipped"] for it in items if "skipped" in it]
    items = [it for it in items if "skipped" not in it]
    if not items:
        raise VideoDecodeError(f"every video of a training batch is corrupt: {'; '.join(skipped)}")
    if unique_videos:
        first: dict[str, Item] = {}
        for it in items:
            first.setdefault(it["video_id"], it)
        items = list(first.values())
    return Batch(
        frames=torch.stack([it["frames"] for it in items]),  # (B, F, 3, S, S)
        mask=torch.stack([it["mask"] for it in items]),  # (B, F)
        tokens=torch.stack([it["tokens"] for it in items]),  # (B, L)
        video_ids=[it["video_id"] for it in items],
        skipped=skipped,
    )


def collate_gallery(items: Sequence[Item]) -> Item:
    """Stack gallery items: frames (N, F, 3, S, S), mask (N, F), index (N,), video_ids list."""
    return {
        "frames": torch.stack([it["frames"] for it in items]),  # (N, F, 3, S, S)
        "mask": torch.stack([it["mask"] for it in items]),  # (N, F)
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),  # (N,)
        "video_ids": [it["video_id"] for it in items],
    }


class _EpochBatchSampler(Sampler[list[int]], ABC):
    """Global batches drawn from (seed, epoch), optionally sharded across ``num_replicas`` processes.

    Every process computes the same global batches and keeps its contiguous share
    ``batch[rank * b : (rank + 1) * b]`` with ``b = batch_size // num_replicas``, so the all-gathered
    batch of a distributed step is exactly the global batch.
    """

    def __init__(self, batch_size: int, seed: int, drop_last: bool, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas={num_replicas}")
        if batch_size % num_replicas:
            raise ValueError(f"batch_size={batch_size} is not divisible by num_replicas={num_replicas}")
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @abstractmethod
    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, before ``drop_last`` and sharding."""

    def _batches(self) -> list[list[int]]:
        batches = self.global_batches()
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.num_replicas == 1:
            return batches
        batches = [b for b in batches if len(b) >= self.num_replicas]  # every rank gets >= 1 item
        shards = []
        for b in batches:
            bounds = np.linspace(0, len(b), self.num_replicas + 1).astype(int)
            shards.append(b[bounds[self.rank] : bounds[self.rank + 1]])
        return shards

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class EpochKeyedBatches(Sampler[list[tuple[int, int]]]):
    """A batch sampler's batches as (epoch, item index) keys.

    A persistent loader worker keeps the copy of the dataset it started with, and with it that copy's
    epoch; keyed items still draw from (seed, the sampler's epoch, index), so persistent workers give
    exactly the items of fresh ones.
    """

    def __init__(self, sampler: _EpochBatchSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        return iter([[(epoch, i) for i in batch] for batch in self.sampler])

    def __len__(self) -> int:
        return len(self.sampler)


class ShuffledBatchSampler(_EpochBatchSampler):
    """A fresh permutation of all items every epoch, cut into batches."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, drop_last, num_replicas, rank)
        self.num_items = num_items

    def global_batches(self) -> list[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items).tolist()
        return [order[i : i + self.batch_size] for i in range(0, self.num_items, self.batch_size)]


class TwinPairBatchSampler(_EpochBatchSampler):
    """Batches in which every video meets its time-reversed twin (synthetic set).

    Each epoch: shuffle the twin pairs (videos without a twin form groups of one), take one random
    caption per video, and pack the groups into batches without splitting a pair. When a pair does
    not fit in the last free slot, the next single video fills it; if there is none the batch is
    closed one short (only with an odd batch size or with unpaired videos). An epoch therefore
    visits every video once, with one of its captions.
    """

    def __init__(
        self,
        caption_video_ids: Sequence[str],
        twin_of: Mapping[str, str],
        batch_size: int,
        seed: int,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(batch_size, seed, drop_last, num_replicas, rank)
        if batch_size < 2:
            raise ValueError(f"TwinPairBatchSampler needs batch_size >= 2 to hold a pair; got {batch_size}")
        self.captions_of: dict[str, list[int]] = {}
        for index, video_id in enumerate(caption_video_ids):
            self.captions_of.setdefault(video_id, []).append(index)
        for video_id, twin in twin_of.items():
            if twin_of.get(twin) != video_id:
                raise ValueError(
                    f"twin_of is not symmetric: {video_id!r} -> {twin!r}, but {twin!r} -> {twin_of.get(twin)!r}"
                )
        self.groups: list[tuple[str, ...]] = []
        placed: set[str] = set()
        for video_id in self.captions_of:  # first-appearance order: deterministic
            if video_id in placed:
                continue
            twin = twin_of.get(video_id)
            paired = twin is not None and twin != video_id and twin in self.captions_of
            group = (video_id, twin) if paired else (video_id,)
            if not paired and twin is not None:
                log.warning("video %r: its twin %r has no caption in this split; batched alone", video_id, twin)
            self.groups.append(group)
            placed.update(group)

    def global_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        units = [
            [self.captions_of[v][int(rng.integers(len(self.captions_of[v])))] for v in self.groups[g]]
            for g in rng.permutation(len(self.groups))
        ]
        used = [False] * len(units)
        singles = (k for k, unit in enumerate(units) if len(unit) == 1)
        batches: list[list[int]] = []
        current: list[int] = []
        for k, unit in enumerate(units):
            if used[k]:
                continue
            used[k] = True
            if len(current) + len(unit) > self.batch_size:  # a pair facing one free slot
                filler = next((s for s in singles if not used[s]), None)
                if filler is not None:
                    used[filler] = True
                    current += units[filler]
                batches.append(current)
                current = []
            current += unit
            if len(current) == self.batch_size:
                batches.append(current)
                current = []
        if current:
            batches.append(current)
        return batches


#: batches each loader worker prepares ahead (torch's default, 2, starves a fast GPU step on short clips)
PREFETCH_BATCHES = 4


def _pin_memory() -> bool:
    return torch.cuda.is_available()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: ``num_workers`` meaning "every CPU this process may use" (what the real protocols ask for)
ALL_CPUS = -1


def usable_workers(requested: int) -> int:
    """Loader worker processes actually started: ``requested`` capped by :func:`available_cpus`
    (``-1``: all of them)."""
    if requested == ALL_CPUS:
        return available_cpus()
    if requested < 0:
        raise ValueError(f"num_workers must be >= 0 or -1 (every CPU), got {requested}")
    return min(requested, available_cpus())


def _capped_workers(requested: int) -> int:
    used = usable_workers(requested)
    if used < requested:
        log.info("num_workers=%d capped to %d: this process may use %d CPU(s)", requested, used, available_cpus())
    return used


def worker_error(exc: BaseException) -> BaseException | None:
    """The original error of a DataLoader worker, rebuilt from torch's re-raised copy, else None.

    torch re-raises a worker's exception in the main process as the same type with the worker's whole
    traceback as its message; this returns an exception of that type with the original message only, so
    a corrupt video reads the same with ``num_workers > 0`` as with ``num_workers = 0``.
    """
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
    if not text.startswith("Caught ") or "DataLoader worker process" not in text.split("\n", 1)[0]:
        return None
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    marker = f"\n{name}: "
    at = text.rfind(marker)
    if at < 0:
        return None
    try:
        return cls(text[at + len(marker) :].rstrip("\n"))
    except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt from a message
        return None


class WorkerErrorLoader(DataLoader):
    """A DataLoader whose worker errors are re-raised as the original error (type and one-line message)."""

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                original = worker_error(exc)
                if original is None:
                    raise
                raise original from None
            yield item


def make_train_loader(
    dataset: VideoCaptionDataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    twin_pairs: bool,
    drop_last: bool = True,
    unique_videos: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """Training loader: seeded per-epoch batches (twin-paired for the synthetic set) -> :class:`Batch`.

    ``batch_size`` is the global batch; with ``num_replicas > 1`` each process loads its share.
    """
    sampler: _EpochBatchSampler
    if twin_pairs:
        if not dataset.split.twin_of:
            raise ValueError(f"twin_pairs requested but split {dataset.split.name!r} has no twin videos")
        video_ids = [c.video_id for c in dataset.split.captions]
        sampler = TwinPairBatchSampler(
            video_ids, dataset.split.twin_of, batch_size, seed, drop_last, num_replicas, rank
        )
    else:
        sampler = ShuffledBatchSampler(len(dataset), batch_size, seed, drop_last, num_replicas, rank)
    workers = _capped_workers(num_workers)
    return WorkerErrorLoader(
        dataset,
        batch_sampler=EpochKeyedBatches(sampler),
        num_workers=workers,
        collate_fn=functools.partial(collate_train, unique_videos=unique_videos),
        pin_memory=_pin_memory(),
        worker_init_fn=loader_worker_init,
        # workers live across epochs (their frame counts and decoder state with them): the sampler's
        # (epoch, index) keys keep every item a pure function of (seed, epoch, index)
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
    )


def make_gallery_loader(dataset: GalleryDataset, batch_size: int, num_workers: int) -> DataLoader:
    """Evaluation loader: the gallery in order, each video once, last batch kept."""
    return WorkerErrorLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=_capped_workers(num_workers),
        collate_fn=collate_gallery,
        pin_memory=_pin_memory(),
        worker_init_fn=loader_worker_init,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch on the loader's dataset and batch sampler (call before iterating)."""
    for part in (loader.dataset, loader.batch_sampler):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def prepare_frame_counts(
    dataset: VideoCaptionDataset | GalleryDataset, workers: int, advance: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Load (or build once, in ``workers`` processes) the frame-count manifest of the dataset's videos and
    hand the counts to the dataset; returns what the run record keeps (manifest, reused, probed, stale)."""
    clips = dataset.clips
    video_ids = list(dict.fromkeys(dataset.video_ids_needed()))
    paths = [clips.path(v) for v in video_ids]
    counts = FrameCounts.find(manifest_folder(paths))
    ensure_counts(counts, paths, usable_workers(workers), advance)
    clips.use_frame_counts(counts)
    return {
        "manifest": str(counts.path),
        "videos": len(paths),
        "reused": len(paths) - counts.probed,
        "probed": counts.probed,
        "stale": list(counts.stale),
        "unreadable": sorted(counts.unreadable),
    }
