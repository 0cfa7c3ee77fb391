"""X-Pool's online similarity stage: throughput against the machine's matmul peak, and peak memory.

Run: ``python benchmarks/xpool_similarity.py [--queries 1000 --videos 100000 --frames 12 --dim 512]``

In one run it measures
  (a) fp32 matmul throughput of a large square product on every CPU backend (torch/MKL, oneDNN,
      NumPy/OpenBLAS; ``psbench.efficiency.matmul_peak``), before and after (b); the best is the peak;
  (b) ``XPool.similarity`` at Q x N x F x D with RANDOM embeddings (no CLIP, no data): wall time,
      the FLOPs it performs (formula printed), achieved GFLOP/s and the ratio to (a);
  (c) the peak extra resident memory of (b): peak RSS minus RSS just before the call.
The video side (LN1, k/v projections, W_o folded into the values) is built chunk by chunk from
random frame embeddings, as ``encode_video`` would offline, and is not part of the timed stage.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from baselines.xpool import XPool, XPoolHead
from psbench.efficiency.matmul_peak import fp32_matmul_peak

log = logging.getLogger("xpool_similarity")
GIB = 1024**3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False if not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024


def matmul_gflops(size: int, repeats: int) -> tuple[float, str]:
    """The fp32 matmul peak (GFLOP/s) over torch/MKL, oneDNN and NumPy/OpenBLAS, and its backend."""
    peak = fp32_matmul_peak(size, warmup=1, repeats=repeats)
    for name, row in peak["by_backend"].items():
        log.info("matmul %d^3 fp32, %s: %.1f GFLOP/s", size, name, row["gflops"])
    return peak["gflops"], peak["backend"]


class RandomClipStub(torch.nn.Module):
    """Just enough of a CLIP model for ``XPool``: the embedding width and a logit scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.output_dim = dim
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))


def build_inputs(method: XPool, queries: int, videos: int, frames: int, chunk: int = 4096) -> tuple[dict, dict]:
    """Random raw text/frame embeddings through the method's own text and video stages."""
    head: XPoolHead = method.pool_head
    dim, heads = head.dim, head.num_heads
    text = torch.randn(queries, dim)
    encoded_text = {"text": text, "query": head.query(text)}
    value_width = dim if method.fold_out_proj else dim // heads
    k_rows = heads * frames + 1
    keys = torch.empty(videos, frames, dim)
    if method.fold_norms:  # eval-mode similarity reads proj/stats, not the values: do not keep them
        video = {"proj": torch.empty(videos, k_rows, dim), "stats": torch.empty(videos, k_rows, 3 * k_rows + 3)}
    else:
        video = {"values": torch.empty(videos, heads, frames, value_width)}
    for v0 in range(0, videos, chunk):
        n = min(chunk, videos - v0)
        k, v = head.keys_values(torch.randn(n, frames, dim), method.fold_out_proj)
        keys[v0 : v0 + n] = k
        if method.fold_norms:
            video["proj"][v0 : v0 + n], video["stats"][v0 : v0 + n] = head.norm_fold_cache(v)
        else:
            video["values"][v0 : v0 + n] = v
    mask = torch.ones(videos, frames, dtype=torch.bool)
    return encoded_text, {"mask": mask, "keys": keys, **video}


def flops_formula(method: XPool) -> str:
    """The per-pair FLOP formula that ``XPool.online_flops_per_pair`` evaluates, in words."""
    if method.fold_norms:
        return (
            "2FD (logits) + 2KD (text . folded rows, K = HF + 1) + 6K^2 (three Gram quadratic forms) "
            "+ 6K (linear terms) + 8K + 36 (sums over K, per-pair scalars; approximate)"
        )
    return (
        "2D^2 (W_l)"
        + ("" if method.fold_out_proj else " + 2D^2 (W_o)")
        + " + 2FD (logits) + "
        + ("2HFD (sum of W_o-folded values)" if method.fold_out_proj else "2FD (sum of values)")
        + " + 25D (LN2, residual, LN3, cosine; approximate)"
    )


def lock_memory() -> bool:
    """mlockall(MCL_CURRENT | MCL_FUTURE): keep the gallery resident, as a retrieval server would.

    Some virtual machines (this one: a DAMON ``pageout`` scheme for pages idle a few seconds) unmap
    memory that has not been touched recently; a gallery read once per pass then pays a page fault
    per page, which halved the measured X-Pool throughput at N = 100,000. Returns whether it worked.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    ok = libc.mlockall(3) == 0
    if not ok:
        log.warning("mlockall failed (errno %d); timings may include page faults", ctypes.get_errno())
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs-per-block", type=int, default=None, help="default: XPool's default")
    parser.add_argument("--no-fold", action="store_true", help="keep W_o per pair (reference cost)")
    parser.add_argument("--fold-norms", action="store_true", help="eval-mode Gram fold of LN2/W_l/LN3")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-mlock",
        dest="mlock",
        action="store_false",
        help="do not lock the process memory in RAM (default: mlockall, as a server keeps its index resident)",
    )
    args = parser.parse_args()
    locked = lock_memory() if args.mlock else False

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    console = Console()

    options = {"num_heads": args.heads, "fold_out_proj": not args.no_fold, "fold_norms": args.fold_norms}
    if args.pairs_per_block is not None:
        options["pairs_per_block"] = args.pairs_per_block
    method = XPool(RandomClipStub(args.dim), **options).eval()
    with torch.no_grad():  # move away from the identity init so no step is trivially cheap
        for p in method.pool_head.parameters():
            p.add_(0.02 * torch.randn_like(p))

    q, n, f, d = args.queries, args.videos, args.frames, args.dim
    per_pair, formula = method.online_flops_per_pair(f), flops_formula(method)
    total_flops = per_pair * q * n
    log.info(
        "torch %s, %d threads; Q=%d N=%d F=%d D=%d H=%d, fold W_o=%s, pairs/block=%d",
        torch.__version__,
        args.threads,
        q,
        n,
        f,
        d,
        args.heads,
        method.fold_out_proj,
        method.pairs_per_block,
    )

    peak_before, backend_before = matmul_gflops(args.matmul_size, args.matmul_repeats)
    log.info(
        "FLOPs per pair = %s = %d; total %.3e; expected >= %.0f s at the matmul rate",
        formula,
        per_pair,
        total_flops,
        total_flops / (peak_before * 1e9),
    )

    with torch.no_grad():
        start = time.perf_counter()
        text, video = build_inputs(method, q, n, f)
        log.info("random inputs + offline video stage: %.1f s (not timed below)", time.perf_counter() - start)
        warm = {k: v[: min(n, 64)] for k, v in video.items()}
        method.similarity(text, warm)  # warm-up (allocator, kernels)
        del warm
        input_bytes = sum(t.numel() * t.element_size() for t in (*text.values(), *video.values()))

        reset_ok = reset_peak_rss()
        rss_before = _status_kib("VmRSS") * 1024
        start = time.perf_counter()
        scores = method.similarity(text, video)  # (Q, N)
        wall = time.perf_counter() - start
        peak_extra = _status_kib("VmHWM") * 1024 - rss_before
    assert scores.shape == (q, n) and bool(torch.isfinite(scores).all())
    del scores, text, video

    peak_after, backend_after = matmul_gflops(args.matmul_size, args.matmul_repeats)
    peak = max(peak_before, peak_after)
    achieved = total_flops / wall / 1e9
    output_bytes = q * n * 4

    table = Table(title="X-Pool similarity (random embeddings)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("Q x N x F x D (heads)", f"{q} x {n} x {f} x {d} ({args.heads})"),
        ("W_o folded into cached values", str(method.fold_out_proj)),
        ("LN2/W_l/LN3 Gram fold (fold_norms)", str(method.fold_norms)),
        ("pairs per block", f"{method.pairs_per_block}"),
        ("FLOPs per pair (formula)", formula),
        ("FLOPs per pair", f"{per_pair:,}"),
        ("total FLOPs", f"{total_flops:.3e}"),
        ("memory locked in RAM (mlockall)", str(locked)),
        (
            "fp32 matmul peak before / after (GFLOP/s, best backend)",
            f"{peak_before:.1f} ({backend_before}) / {peak_after:.1f} ({backend_after})",
        ),
        ("similarity wall time (s)", f"{wall:.2f}"),
        ("achieved GFLOP/s", f"{achieved:.1f}"),
        ("ratio to matmul peak (target >= 50%)", f"{100 * achieved / peak:.1f}%"),
        ("throughput (pairs/s)", f"{q * n / wall:.3e}"),
        ("inputs resident before the call (GiB)", f"{input_bytes / GIB:.2f}"),
        ("score matrix (GiB, part of the extra)", f"{output_bytes / GIB:.3f}"),
        ("peak extra RSS (GiB, target <= 4)", f"{peak_extra / GIB:.3f}"),
        ("peak-RSS counter reset before the call", str(reset_ok)),
    ]
    if n < 100_000 or q < 1000:
        full = 1000 * 100_000
        rows.append(("EXTRAPOLATED wall time at Q=1000, N=100000 (s)", f"{wall * full / (q * n):.0f}"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


if __name__ == "__main__":
    main()
