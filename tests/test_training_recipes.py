"""Training as the official code trains (issue 11 §2): each recipe choice against the official formula,
written out independently here on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from psbench.backbone import create_clip, tokenizer_for
from psbench.data.loader import collate_train
from psbench.method import create_method
from psbench.protocol import TrainConfig, load_protocol, resolve
from psbench.runner import run
from tests.conftest import TINY_SETS

REAL_PROTOCOLS = ["msrvtt-1ka", "msrvtt-1ka-official-selection", "msrvtt-1ka-dsl", "msvd", "msvd-strict-v2t", "lsmdc"]
REAL_PROTOCOLS += ["lsmdc-999"]


def _train(protocol: str, method: str) -> TrainConfig:
    return resolve(load_protocol(protocol), method).train


# -- 1. unique videos per batch (Prompt Switch datasets/data_factory.py collate_fn) -------------------


def _items(video_ids: list[str], tokens: torch.Tensor) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    frames = {v: torch.randn(6, 3, 32, 32, generator=g) for v in dict.fromkeys(video_ids)}
    return [
        {"frames": frames[v], "mask": torch.ones(6, dtype=torch.bool), "tokens": tokens[i], "video_id": v, "index": i}
        for i, v in enumerate(video_ids)
    ]


def test_repeated_video_is_dropped_and_loss_is_over_unique_videos():
    torch.manual_seed(0)
    method = create_method("meanpool", create_clip("psbench-tiny")).eval()
    tokens = tokenizer_for(method.clip, 16)(["a dog", "a cat", "the dog again", "a car"])
    items = _items(["v0", "v1", "v0", "v2"], tokens)
    batch = collate_train(items, unique_videos=True)
    assert batch.video_ids == ["v0", "v1", "v2"]  # the official collate keeps the first occurrence
    with torch.no_grad():
        loss = method.training_loss(batch)["loss"]
        # reference: the InfoNCE over the 3 unique (video, first caption) pairs, written out
        keep = [0, 1, 3]
        frames = torch.stack([items[i]["frames"] for i in keep])
        t = F.normalize(method.clip.encode_text(tokens[keep]), dim=-1)
        v = method.encode_video(frames, torch.ones(3, 6, dtype=torch.bool))["video"]
        logits = method.logit_scale.exp() * t @ v.t()
        target = torch.arange(3)
        ref = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        with_duplicate = method.training_loss(collate_train(items, unique_videos=False))["loss"]
    assert torch.allclose(loss, ref, atol=1e-6)
    assert not torch.allclose(with_duplicate, ref, atol=1e-4)  # a duplicate would be its own negative


@pytest.mark.parametrize("protocol", REAL_PROTOCOLS)
def test_unique_videos_only_where_the_official_code_does_it(protocol: str):
    assert _train(protocol, "promptswitch").unique_videos
    assert _train(protocol, "promptswitch-nocap").unique_videos  # variants inherit the family recipe
    for method in ("meanpool", "tokenshift", "videoproxy", "xpool"):  # X-Pool's DataLoader has no collate_fn
        assert not _train(protocol, method).unique_videos


def test_run_records_the_recipe_in_method_facts(tiny_synthetic: Path, tmp_path: Path):
    sets = {**TINY_SETS, "train.unique_videos": True, "train.drop_last": False, "train.schedule": "hf_cosine"}
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, sets)
    run_dir = run(cfg, tmp_path / "runs", data_root=tiny_synthetic)
    facts = json.loads((run_dir / "config.json").read_text())["method_facts"]["training_recipe"]
    assert facts["unique_videos"] is True and facts["drop_last"] is False and facts["schedule"] == "hf_cosine"
    assert facts["optimizer"] == "adamw" and facts["infonce_reduction"] == "mean"
    assert facts["per_tensor_clip"] == 0.0 and facts["bias_correction"] is True
