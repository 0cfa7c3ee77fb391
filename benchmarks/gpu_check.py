"""Issue 17's GPU check in one call: the online stage against same-run cuBLAS, X-Pool on tensor cores.

    OUT=/some/dir python benchmarks/gpu_check.py              # on the GPU machine, at most ~8 minutes
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu_check   # smoke run, seconds

(or ``bash benchmarks/gpu_check.sh``, which also runs ``pytest -m gpu`` on the engine's device path).

Sections, each written to ``$OUT/gpu_check.json`` as soon as it ends (a timeout keeps what is done):

a. ``topk``: inner-product similarity + exact top-k (``engine.topk``'s device path, the online stage
   of mean-pool CLIP4Clip and Prompt Switch) at Q queries x N videos x D, fp16 and bf16, beside the
   bare GEMM of the same shapes (``torch.mm``, cuBLAS on CUDA) in the same run: both median times,
   their ratio, TFLOP/s, and an exactness check against the float32 oracle (the same blocks'
   scores cast to float32, full-row sort keys). Targets (CUDA, Q = 1,000, D = 512, k = 10): within
   3x of the GEMM, < 1 ms at N = 100,000 and < 10 ms at N = 1,000,000.
b. ``xpool``: X-Pool's similarity in bf16 on random encodings, reference form (the default
   options) and folded form (the registered ``xpool-folded`` method if there is one, else
   ``fold_norms=True`` if XPool accepts it; otherwise listed as not measured, with the reason),
   TFLOP/s on each form's own FLOPs (``XPool.online_flops_per_pair``) against the same-run bf16 GEMM
   throughput (square products before and after; the best is the peak). Target: reference >= 40%.
c. ``train_real_video``: NOT IMPLEMENTED. Training fed by real video needs issue 15's video-input
   pipeline (generator of realistic H.264 videos, loader over them); the section is recorded as not
   measured and nothing is timed.

Also written: ``$OUT/gpu_check.log`` (this run's log) and ``$OUT/nvidia_smi.txt``. The JSON records
the GPU, its driver, torch, CUDA, cuDNN and Triton versions. Every section stops starting new
measurements once ``--budget-s`` (default 420 s) has passed; skipped points are recorded as such.

What must travel to the GPU machine (device tool README): the working tree (this script, psbench,
baselines, tests) travels by itself; its image has torch, numpy, rich and pytest but no open_clip,
which ``baselines.xpool`` imports (through ``psbench.backbone.clip``). For section b carry pure-Python
wheels in an ignored folder ``.whl`` (``pip download --no-deps -d .whl open_clip_torch==3.3.0
ftfy==6.3.1 wcwidth==0.9.4``; the rest of open_clip's needs are in the image) and name ``.whl`` in
``carry``; ``gpu_check.sh`` installs them to /tmp/site. Without them section b reads "not measured:
open_clip is not importable". Section a needs nothing beyond torch. PyAV is not needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from psbench.method import Encoded, RetrievalMethod  # noqa: E402
from psbench.ops.sortkeys import sort_keys, topk_keys, unpack_keys  # noqa: E402
from psbench.retrieval import engine  # noqa: E402

log = logging.getLogger("gpu_check")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TRAIN_NOTE = (
    "not implemented: training fed by real video needs issue 15's video-input pipeline (a generator of "
    "realistic H.264 videos and psbench's loader over them, with 16 workers); nothing is measured here"
)


# -- timing ------------------------------------------------------------------------------------------
class Clock:
    """Wall budget of the whole run."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.elapsed() >= self.budget_s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median and all seconds of ``repeats`` calls after ``warmup`` (CUDA events on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            runs.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
    runs.sort()
    return {"median_s": runs[len(runs) // 2], "min_s": runs[0], "runs_s": runs}


def gemm_tflops(size: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Throughput of one square ``size``^3 product in ``dtype`` on random data."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timing = time_median(lambda: torch.mm(a, b), device, warmup, repeats)
    return {"size": size, "dtype": str(dtype), **timing, "tflops": 2 * size**3 / timing["median_s"] / 1e12}


# -- environment ---------------------------------------------------------------------------------------
def run_text(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def environment(device: torch.device, out: Path) -> dict[str, Any]:
    """Versions and device; ``nvidia-smi``'s full output goes to ``$OUT/nvidia_smi.txt``."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": None,
        "device": str(device),
        "git": (run_text(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or "unknown (no git history)").strip(),
    }
    if importlib.util.find_spec("triton") is not None:
        import triton

        env["triton"] = triton.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
        query = run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = query.strip() if query else "unknown (nvidia-smi failed)"
        full = run_text(["nvidia-smi"])
        (out / "nvidia_smi.txt").write_text(full if full else "nvidia-smi failed or is missing\n")
    else:
        env.update(gpu=None, driver=None, note="CPU smoke run: timings say nothing about a GPU")
    return env


# -- a. inner-product similarity + top-k ---------------------------------------------------------------
class InnerProduct(RetrievalMethod):
    """Only ``RetrievalMethod``'s default similarity (text @ video.T), the online stage timed here."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        raise NotImplementedError("gpu_check times the online stage only")


def methods_with_default_similarity() -> list[str] | str:
    """Registered methods whose similarity this section times, or why they could not be listed."""
    try:
        from psbench.catalog import efficiency_methods, method_class

        return [n for n in efficiency_methods() if method_class(n).is_inner_product()]
    except ImportError as err:  # open_clip missing on the device image
        return f"not listed: {err}"


def unit_rows(rows: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, dim, device=device, generator=gen)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


def oracle_check(
    text: Encoded, video: Encoded, k: int, blocks: tuple[int, int], device: torch.device, got: tuple[Tensor, Tensor]
) -> dict[str, Any]:
    """Rows of ``got`` (values, indices) equal to the float32 oracle: the same blocks' scores (same
    GEMM shapes, so the same kernels) cast to float32, full-row sort keys, top-k."""
    full = engine.score_matrix(InnerProduct(), text, video, *blocks, device=device, out_device=device)  # (Q, N)
    q, n = full.shape
    index = torch.arange(n, device=device)
    equal_rows = 0
    for r0 in range(0, q, 128):
        rows = full[r0 : r0 + 128]  # (r, N) float32
        values, indices = unpack_keys(topk_keys(sort_keys(rows, index.expand_as(rows)), k).cpu())  # (r, k)
        same = (values == got[0][r0 : r0 + 128]) & (indices == got[1][r0 : r0 + 128])
        equal_rows += int(same.all(dim=1).sum())
    del full
    return {"rows_equal": equal_rows, "rows": q, "exact": equal_rows == q}


def topk_point(q: int, n: int, dim: int, k: int, dtype_name: str, device: torch.device, args) -> dict[str, Any]:
    dtype = DTYPES[dtype_name]
    a = unit_rows(q, dim, dtype, device, seed=1)  # (Q, D)
    b = unit_rows(n, dim, dtype, device, seed=2)  # (N, D)
    text, video = {"text": a}, {"video": b}
    method = InnerProduct()
    blocks = engine.topk_block_sizes(text, video, None, None, device, True)
    flops = 2 * q * n * dim
    gemm = time_median(lambda: torch.mm(a, b.t()), device, args.warmup, args.repeats)
    result: dict[str, Any] = {}

    def search_once() -> None:
        result["out"] = engine.topk(method, text, video, k, device=device)

    search = time_median(search_once, device, args.warmup, args.repeats)
    check = oracle_check(text, video, k, blocks, device, result["out"])
    ratio = search["median_s"] / gemm["median_s"]
    point = {
        "queries": q,
        "videos": n,
        "dim": dim,
        "k": k,
        "dtype": dtype_name,
        "blocks": {"block_queries": blocks[0], "block_videos": blocks[1]},
        "gemm_s": gemm["median_s"],
        "gemm_tflops": flops / gemm["median_s"] / 1e12,
        "similarity_topk_s": search["median_s"],
        "similarity_topk_tflops": flops / search["median_s"] / 1e12,
        "ratio_to_gemm": ratio,
        "timings": {"gemm": gemm, "similarity_topk": search},
        "exact_vs_float32_oracle": check,
    }
    targeted = device.type == "cuda" and q == 1000 and dim == 512 and k == 10 and n in (100_000, 1_000_000)
    if targeted:
        limit = 1e-3 if n == 100_000 else 10e-3
        point["targets"] = {
            "ratio_to_gemm_at_most_3": ratio <= 3.0,
            f"under_{limit * 1e3:g}_ms": search["median_s"] < limit,
        }
    else:
        point["targets"] = "n/a: not the target device and sizes (CUDA, Q=1000, D=512, k=10, N=100k/1M)"
    log.info(
        "topk %s Q=%d N=%d: similarity+top-%d %.3f ms, GEMM %.3f ms, ratio %.2f, exact %s",
        *(dtype_name, q, n, k, 1e3 * search["median_s"], 1e3 * gemm["median_s"], ratio, check["exact"]),
    )
    return point


def section_topk(args, device: torch.device, clock: Clock) -> dict[str, Any]:
    points, skipped = [], []
    for dtype_name in args.dtypes:
        for n in args.galleries:
            if clock.spent():
                skipped.append({"dtype": dtype_name, "videos": n, "reason": "time budget spent"})
                continue
            points.append(topk_point(args.queries, n, args.dim, args.k, dtype_name, device, args))
            if device.type == "cuda":  # the point's gallery is freed on return
                torch.cuda.empty_cache()
    return {
        "what": "engine.topk device path (method.similarity + exact top-k) vs torch.mm of the same shapes",
        "methods_with_this_similarity": methods_with_default_similarity(),
        "points": points,
        "skipped": skipped,
    }


# -- b. X-Pool similarity ------------------------------------------------------------------------------
class _ClipStub(nn.Module):
    """Just enough of a CLIP model for X-Pool: the embedding width and a logit scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.output_dim = dim
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))


def xpool_forms(dim: int, pairs_per_block: int) -> tuple[dict[str, Any], str | None, dict[str, str]]:
    """({form: XPool}, how the folded form was built, {form: why it is not measured}).

    Both forms are built from the same seed, so their weights (and the scores) should agree.
    """
    from baselines.xpool import XPool
    from psbench.catalog import METHOD_TABLE

    def build(factory: Callable[..., Any], **options: Any) -> Any:
        torch.manual_seed(0)
        return factory(_ClipStub(dim), pairs_per_block=pairs_per_block, **options)

    forms: dict[str, Any] = {"reference": build(XPool)}
    missing: dict[str, str] = {}
    built_as = None
    try:
        if "xpool-folded" in METHOD_TABLE:
            fixed = dict(METHOD_TABLE["xpool-folded"].fixed)
            forms["folded"], built_as = build(XPool, **fixed), "catalogued method xpool-folded"
        else:
            forms["folded"], built_as = build(XPool, fold_norms=True), "XPool(fold_norms=True), no xpool-folded"
    except TypeError as err:
        missing["folded"] = f"not measured: neither a registered xpool-folded nor XPool(fold_norms=True) built: {err}"
    return forms, built_as, missing


def xpool_inputs(method, q: int, n: int, frames: int, device: torch.device, chunk: int = 4096):
    """Random raw embeddings through the method's own text and video stages (offline, not timed)."""
    head = method.pool_head
    dtype = next(method.parameters()).dtype
    gen = torch.Generator(device=device).manual_seed(3)
    text = torch.randn(q, head.dim, device=device, generator=gen).to(dtype)
    encoded_text = {"text": text, "query": head.query(text)}
    parts: list[dict[str, Tensor]] = []
    for v0 in range(0, n, chunk):
        raw = torch.randn(min(chunk, n - v0), frames, head.dim, device=device, generator=gen).to(dtype)
        keys, values = head.keys_values(raw, method.fold_out_proj)
        part = {"keys": keys, "mask": torch.ones(raw.shape[:2], dtype=torch.bool, device=device)}
        if method.uses_norm_fold():
            part["proj"], part["stats"] = head.norm_fold_cache(values)
        else:
            part["values"] = values
        parts.append(part)
    return encoded_text, engine.concat_encoded(parts)


def xpool_point(method, form: str, args, device: torch.device, peak_tflops: float) -> dict[str, Any]:
    dtype = DTYPES["bf16"]
    method = method.to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # move away from the identity init so that no step is trivially cheap
        gen = torch.Generator(device=device).manual_seed(4)
        for p in method.pool_head.parameters():
            p.add_(0.02 * torch.randn(p.shape, device=device, generator=gen).to(dtype))
    q, n, f = args.xpool_queries, args.xpool_videos, args.frames
    with torch.inference_mode():
        text, video = xpool_inputs(method, q, n, f, device)
        out: dict[str, Tensor] = {}
        timing = time_median(lambda: out.update(s=method.similarity(text, video)), device, 1, args.repeats)
    scores = out["s"]
    per_pair = int(method.online_flops_per_pair(f))
    tflops = per_pair * q * n / timing["median_s"] / 1e12
    point = {
        "form": form,
        "queries": q,
        "videos": n,
        "frames": f,
        "dim": args.xpool_dim,
        "dtype": "bf16",
        "pairs_per_block": method.pairs_per_block,
        "fold_out_proj": method.fold_out_proj,
        "fold_norms": getattr(method, "fold_norms", None),
        "flops_per_pair": per_pair,
        "similarity_s": timing["median_s"],
        "timings": timing,
        "tflops": tflops,
        "ratio_to_bf16_gemm": tflops / peak_tflops,
        "scores_finite": bool(torch.isfinite(scores).all()),
    }
    if form == "reference" and device.type == "cuda" and not args.tiny:
        point["target_at_least_40pct_of_gemm"] = tflops / peak_tflops >= 0.40
    share = 100 * tflops / peak_tflops
    log.info(
        "xpool %s: %.3f s, %.1f TFLOP/s, %.1f%% of the bf16 GEMM before it", form, timing["median_s"], tflops, share
    )
    point["_scores"] = scores[: min(q, 64), : min(n, 2048)].float().cpu()
    return point


def section_xpool(args, device: torch.device, clock: Clock) -> dict[str, Any]:
    if importlib.util.find_spec("open_clip") is None:
        return {"status": "not measured: open_clip is not importable (carry its wheels; see the docstring)"}
    forms, built_as, missing = xpool_forms(args.xpool_dim, args.xpool_pairs_per_block)
    bf16 = DTYPES["bf16"]
    before = gemm_tflops(args.matmul_size, bf16, device, args.warmup, args.repeats)
    points = {}
    for form, method in forms.items():
        if clock.spent():
            missing[form] = "not measured: time budget spent"
            continue
        points[form] = xpool_point(method, form, args, device, before["tflops"])
    after = gemm_tflops(args.matmul_size, bf16, device, args.warmup, args.repeats)
    peak = max(before["tflops"], after["tflops"])
    for point in points.values():  # ratios against the better of the two same-run GEMM measurements
        point["ratio_to_bf16_gemm"] = point["tflops"] / peak
        if "target_at_least_40pct_of_gemm" in point:
            point["target_at_least_40pct_of_gemm"] = point["ratio_to_bf16_gemm"] >= 0.40
    samples = {form: point.pop("_scores") for form, point in points.items()}
    agreement = None
    if len(samples) == 2:
        agreement = float((samples["reference"] - samples["folded"]).abs().max())
    return {
        "what": "XPool.similarity on random bf16 encodings; FLOPs from XPool.online_flops_per_pair",
        "bf16_gemm": {"before": before, "after": after, "peak_tflops": peak},
        "forms": points,
        "folded_built_as": built_as,
        "not_measured": missing,
        "max_abs_score_difference_folded_vs_reference_bf16": agreement,
        "ratios_vs_promptswitch_by_gallery": "not measured by this script (psbench efficiency --device cuda)",
    }


# -- driver --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")), help="default: $OUT or ./out")
    parser.add_argument("--tiny", action="store_true", help="toy sizes for a smoke run (any device)")
    parser.add_argument("--sections", default="topk,xpool,train", help="comma-separated: topk, xpool, train")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no new measurement starts after this")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--galleries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--xpool-queries", type=int, default=1000)
    parser.add_argument("--xpool-videos", type=int, default=10_000)
    parser.add_argument("--xpool-dim", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--xpool-pairs-per-block", type=int, default=1 << 18)
    parser.add_argument("--matmul-size", type=int, default=8192)
    args = parser.parse_args(argv)
    if args.tiny:
        args.queries, args.galleries, args.dim, args.warmup, args.repeats = 16, [3000, 7000], 64, 1, 2
        args.xpool_queries, args.xpool_videos, args.xpool_dim, args.frames = 4, 64, 32, 4
        args.xpool_pairs_per_block, args.matmul_size = 256, 256
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "gpu_check.log", mode="w")],
        force=True,
    )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available (use --device cpu --tiny for a smoke run)")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - {"topk", "xpool", "train"})
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; valid: topk, xpool, train")
    clock = Clock(args.budget_s)
    report: dict[str, Any] = {
        "schema": 1,
        "issue": 17,
        "tiny": args.tiny,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(device, args.out),
    }
    path = args.out / "gpu_check.json"
    runners = {"topk": section_topk, "xpool": section_xpool}
    for name in sections:
        if name == "train":
            report["train_real_video"] = {"status": TRAIN_NOTE, "depends_on": "issue 15"}
            log.warning("train_real_video: %s", TRAIN_NOTE)
        else:
            report[name] = runners[name](args, device, clock)
        report["elapsed_s"] = clock.elapsed()
        path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s in %.1f s", path, clock.elapsed())
    return report


if __name__ == "__main__":
    main()
