"""Evaluate a method on one split: encode the gallery once, encode the queries, score, rank."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from psbench import distributed
from psbench.backbone.clip import Tokenizer
from psbench.data.loader import FrameSpec, GalleryDataset, make_gallery_loader, pixels_for, prepare_frame_counts
from psbench.data.split import RetrievalSplit
from psbench.method import Encoded, RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.protocol import TestConfig
from psbench.retrieval import engine, metrics


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    ranks: dict[str, Any]
    scores: torch.Tensor  # (Q captions, N videos)


def frame_spec(frames: int, sampler: str, segments: int, method: RetrievalMethod) -> FrameSpec:
    """Frame spec of a protocol section; ``segments = 0`` takes the method's own (Prompt Switch: np)."""
    seg = segments or getattr(method, "sampler_segments", None)
    return FrameSpec(num_frames=frames, sampler=sampler, segments=seg)


def evaluate_split(
    method: RetrievalMethod,
    split: RetrievalSplit,
    cfg: TestConfig,
    tokenizer: Tokenizer,
    device: torch.device,
    progress: Progress | None = None,
    frame_order: str = "keep",
) -> EvalResult:
    """Text-to-video and video-to-text metrics (plus order accuracy when twins exist).

    ``frame_order`` = ``reverse`` or ``shuffle`` destroys the temporal order of every gallery video's
    sampled frames (the frame-order diagnostic): an order-blind method scores the same either way.
    """
    progress = progress or SilentProgress()
    method.eval()
    pixels = pixels_for(device)  # uint8 to a GPU, normalised there (same values)
    dataset = GalleryDataset(
        split,
        frame_spec(cfg.frames, cfg.sampler, cfg.segments, method),
        cfg.transform,
        cfg.resolution,
        frame_order,
        pixels,
    )
    with progress.task(f"frame counts of {split.name} videos", len(split.video_ids)) as task:
        frame_counts = prepare_frame_counts(dataset, cfg.num_workers, task.advance)  # probed once, then reused
    with progress.task(f"encode {split.name} videos", len(split.video_ids)) as task:
        # under torchrun each rank encodes its shard of the gallery; outside it, the whole gallery
        video = encode_gallery_sharded(method, dataset, cfg.batch_size, cfg.num_workers, device, task.advance)
    tokens = tokenizer([c.text for c in split.captions])  # (Q, L)
    with progress.task(f"encode {split.name} captions", len(split.captions)) as task:
        text = engine.encode_queries(method, tokens, cfg.batch_size, device, task.advance)
    with progress.task(f"score {split.name} captions x videos", len(split.video_ids)) as task:
        with torch.inference_mode():
            scores = engine.score_matrix(method, text, video, device=device, progress=task.advance)  # (Q, N)
        scores = scores.float().cpu()
    if cfg.dsl:
        scores = metrics.dual_softmax(scores, cfg.dsl_tau)
    caption_video = np.asarray(split.caption_video_index(), dtype=np.int64)
    t2v = metrics.t2v_ranks(scores, caption_video)
    v2t = metrics.v2t_ranks(scores, caption_video, rule=cfg.v2t_rule)
    result: dict[str, Any] = {
        "t2v": metrics.metrics_from_ranks(t2v, cfg.tie_rule),
        "v2t": metrics.metrics_from_ranks(v2t, cfg.tie_rule),
        "num_queries": len(split.captions),
        "num_videos": len(split.video_ids),
        "tie_rule": cfg.tie_rule,
        "v2t_rule": cfg.v2t_rule,
        "dsl": cfg.dsl,
        "frame_order": frame_order,
        "frame_counts": frame_counts,
        "pixels": pixels,
    }
    if split.twin_of:
        index = {vid: i for i, vid in enumerate(split.video_ids)}
        twin_index = np.array([index.get(split.twin_of.get(v, ""), -1) for v in split.video_ids], dtype=np.int64)
        result["order_accuracy"] = metrics.order_accuracy(scores, caption_video, twin_index)
    ranks = {"t2v": t2v.to_dict(), "v2t": v2t.to_dict(), "caption_video": caption_video.tolist()}
    if split.relation_groups:
        index = {vid: i for i, vid in enumerate(split.video_ids)}
        groups = np.array([[index[v] for v in g.members] for g in split.relation_groups], dtype=np.int64)  # (G, 4)
        margins = metrics.relation_margins(scores, caption_video, groups)  # (G, 4)
        result["relation"] = metrics.relation_summary(margins)
        ranks["relation"] = {"groups": [g.name for g in split.relation_groups], "margins": margins.tolist()}
    return EvalResult(result, ranks, scores)


def encode_gallery_sharded(
    method: RetrievalMethod,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device | str,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    """``engine.encode_gallery`` with the gallery split across ranks; every rank gets the full result.

    Rank r encodes a contiguous shard of the gallery; the pieces are all-gathered in rank order, i.e.
    gallery order, so the result equals single-process encoding item for item (CPU tensors).
    """
    if not distributed.is_distributed():
        return engine.encode_gallery(method, make_gallery_loader(dataset, batch_size, num_workers), device, progress)
    n, ranks = len(dataset), distributed.world_size()
    start, stop = distributed.shard_bounds(n, ranks, distributed.rank())
    if stop <= start:
        raise ValueError(f"gallery of {n} video(s) is too small to shard over {ranks} processes")
    shard = torch.utils.data.Subset(dataset, range(start, stop))
    loader = engine.GalleryShard(make_gallery_loader(shard, batch_size, num_workers), start)
    local = engine.encode_gallery(method, loader, device, progress)  # this shard, CPU tensors
    comm = torch.device(device) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    return {key: distributed.all_gather_rows(value, comm).cpu() for key, value in local.items()}  # (N, ...) each
