"""Two gloo processes under torchrun: gathered-loss gradients, sharded evaluation and a whole run match one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psbench.backbone.clip import Tokenizer, create_clip
from psbench.catalog import bench_methods, create_method, method_class, method_options
from psbench.data.datasets import load_split
from psbench.data.loader import GalleryDataset, make_gallery_loader
from psbench.distributed import per_process_batch, shard_bounds
from psbench.method import Batch
from psbench.protocol import load_protocol, resolve
from psbench.retrieval import engine
from psbench.retrieval.evaluate import frame_spec
from psbench.runs.runner import run

pytestmark = pytest.mark.slow  # spawns torchrun / gloo processes

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a red circle appears", "a blue square moves left", "a green triangle", "a yellow circle moves up"]


def _grad_cases() -> list[tuple[str, dict]]:
    """Every trainable method and ablation of the catalogue, dropout off where it has one (so that both sides
    draw the same function)."""
    return [
        (name, {"dropout": 0.0} if "dropout" in method_options(name) else {})
        for name in bench_methods()
        if method_class(name).trainable
    ]


GRAD_CASES = _grad_cases()


def _cases() -> list[dict]:
    torch.manual_seed(0)
    frames = torch.randn(4, 6, 3, 32, 32)  # (B, F, 3, H, W), the global batch
    mask = torch.ones(4, 6, dtype=torch.bool)
    tokens = Tokenizer(max_words=16, context_length=32)(CAPTIONS)  # (B, L)
    cases = []
    for name, options in GRAD_CASES:
        torch.manual_seed(1)
        method = create_method(name, create_clip("psbench-tiny"), options)
        cases.append(
            {
                "method": name,
                "options": options,
                "state": method.state_dict(),
                "frames": frames,
                "mask": mask,
                "tokens": tokens,
            }
        )
    return cases


def _single_process(case: dict) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    method = create_method(case["method"], create_clip("psbench-tiny"), case["options"])
    method.load_state_dict(case["state"])
    method.train()
    out = method.training_loss(Batch(case["frames"], case["mask"], case["tokens"]))
    out["loss"].backward()
    grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in out.items()}, grads


@pytest.fixture(scope="module")
def worker_result(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    torch.save(_cases(), out / "cases.pt")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "distributed_worker.py"),
        str(out / "cases.pt"),
        str(out),
        str(tiny_synthetic),
        str(out / "runs"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out / "result.pt", weights_only=True)


@pytest.mark.parametrize("index", range(len(GRAD_CASES)), ids=[name for name, _ in GRAD_CASES])
def test_gathered_loss_gradients_equal_single_process(worker_result: dict, index: int) -> None:
    case = _cases()[index]
    values, grads = _single_process(case)
    got = worker_result["grad_cases"][index]
    for key, value in values.items():
        assert got["values"][key] == pytest.approx(value, abs=1e-5), key
    assert set(got["grads"]) == set(grads)
    worst = max(float((got["grads"][n] - g).abs().max()) for n, g in grads.items())
    print(f"{case['method']}: loss {values['loss']:.6f}, max |grad difference| {worst:.2e} over {len(grads)} tensors")
    for name, grad in grads.items():
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_sharded_gallery_encoding_and_topk_match_single_process(worker_result: dict, tiny_synthetic: Path) -> None:
    cfg = resolve(load_protocol("synthetic"), "promptswitch", 0, {})
    torch.manual_seed(0)
    method = create_method("promptswitch", create_clip("psbench-tiny"), {}).eval()
    split = load_split(cfg.data, tiny_synthetic, "test")
    split = split.subset(split.video_ids[:7])
    spec = frame_spec(cfg.test.frames, cfg.test.sampler, cfg.test.segments, method)
    loader = make_gallery_loader(GalleryDataset(split, spec, cfg.test.transform, cfg.test.resolution), 3, 0)
    video = engine.encode_gallery(method, loader, "cpu")
    result = worker_result["eval"]
    torch.testing.assert_close(result["video"]["video"], video["video"], atol=1e-6, rtol=1e-5)
    text = result["text"]
    scores_single = engine.score_matrix(method, text, video)
    scores_dist = engine.score_matrix(method, text, result["video"])
    assert torch.equal(scores_single.argsort(dim=1, stable=True), scores_dist.argsort(dim=1, stable=True))
    top_scores, top_index = engine.topk(method, text, video, k=3)
    assert torch.equal(result["merged_topk"][1], top_index)
    torch.testing.assert_close(result["merged_topk"][0], top_scores, atol=1e-6, rtol=1e-5)


def test_two_process_run_matches_single_process_run(worker_result: dict, tiny_synthetic: Path, tmp_path: Path) -> None:
    dist_dir = Path(worker_result["run_dir"])
    assert len(list(dist_dir.parent.iterdir())) == 1  # rank 0 alone created the run directory
    dist_metrics = json.loads((dist_dir / "metrics.json").read_text())
    record = json.loads((dist_dir / "config.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "effective_batch": 4, "per_process_batch": 2}
    sets = {
        "train.epochs": 1,
        "train.batch_size": 4,
        "train.num_workers": 0,
        "test.batch_size": 8,
        "test.num_workers": 0,
    }
    cfg = resolve(load_protocol("synthetic"), "promptswitch", 0, sets)
    single = json.loads((run(cfg, tmp_path, data_root=tiny_synthetic) / "metrics.json").read_text())
    assert dist_metrics["train"]["world_size"] == 2 and dist_metrics["train"]["steps"] == single["train"]["steps"]
    for a, b in zip(dist_metrics["train"]["history"], single["train"]["history"], strict=True):
        assert a["mean_loss"] == pytest.approx(b["mean_loss"], abs=1e-5)
    for key in ("t2v", "v2t"):
        assert dist_metrics[key] == pytest.approx(single[key]), key
    log_lines = (dist_dir / "train_log.jsonl").read_text().splitlines()
    assert (
        len([line for line in log_lines if '"step"' in line and "epoch_summary" not in line])
        == single["train"]["steps"]
    )  # one log line per step: rank 0 only


def test_per_process_batch_and_shards() -> None:
    assert per_process_batch(32, 8) == 4
    with pytest.raises(ValueError, match="batch_size=30 .* not divisible by the 8 processes"):
        per_process_batch(30, 8)
    bounds = [shard_bounds(7, 3, r) for r in range(3)]
    assert bounds == [(0, 3), (3, 5), (5, 7)]
