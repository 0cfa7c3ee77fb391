"""X-Pool's two exact inference forms side by side in one run: reference vs folded (``fold_norms``).

Same random non-identity weights, same random frame embeddings, same queries; eval mode. Prints and
writes (``--out``) for each form the wall time of ``similarity`` over Q x N, its GFLOP/s (the method's
own per-pair FLOP formula) and its share of the same run's fp32 peak (the best of the square products
and the form's own GFLOP/s, ``psbench.efficiency.matmul_peak.fp32_reference_peak``), then the folded / reference
wall-time ratio and the largest score difference. ``--frames`` takes a list, to find where (if anywhere)
the fold stops paying off as frames grow.

    python benchmarks/xpool_forms.py --queries 1000 --videos 100000 --out reports/cpu_2cores/xpool_forms
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.xpool import XPool  # noqa: E402
from benchmarks.xpool_similarity import RandomClipStub as ClipStub  # noqa: E402
from psbench.efficiency.matmul_peak import fp32_matmul_peak, fp32_reference_peak  # noqa: E402
from psbench.files import atomic  # noqa: E402
from psbench.runs.dirs import environment  # noqa: E402


def build_forms(dim: int, heads: int, seed: int) -> dict[str, XPool]:
    """The reference and the folded form with the same random (non-identity) weights, eval mode."""
    torch.manual_seed(seed)
    reference = XPool(ClipStub(dim), num_heads=heads).eval()
    with torch.no_grad():
        for p in reference.pool_head.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folded = XPool(ClipStub(dim), num_heads=heads, fold_norms=True).eval()
    folded.load_state_dict(reference.state_dict())
    return {"reference": reference, "folded": folded}


def encode(method: XPool, frames: torch.Tensor, mask: torch.Tensor, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """The method's offline video stage from frame embeddings (N, F, D), chunk by chunk; only what its
    eval-mode similarity reads is kept."""
    head, n = method.pool_head, frames.shape[0]
    parts: dict[str, list[torch.Tensor]] = {}
    for v0 in range(0, n, chunk):
        keys, values = head.keys_values(frames[v0 : v0 + chunk], method.fold_out_proj)
        part = {"keys": keys}
        if method.uses_norm_fold():
            part["proj"], part["stats"] = head.norm_fold_cache(values)
        else:
            part["values"] = values
        for name, t in part.items():
            parts.setdefault(name, []).append(t)
    return {"mask": mask, **{name: torch.cat(ts) for name, ts in parts.items()}}


def time_form(method: XPool, text: dict[str, torch.Tensor], video: dict[str, torch.Tensor]) -> tuple[float, Any]:
    """Wall seconds of one ``similarity`` call over the whole gallery (after a small warm-up)."""
    method.similarity(text, {k: v[:64] for k, v in video.items()})
    start = time.perf_counter()
    scores = method.similarity(text, video)  # (Q, N)
    return time.perf_counter() - start, scores


def compare(queries: int, videos: int, frames: int, dim: int, heads: int, seed: int) -> dict[str, Any]:
    """Both forms at one (Q, N, F): wall time, GFLOP/s, folded / reference ratio, largest difference."""
    forms = build_forms(dim, heads, seed)
    g = torch.Generator().manual_seed(seed + 1)
    raw_text = torch.randn(queries, dim, generator=g)  # (Q, D)
    raw_frames = torch.randn(videos, frames, dim, generator=g)  # (N, F, D)
    mask = torch.ones(videos, frames, dtype=torch.bool)
    mask[::3, frames - frames // 4 :] = False  # every third video has padded frames
    out: dict[str, Any] = {"queries": queries, "videos": videos, "frames": frames, "dim": dim, "heads": heads}
    scores = {}
    with torch.no_grad():
        for name, method in forms.items():
            text = {"text": raw_text, "query": method.pool_head.query(raw_text)}
            video = encode(method, raw_frames, mask)
            wall, scores[name] = time_form(method, text, video)
            per_pair = method.online_flops_per_pair(frames)
            out[name] = {
                "wall_s": wall,
                "flops_per_pair": per_pair,
                "gflops_per_s": per_pair * queries * videos / wall / 1e9,
                "cached_bytes_per_video": sum(t[0].numel() * t.element_size() for t in video.values()),
            }
            del video
    out["folded_speedup"] = out["reference"]["wall_s"] / out["folded"]["wall_s"]
    out["flop_ratio"] = out["reference"]["flops_per_pair"] / out["folded"]["flops_per_pair"]
    out["max_abs_score_difference"] = float((scores["folded"] - scores["reference"]).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--frames", type=int, nargs="+", default=[12])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for xpool_forms.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    square = fp32_matmul_peak(args.matmul_size, warmup=1, repeats=3)
    points = [compare(args.queries, args.videos, f, args.dim, args.heads, args.seed) for f in args.frames]
    same_shape = {
        f"{form} F={p['frames']}": p[form]["gflops_per_s"] for p in points for form in ("reference", "folded")
    }
    peak = fp32_reference_peak(square, same_shape)
    table = Table(
        title=f"X-Pool forms, Q={args.queries} N={args.videos} D={args.dim} H={args.heads}, "
        f"{args.threads} threads; fp32 peak {peak['gflops']:.0f} GFLOP/s ({peak['source']})"
    )
    for col in (
        "F",
        "form",
        "FLOPs/pair",
        "wall s",
        "GFLOP/s",
        "% of peak",
        "bytes/video",
        "folded speed-up",
        "max |diff|",
    ):
        table.add_column(col, justify="right")
    for p in points:
        for form in ("reference", "folded"):
            r = p[form]
            r["share_of_peak"] = r["gflops_per_s"] / peak["gflops"]
            last = form == "folded"
            table.add_row(
                str(p["frames"]),
                form,
                f"{r['flops_per_pair']:,}",
                f"{r['wall_s']:.2f}",
                f"{r['gflops_per_s']:.0f}",
                f"{100 * r['share_of_peak']:.0f}%",
                f"{r['cached_bytes_per_video']:,}",
                f"{p['folded_speedup']:.1f}x (FLOPs {p['flop_ratio']:.1f}x)" if last else "",
                f"{p['max_abs_score_difference']:.1e}" if last else "",
            )
    Console(width=200).print(table)
    if args.out is not None:
        result = {
            "kind": "psbench-xpool-forms",
            "fp32_peak": peak,
            "points": points,
            "threads": args.threads,
            "environment": environment(torch.device("cpu")),
        }
        atomic.write_json(Path(args.out) / "xpool_forms.json", result)


if __name__ == "__main__":
    main()
