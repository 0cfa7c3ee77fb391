"""Evaluate a method on one split: encode the gallery once, encode the queries, score, rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from psbench import distributed, engine, metrics
from psbench.backbone import Tokenizer
from psbench.data.loader import FrameSpec, GalleryDataset
from psbench.data.split import RetrievalSplit
from psbench.method import RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.protocol import TestConfig


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
    dataset = GalleryDataset(
        split, frame_spec(cfg.frames, cfg.sampler, cfg.segments, method), cfg.transform, cfg.resolution, frame_order
    )
    with progress.task(f"encode {split.name} videos", len(split.video_ids)) as task:
        # under torchrun each rank encodes its shard of the gallery; outside it, the whole gallery
        video = distributed.encode_gallery_sharded(
            method, dataset, cfg.batch_size, cfg.num_workers, device, task.advance
        )
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
    }
    if split.twin_of:
        index = {vid: i for i, vid in enumerate(split.video_ids)}
        twin_index = np.array([index.get(split.twin_of.get(v, ""), -1) for v in split.video_ids], dtype=np.int64)
        result["order_accuracy"] = metrics.order_accuracy(scores, caption_video, twin_index)
    ranks = {"t2v": t2v.to_dict(), "v2t": v2t.to_dict(), "caption_video": caption_video.tolist()}
    return EvalResult(result, ranks, scores)
