"""Worker for tests/test_distributed.py, launched with ``python -m torch.distributed.run --nproc_per_node 2``.

Usage: distributed_worker.py CASES.pt OUT_DIR DATA_ROOT RUNS_DIR. Rank 0 writes OUT_DIR/result.pt with, per
gradient case, the loss and the (DDP-averaged) gradients of one step on this rank's share of the batch;
the sharded gallery encoding, scores and top-k; and the run directory of a 2-process ``runner.run``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from psbench import distributed
from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.data.datasets import load_split
from psbench.data.loader import GalleryDataset
from psbench.method import Batch
from psbench.protocol import load_protocol, resolve
from psbench.retrieval import engine
from psbench.retrieval.evaluate import encode_gallery_sharded, frame_spec
from psbench.runs.runner import run
from psbench.train.loop import _loss_module


def gradient_case(case: dict, here: distributed.DistInfo) -> dict:
    method = create_method(case["method"], create_clip("psbench-tiny"), case["options"])
    method.load_state_dict(case["state"])
    method.train()
    b = case["frames"].shape[0] // here.world_size
    rows = slice(here.rank * b, (here.rank + 1) * b)
    batch = Batch(case["frames"][rows], case["mask"][rows], case["tokens"][rows])
    module = _loss_module(method, torch.device("cpu"))
    out = module(batch)
    out["loss"].backward()
    values = distributed.all_reduce_mean({k: float(v.detach()) for k, v in out.items()}, torch.device("cpu"))
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return {"values": values, "grads": grads}


def eval_case(data_root: Path) -> dict:
    cfg = resolve(load_protocol("synthetic"), "promptswitch", 0, {})
    torch.manual_seed(0)
    method = create_method("promptswitch", create_clip("psbench-tiny"), {}).eval()
    split = load_split(cfg.data, data_root, "test")
    split = split.subset(split.video_ids[:7])  # 7 videos: unequal shards (4 + 3)
    spec = frame_spec(cfg.test.frames, cfg.test.sampler, cfg.test.segments, method)
    dataset = GalleryDataset(split, spec, cfg.test.transform, cfg.test.resolution)
    video = encode_gallery_sharded(method, dataset, 3, 0, "cpu")
    text = {"text": torch.nn.functional.normalize(torch.randn(5, video["video"].shape[1]), dim=-1)}
    text = distributed.broadcast_object(text)  # rank 0's queries everywhere
    start, stop = distributed.shard_bounds(7, distributed.world_size(), distributed.rank())
    local_scores, local_index = engine.topk(method, text, engine.slice_encoded(video, start, stop), k=3)
    parts = [None] * distributed.world_size()
    torch.distributed.all_gather_object(parts, (local_scores, local_index + start))
    merged = engine.merge_topk(parts, k=3)
    return {"video": video, "text": text, "merged_topk": merged}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cases_path, out_dir, data_root, runs_dir = (Path(a) for a in sys.argv[1:5])
    here = distributed.init_from_env("cpu")
    assert here.world_size == 2 and here.backend == "gloo", here
    cases = torch.load(cases_path, weights_only=True)
    result = {"grad_cases": [gradient_case(case, here) for case in cases], "eval": eval_case(data_root)}
    sets = {"train.epochs": 1, "train.batch_size": 4, "train.num_workers": 0, "test.batch_size": 8}
    cfg = resolve(load_protocol("synthetic"), "promptswitch", 0, {**sets, "test.num_workers": 0})
    result["run_dir"] = str(run(cfg, runs_dir, data_root=data_root))
    if here.is_main:
        torch.save(result, out_dir / "result.pt")
    distributed.destroy()


if __name__ == "__main__":
    main()
