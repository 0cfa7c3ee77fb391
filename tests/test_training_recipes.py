"""Training as the official code trains (issue 11 §2): each recipe choice against the official formula,
written out independently here on small inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from psbench.backbone.clip import create_clip, tokenizer_for
from psbench.catalog import create_method
from psbench.data.loader import ShuffledBatchSampler, collate_train
from psbench.method import Batch, symmetric_infonce
from psbench.protocol import ProtocolError, TrainConfig, load_protocol, resolve
from psbench.runs.runner import run
from psbench.train.loop import build_optimizer
from psbench.train.optim import BertAdam, bert_warmup_cosine, hf_cosine, psbench_cosine
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


@pytest.mark.slow  # a whole run through the runner
def test_run_records_the_recipe_in_method_facts(tiny_synthetic: Path, tmp_path: Path):
    sets = {**TINY_SETS, "train.unique_videos": True, "train.drop_last": False, "train.schedule": "hf_cosine"}
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, sets)
    run_dir = run(cfg, tmp_path / "runs", data_root=tiny_synthetic)
    facts = json.loads((run_dir / "config.json").read_text())["method_facts"]["training_recipe"]
    assert facts["unique_videos"] is True and facts["drop_last"] is False and facts["schedule"] == "hf_cosine"
    assert facts["optimizer"] == "adamw" and facts["infonce_reduction"] == "mean"
    assert facts["per_tensor_clip"] == 0.0 and facts["bias_correction"] is True
    assert any("torch AdamW" in d for d in facts["deviations"])  # deviations that stay are listed
    assert any("each process" in d for d in facts["deviations"])


# -- 2. last partial batch and HF cosine warm-up (X-Pool / Prompt Switch train.py) -------------------


def _official_hf_factor(step: int, warm: int, total: int) -> float:
    """transformers get_cosine_schedule_with_warmup lr_lambda, num_cycles = 0.5."""
    if step < warm:
        return step / max(1, warm)
    progress = (step - warm) / max(1, total - warm)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


@pytest.mark.parametrize("total", [35, 100, 7])
def test_hf_cosine_matches_the_official_lambda(total: int):
    warm = int(0.1 * total)  # train.py: int(warmup_proportion * num_training_steps), truncated
    factor = hf_cosine(total, 0.1)
    for step in range(total + 1):
        assert factor(step) == pytest.approx(_official_hf_factor(step, warm, total), abs=1e-12)
    if warm:
        assert factor(0) == 0.0  # the first optimiser step runs at lr 0
    assert factor(warm) == pytest.approx(1.0) and factor(total) == pytest.approx(0.0, abs=1e-12)


def test_hf_cosine_truncates_where_psbench_rounded():
    # 35 steps: int(3.5) = 3 warm-up steps (psbench_cosine rounds to 4 and starts at 1/4)
    assert hf_cosine(35, 0.1)(3) == pytest.approx(1.0)
    assert psbench_cosine(35, 0.1)(3) == pytest.approx(1.0) and psbench_cosine(35, 0.1)(0) == 0.25
    assert hf_cosine(35, 0.1)(1) == pytest.approx(1 / 3)


def test_last_partial_batch_is_kept_for_xpool_and_promptswitch():
    kept = ShuffledBatchSampler(10, 4, seed=0, drop_last=False)
    assert [len(b) for b in kept] == [4, 4, 2] and len(kept) == 3  # torch DataLoader default drop_last=False
    assert len(ShuffledBatchSampler(10, 4, seed=0, drop_last=True)) == 2
    for protocol in REAL_PROTOCOLS:
        for method in ("xpool", "promptswitch"):
            train = _train(protocol, method)
            assert not train.drop_last and train.schedule == "hf_cosine" and train.optimizer == "adamw"
        for method in ("meanpool", "tokenshift"):  # CLIP4Clip / TS2-Net: drop_last=True in their loaders
            assert _train(protocol, method).drop_last


@pytest.mark.slow  # a whole run through the runner
def test_steps_count_the_partial_batch_in_the_schedule_total(tiny_synthetic: Path, tmp_path: Path):
    from psbench.data.datasets import load_split

    sets = {**TINY_SETS, "train.twin_pairs": False, "train.batch_size": 5, "train.drop_last": False}
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, sets)
    n_items = len(load_split(cfg.data, tiny_synthetic, "train").captions)
    assert n_items % 5  # there is a partial batch to keep
    metrics = json.loads((run(cfg, tmp_path / "runs", data_root=tiny_synthetic) / "metrics.json").read_text())
    assert metrics["train"]["steps"] == math.ceil(n_items / 5)


# -- 3. CLIP-ViP: summed InfoNCE, AdamW eps 1e-6 (src/optimization/loss.py, adamw.py) ----------------


def test_videoproxy_sums_the_two_directions():
    logits = torch.tensor([[3.0, 1.0, -2.0], [0.5, 2.0, 0.1], [1.0, -1.0, 4.0]])
    target = torch.arange(3)
    official = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)  # NCELearnableTempLoss
    assert torch.allclose(symmetric_infonce(logits, "sum"), official)
    assert torch.allclose(symmetric_infonce(logits, "mean"), official / 2)
    for protocol in REAL_PROTOCOLS:
        train = _train(protocol, "videoproxy")
        assert train.infonce_reduction == "sum" and train.eps == 1e-6
        for method in ("meanpool", "tokenshift", "xpool", "promptswitch"):
            assert _train(protocol, method).infonce_reduction == "mean"


def test_the_runner_builds_videoproxy_with_the_summed_loss():
    from psbench.runs.runner import build_method

    cfg = resolve(load_protocol("msrvtt-1ka"), "videoproxy", 0, {"backbone.arch": "psbench-tiny"})
    torch.manual_seed(0)
    method = build_method(cfg, None)
    assert method.infonce_reduction == "sum"
    g = torch.Generator().manual_seed(1)
    tokens = tokenizer_for(method.clip, 16)(["a dog", "a cat", "a car"])
    batch = Batch(torch.randn(3, 12, 3, 32, 32, generator=g), torch.ones(3, 12, dtype=torch.bool), tokens)
    method.eval()
    with torch.no_grad():
        summed = method.training_loss(batch)["loss"]
        method.infonce_reduction = "mean"
        assert torch.allclose(summed, 2 * method.training_loss(batch)["loss"])


# -- 4. CLIP4Clip / TS2-Net BertAdam (modules/optimization.py) -----------------------------------------


def _official_bert_warmup_cosine(x: float, warmup: float) -> float:
    return x / warmup if x < warmup else 0.5 * (1.0 + math.cos(math.pi * x))


def test_bert_warmup_cosine_on_overall_progress_jumps_at_the_end_of_warmup():
    total, factor = 50, bert_warmup_cosine(50, 0.1)
    for step in range(total + 1):
        assert factor(step) == pytest.approx(_official_bert_warmup_cosine(step / total, 0.1))
    assert factor(0) == 0.0 and factor(4) == pytest.approx(0.8)
    assert factor(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))  # 0.976, not 1.0
    assert factor(total) == pytest.approx(0.0)


def _reference_bert_adam(p, grads, lr, b1, b2, eps, wd, max_norm, factors):
    """BertAdam.step written out: per-tensor clip, no bias correction, decay inside the update."""
    p, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    for g, f in zip(grads, factors, strict=True):
        norm = float(g.norm())
        if max_norm > 0 and norm > max_norm:
            g = g * (max_norm / (norm + 1e-6))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * f * (m / (v.sqrt() + eps) + wd * p)
    return p


def test_bert_adam_step_matches_a_hand_written_update():
    torch.manual_seed(0)
    start = torch.randn(3, 2)
    grads = [torch.randn(3, 2) * s for s in (5.0, 0.1, 3.0)]  # norms above and below the 1.0 clip
    factors = [bert_warmup_cosine(3, 0.5)(s) for s in range(3)]
    param = torch.nn.Parameter(start.clone())
    opt = BertAdam([param], lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, max_grad_norm=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, bert_warmup_cosine(3, 0.5))
    for g in grads:
        param.grad = g.clone()
        opt.step()
        sched.step()
    ref = _reference_bert_adam(start, grads, 0.1, 0.9, 0.98, 1e-6, 0.2, 1.0, factors)
    assert torch.allclose(param.detach(), ref, atol=1e-6)
    # torch AdamW (bias correction, no per-tensor clip) lands elsewhere: the test can tell them apart
    other = torch.nn.Parameter(start.clone())
    adamw = torch.optim.AdamW([other], lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    for g, f in zip(grads, factors, strict=True):
        other.grad = g.clone()
        for group in adamw.param_groups:
            group["lr"] = 0.1 * f
        adamw.step()
    assert not torch.allclose(other.detach(), ref, atol=1e-3)


def test_meanpool_and_tokenshift_train_with_bert_adam():
    for protocol in REAL_PROTOCOLS:
        for name in ("meanpool", "tokenshift"):
            train = _train(protocol, name)
            assert (train.optimizer, train.schedule, train.per_tensor_clip) == ("bert_adam", "bert_warmup_cosine", 1.0)
            assert train.grad_clip == 1.0  # the global clip_grad_norm_ of main_task_retrieval.py stays
    torch.manual_seed(0)
    method = create_method("meanpool", create_clip("psbench-tiny"))
    opt = build_optimizer(method, _train("msrvtt-1ka", "meanpool"))
    assert isinstance(opt, BertAdam) and all(g["max_grad_norm"] == 1.0 for g in opt.param_groups)
    assert all(g["eps"] == 1e-6 and g["betas"] == (0.9, 0.98) for g in opt.param_groups)


def test_recipe_fields_are_validated_at_load_time():
    protocol = load_protocol("synthetic")
    with pytest.raises(ProtocolError, match="schedule"):
        resolve(protocol, "meanpool", 0, {"train.schedule": "linear"})
    with pytest.raises(ProtocolError, match="optimizer"):
        resolve(protocol, "meanpool", 0, {"train.optimizer": "sgd"})
    with pytest.raises(ProtocolError, match="infonce_reduction"):
        resolve(protocol, "meanpool", 0, {"train.infonce_reduction": "max"})
    with pytest.raises(ProtocolError, match="per_tensor_clip"):
        resolve(protocol, "meanpool", 0, {"train.per_tensor_clip": 1.0})  # AdamW cannot clip per tensor
    resolve(protocol, "meanpool", 0, {"train.per_tensor_clip": 1.0, "train.optimizer": "bert_adam"})


def test_default_recipe_leaves_old_protocol_hashes_unchanged():
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0)
    changed = resolve(load_protocol("synthetic"), "meanpool", 0, {"train.drop_last": False})
    assert cfg.protocol_hash() != changed.protocol_hash()
    assert cfg.version == 1  # synthetic keeps psbench's own recipe for every method


# -- 5. Prompt Switch short videos (datasets/video_capture.py load_frames_from_video, uniform) ---------


def _official_ps_uniform(vlen: int, num_frames: int, num_prompts: int) -> list[int]:
    acc = min(num_prompts, vlen)
    bounds = [int(b) for b in torch.linspace(0, vlen, acc + 1, dtype=torch.float64).tolist()]
    ranges = [(bounds[k], bounds[k + 1] - 1) for k in range(acc)]
    chunks = num_frames // num_prompts
    idx = [(b - a) // (chunks + 1) * (i + 1) + a for i in range(chunks) for a, b in ranges]
    return idx + [idx[-1]] * (num_frames - len(idx))


@pytest.mark.parametrize("vlen", [1, 2, 3, 5, 6, 7, 11, 12, 13, 40, 301])
def test_promptswitch_test_frames_match_the_official_sampler_on_short_videos(vlen: int):
    from psbench.data.sampling import SAMPLERS

    for frames in (6, 12):
        assert SAMPLERS.get("chunked_interleave")(vlen, frames, None, 6) == _official_ps_uniform(vlen, frames, 6)
