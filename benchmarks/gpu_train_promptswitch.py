"""Training throughput of Prompt Switch on ViT-B/32: clips per second and peak memory, as JSON.

No data files: a few random batches (B videos x F frames x 3 x 224 x 224, random captions) are made on
the device once and cycled, so the number measures the model step (forward, InfoNCE + caption loss,
backward, clipping, AdamW), not decoding. The backbone is randomly initialised (speed does not depend
on the weights). Steps after ``--warmup`` are timed with device synchronisation; the run stops early
once ``--max-seconds`` of measured time has passed, so it always ends within its budget.

    python benchmarks/gpu_train_promptswitch.py --out results/ps_train_h200.json
    python benchmarks/gpu_train_promptswitch.py --steps 2 --batch 2 --device cpu --out /tmp/ps.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

import psbench.promptswitch  # noqa: F401 - registers the method
from psbench.backbone.clip import Tokenizer, create_clip, tokenizer_for
from psbench.catalog import create_method
from psbench.files import atomic
from psbench.method import Batch
from psbench.protocol import TrainConfig
from psbench.train.loop import build_optimizer

log = logging.getLogger("gpu_train_promptswitch")

WORDS = ["a", "man", "woman", "dog", "car", "is", "running", "cooking", "playing", "guitar", "on", "the", "street"]


def random_batches(
    n: int, batch: int, frames: int, size: int, tokenizer: Tokenizer, device: torch.device, seed: int
) -> list[Batch]:
    """``n`` batches of random pixels and random captions, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        captions = [
            " ".join(
                WORDS[int(i)]
                for i in torch.randint(len(WORDS), (int(torch.randint(4, 12, (1,), generator=gen)),), generator=gen)
            )
            for _ in range(batch)
        ]
        pixels = torch.randn(batch, frames, 3, size, size, generator=gen)  # (B, F, 3, S, S)
        mask = torch.ones(batch, frames, dtype=torch.bool)  # (B, F)
        out.append(Batch(pixels, mask, tokenizer(captions), [f"v{i}" for i in range(batch)]).to(device))
    return out


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    method = create_method("promptswitch", create_clip(args.arch), {"num_prompts": args.frames}).to(device).train()
    optimizer = build_optimizer(method, TrainConfig())
    tokenizer = tokenizer_for(method.clip, max_words=32)
    batches = random_batches(min(4, args.steps), args.batch, args.frames, args.resolution, tokenizer, device, args.seed)
    warmup = min(args.warmup, args.steps - 1)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step_times: list[float] = []
    losses: list[float] = []
    measured = 0.0
    for step in range(args.steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        batch = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and args.amp):
            out = method.training_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
        optimizer.step()
        method.clamp_logit_scale()
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if step >= warmup:
            step_times.append(elapsed)
            measured += elapsed
        if step % 50 == 0 or step == args.steps - 1:
            losses.append(float(out["loss"].detach()))
            log.info("step %d: loss %.4f, %.1f ms", step, losses[-1], 1000 * elapsed)
        if measured > args.max_seconds:
            log.warning("stopping after %d steps: measured time exceeds --max-seconds %.0f", step + 1, args.max_seconds)
            break
    steps_per_s = len(step_times) / sum(step_times)
    return {
        "benchmark": "gpu_train_promptswitch",
        "arch": args.arch,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "amp": "bf16" if cuda and args.amp else "none (fp32)",
        "batch": args.batch,
        "frames": args.frames,
        "resolution": args.resolution,
        "steps_run": warmup + len(step_times),
        "warmup_steps": warmup,
        "measured_steps": len(step_times),
        "steps_per_second": steps_per_s,
        "clips_per_second": steps_per_s * args.batch,
        "frames_per_second": steps_per_s * args.batch * args.frames,
        "median_step_ms": 1000 * sorted(step_times)[len(step_times) // 2],
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "losses_logged": losses,
        "num_parameters": sum(p.numel() for p in method.parameters()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="ViT-B-32-quickgelu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps (capped at steps - 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=6, help="frames per video = num_prompts (one chunk)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA instead of bf16 autocast")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="stop once this much time is measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (one warm-up step, one timed step)")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip's "no pretrained weights" warning
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    result = benchmark(args)
    atomic.write_json(args.out, result)
    log.info("%s", json.dumps({k: result[k] for k in ("clips_per_second", "peak_memory_gib", "median_step_ms")}))


if __name__ == "__main__":
    main()
