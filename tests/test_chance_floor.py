"""The random baseline is a chance floor: its recall is what uniform ranks give (R@K = K/N, MnR = (N+1)/2)."""

from __future__ import annotations

import math

import torch

from psbench.backbone.clip import create_clip
from psbench.catalog import METHOD_TABLE, create_method
from psbench.retrieval.metrics import evaluate_scores


def test_random_floor_gives_chance_level_recall() -> None:
    n_videos, caps_per_video = 50, 40  # 2000 text queries
    method = create_method("random", create_clip("psbench-tiny")).eval()
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(n_videos, 4, 3, 8, 8, generator=g)
    mask = torch.ones(n_videos, 4, dtype=torch.bool)
    tokens = torch.randint(1, 1000, (n_videos * caps_per_video, 12), generator=g)
    caption_video = torch.arange(n_videos).repeat_interleave(caps_per_video)
    with torch.no_grad():
        scores = method.similarity(method.encode_text(tokens), method.encode_video(frames, mask))  # (Q, N)
    metrics, _ = evaluate_scores(scores.numpy(), caption_video.numpy())
    q = len(tokens)
    for k in (1, 5, 10):  # binomial: mean K/N, 5 standard errors (deterministic inputs: not flaky)
        p = k / n_videos
        assert abs(metrics["t2v"][f"R{k}"] / 100 - p) < 5 * math.sqrt(p * (1 - p) / q), (k, metrics["t2v"])
    mean_rank, sd = (n_videos + 1) / 2, math.sqrt((n_videos**2 - 1) / 12 / q)
    assert abs(metrics["t2v"]["MnR"] - mean_rank) < 5 * sd, metrics["t2v"]


def test_random_floor_is_deterministic_per_input_and_untrainable() -> None:
    a = create_method("random", create_clip("psbench-tiny"))
    b = create_method("random", create_clip("psbench-tiny"))
    frames, mask = torch.rand(3, 4, 3, 8, 8), torch.ones(3, 4, dtype=torch.bool)
    assert torch.equal(a.encode_video(frames, mask)["video"], b.encode_video(frames, mask)["video"])
    padded = torch.cat([frames, torch.zeros(3, 2, 3, 8, 8)], 1)
    pad_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], 1)
    assert torch.equal(a.encode_video(padded, pad_mask)["video"], a.encode_video(frames, mask)["video"])
    assert not a.trainable and METHOD_TABLE["random"].role == "floor"
