"""Exact blocked top-k of the engine vs the machine's matmul peak and faiss ``IndexFlatIP``.

One run, side by side, on the same random data:

(a) fp32 matmul throughput: a large square matmul with torch (MKL), oneDNN and NumPy (OpenBLAS);
    the best is the machine's fp32 peak (``psbench.efficiency.matmul_peak``). Also torch's bfloat16 matmul;
(b) ``psbench.retrieval.engine.topk`` with a mean-pool (dot-product) method at Q x N x D, in its two paths:
    ``prefilter="off"`` (float32 score for every pair) and the default ``"auto"`` (bfloat16 prefilter
    with a proven error bound + float32 rescoring, where the CPU has native bfloat16). Both are exact;
    GFLOP/s = 2QND / time, so the prefilter path, which does most of its work in bfloat16, can exceed
    the fp32 peak. Also the bare (Q, D) @ (D, N) float32 GEMM alone, and (with --tune) a block grid.
    The run's fp32 peak is the best of the square products, the bare GEMM and the fp32 path
    (``psbench.efficiency.matmul_peak.fp32_reference_peak``), so no fp32 figure exceeds 100% of it;
(c) faiss-cpu ``IndexFlatIP`` exact search (a comparison only; faiss is imported here, never in psbench),
    with the fraction of queries whose whole top-k list equals each engine path's.

Usage: ``python benchmarks/topk_vs_faiss.py --queries 1000 --gallery 100000 --dim 512 --out reports/topk_vs_faiss.json``
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.efficiency.matmul_peak import fp32_matmul_peak, fp32_reference_peak, median_seconds
from psbench.files import atomic
from psbench.retrieval import engine
from psbench.runs.dirs import environment

console = Console()


def matmul_peak(size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """The fp32 peak over torch (MKL), oneDNN and NumPy (OpenBLAS, which faiss also builds on), plus
    torch's bfloat16 matmul for context."""
    peak = fp32_matmul_peak(size, warmup, repeats)
    a16, b16 = torch.randn(size, size).bfloat16(), torch.randn(size, size).bfloat16()
    seconds, times = median_seconds(lambda: torch.matmul(a16, b16), warmup, repeats)
    peak["bf16"] = {"seconds": seconds, "times": times, "gflops": 2 * size**3 / seconds / 1e9}
    return peak


def engine_topk(
    text: torch.Tensor, video: torch.Tensor, k: int, bq: int, bv: int, warmup: int, repeats: int, prefilter: str
) -> dict:
    method = create_method("meanpool", create_clip("psbench-tiny")).eval()  # similarity = text @ video.T
    q, d = text.shape
    n = video.shape[0]
    inputs = ({"text": text}, {"video": video})
    seconds, times = median_seconds(
        lambda: engine.topk(method, *inputs, k, bq, bv, "cpu", prefilter=prefilter), warmup, repeats
    )
    used = engine.prefilter_operands(method, {"text": text[:bq]}, *inputs[1:], k, bv, "cpu", prefilter) is not None
    _, ids = engine.topk(method, *inputs, k, bq, bv, "cpu", prefilter=prefilter)
    return {
        "prefilter": prefilter,
        "prefilter_used": used,
        "block_queries": bq,
        "block_videos": bv,
        "seconds": seconds,
        "times": times,
        "gflops": 2 * q * n * d / seconds / 1e9,
        "ids": ids,
    }


def bare_gemm(text: torch.Tensor, video: torch.Tensor, warmup: int, repeats: int) -> dict[str, Any]:
    q, d = text.shape
    n = video.shape[0]
    out = torch.empty(q, n)
    seconds, times = median_seconds(lambda: torch.mm(text, video.t(), out=out), warmup, repeats)
    return {"seconds": seconds, "times": times, "gflops": 2 * q * n * d / seconds / 1e9}


def faiss_flat_ip(text: torch.Tensor, video: torch.Tensor, k: int, warmup: int, repeats: int) -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"available": False}
    q, d = text.shape
    n = video.shape[0]
    faiss.omp_set_num_threads(torch.get_num_threads())  # same thread count as torch, side by side
    index = faiss.IndexFlatIP(d)
    index.add(video.numpy())
    queries = text.numpy()
    seconds, times = median_seconds(lambda: index.search(queries, k), warmup, repeats)
    _, ids = index.search(queries, k)
    return {
        "available": True,
        "threads": faiss.omp_get_max_threads(),
        "seconds": seconds,
        "times": times,
        "gflops": 2 * q * n * d / seconds / 1e9,
        "ids": ids,
    }


def main(
    queries: Annotated[int, typer.Option(help="Q")] = 1000,
    gallery: Annotated[int, typer.Option(help="N")] = 100_000,
    dim: Annotated[int, typer.Option(help="D")] = 512,
    k: Annotated[int, typer.Option("-k")] = 10,
    matmul_size: Annotated[int, typer.Option(help="Square matmul size for the peak.")] = 4096,
    warmup: Annotated[int, typer.Option()] = 1,
    repeats: Annotated[int, typer.Option()] = 5,
    block_queries: Annotated[int, typer.Option(help="Engine query block.")] = 1024,
    block_videos: Annotated[int, typer.Option(help="Engine video block (the engine default).")] = 4096,
    tune: Annotated[bool, typer.Option(help="Also try a grid of engine block sizes.")] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results JSON here.")] = None,
) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(queries, dim, generator=gen), dim=-1)  # (Q, D)
    video = torch.nn.functional.normalize(torch.randn(gallery, dim, generator=gen), dim=-1)  # (N, D)

    peak = matmul_peak(matmul_size, warmup, repeats)
    gemm = bare_gemm(text, video, warmup, repeats)
    plain = engine_topk(text, video, k, block_queries, block_videos, warmup, repeats, "off")
    ours = engine_topk(text, video, k, block_queries, block_videos, warmup, repeats, "auto")
    grid = []
    if tune:
        for bq in (256, 1024, 4096):
            for bv in (4096, 16384, 65536):
                for path in ("off", "auto"):
                    grid.append(engine_topk(text, video, k, bq, bv, warmup, repeats, path))
    flat = faiss_flat_ip(text, video, k, warmup, repeats)
    paths_agree = float((plain["ids"] == ours["ids"]).all(dim=1).float().mean())
    agreement = {}
    if flat.get("available"):
        ids = torch.from_numpy(flat.pop("ids"))
        for row in (plain, ours):
            agreement[row["prefilter"]] = float((row["ids"] == ids).all(dim=1).float().mean())
    for row in (plain, ours, *grid):
        row.pop("ids")

    # the fp32 peak of this run: the best fp32 product it measured, square or of the benchmark's shape
    fp32_runs: dict[str, float] = {"bare GEMM (Q,D)@(D,N)": gemm["gflops"], "engine fp32 path": plain["gflops"]}
    for row in (ours, *grid):  # a path that used the bf16 prefilter is not an fp32 measurement
        if not row["prefilter_used"]:
            fp32_runs.setdefault(f"engine fp32 bq={row['block_queries']} bv={row['block_videos']}", row["gflops"])
    if flat.get("available"):
        fp32_runs["faiss IndexFlatIP"] = flat["gflops"]
    ref = fp32_reference_peak(peak, fp32_runs)
    peak["reference"] = ref
    table = Table(title=f"exact top-{k}: Q={queries} N={gallery} D={dim}, {torch.get_num_threads()} threads")
    for col in ("what", "median s", "GFLOP/s (2QND/t)", "vs fp32 peak"):
        table.add_column(col, justify="left" if col == "what" else "right")
    labels = {"torch": "torch.matmul (MKL)", "onednn": "oneDNN (psbench.ops.linear)", "numpy": "numpy (OpenBLAS)"}
    square = f"square {matmul_size}^3 "
    rows_peak = [(labels[name], row, ref["source"] == square + name) for name, row in peak["by_backend"].items()]
    rows_peak.append(("torch bfloat16 (not fp32)", peak["bf16"], False))
    for label, row, is_peak in rows_peak:
        table.add_row(
            f"matmul {matmul_size}^3, {label}{' = fp32 peak' if is_peak else ''}",
            f"{row['seconds']:.4f}",
            f"{row['gflops']:.1f}",
            f"{row['gflops'] / ref['gflops']:.0%}",
        )

    def path_label(row: dict) -> str:
        kind = "bf16 prefilter + fp32 rescoring" if row["prefilter_used"] else "fp32 every pair"
        return f"engine.topk prefilter={row['prefilter']} ({kind}) bq={row['block_queries']} bv={row['block_videos']}"

    rows = [("bare fp32 GEMM (Q,D)@(D,N), torch", gemm), (path_label(plain), plain), (path_label(ours), ours)]
    rows += [("  tune: " + path_label(r), r) for r in grid]
    if flat.get("available"):
        rows.append((f"faiss IndexFlatIP ({flat['threads']} threads)", flat))
    for label, row in rows:
        table.add_row(label, f"{row['seconds']:.4f}", f"{row['gflops']:.1f}", f"{row['gflops'] / ref['gflops']:.0%}")
    console.print(table)
    ratio = plain["gflops"] / ref["gflops"]
    default_ratio = ours["gflops"] / ref["gflops"]
    console.print(
        f"fp32 peak {ref['gflops']:.1f} GFLOP/s ({ref['source']}; square {peak['gflops']:.1f}, {peak['backend']}); "
        f"float32 path {plain['gflops']:.1f} GFLOP/s = {ratio:.0%}, default path {ours['gflops']:.1f} = "
        f"{default_ratio:.0%} (target >= 70%): {'OK' if min(ratio, default_ratio) >= 0.7 else 'BELOW'}"
    )
    console.print(f"default path ({ours['prefilter']}): same top-{k} lists as the float32 path for {paths_agree:.1%}")
    if flat.get("available"):
        for row in (plain, ours):
            speed = flat["seconds"] / row["seconds"]
            console.print(
                f"engine.topk prefilter={row['prefilter']}: {speed:.2f}x faiss's speed "
                f"({'at least as fast' if speed >= 1 else 'SLOWER'}); whole top-{k} equal to faiss's for "
                f"{agreement[row['prefilter']]:.1%} of queries"
            )
    if out is not None:
        atomic.write_json(
            out,
            {
                "config": {"queries": queries, "gallery": gallery, "dim": dim, "k": k},
                "environment": environment("cpu"),
                "matmul_peak": peak,
                "bare_gemm": gemm,
                "engine_topk_float32": plain,
                "engine_topk_default": ours,
                "tune": grid,
                "faiss": flat,
                "float32_path_ratio_to_peak": ratio,
                "default_path_ratio_to_peak": default_ratio,
                "default_path_speed_vs_faiss": flat["seconds"] / ours["seconds"] if flat.get("available") else None,
                "paths_same_topk_fraction": paths_agree,
                "topk_equal_to_faiss_fraction": agreement,
            },
        )
        console.print(f"written {out}")


if __name__ == "__main__":
    typer.run(main)
