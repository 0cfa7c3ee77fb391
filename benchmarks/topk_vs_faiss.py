"""Exact blocked top-k of the engine vs the machine's matmul peak and faiss ``IndexFlatIP``.

One run, side by side, on the same random data:

(a) fp32 matmul throughput: a large square ``torch.matmul`` (warm-up, median of repeats);
(b) ``psbench.engine.topk`` with a mean-pool (dot-product) method at Q x N x D, GFLOP/s = 2QND / time,
    and its ratio to (a) (target >= 70%); also the bare (Q, D) @ (D, N) GEMM alone, to separate the
    matmul from the top-k bookkeeping, and (with --tune) a grid of engine block sizes;
(c) faiss-cpu ``IndexFlatIP`` exact search (a comparison only; faiss is imported here, never in psbench).

Usage: ``python benchmarks/topk_vs_faiss.py --queries 1000 --gallery 100000 --dim 512 --out reports/topk_vs_faiss.json``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

import baselines  # noqa: F401 - registers meanpool
from psbench import engine
from psbench.backbone import create_clip
from psbench.method import create_method
from psbench.runs import atomic_write_json, environment

console = Console()


def median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def matmul_peak(size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """fp32 matmul throughput of torch's BLAS (MKL: the reference, the stack psbench runs on) and, for
    comparison, NumPy's (OpenBLAS), which faiss also builds on."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    results = {}
    for name, fn in (("torch", lambda: torch.matmul(a, b)), ("numpy", lambda: np.matmul(a.numpy(), b.numpy()))):
        seconds, times = median_seconds(fn, warmup, repeats)
        results[name] = {"seconds": seconds, "times": times, "gflops": 2 * size**3 / seconds / 1e9}
    return {"size": size, "library": "torch", **results["torch"], "by_library": results}


def engine_topk(text: torch.Tensor, video: torch.Tensor, k: int, bq: int, bv: int, warmup: int, repeats: int) -> dict:
    method = create_method("meanpool", create_clip("psbench-tiny")).eval()  # similarity = text @ video.T
    q, d = text.shape
    n = video.shape[0]
    seconds, times = median_seconds(
        lambda: engine.topk(method, {"text": text}, {"video": video}, k, bq, bv, "cpu"), warmup, repeats
    )
    return {
        "block_queries": bq,
        "block_videos": bv,
        "seconds": seconds,
        "times": times,
        "gflops": 2 * q * n * d / seconds / 1e9,
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
    ours = engine_topk(text, video, k, block_queries, block_videos, warmup, repeats)
    grid = []
    if tune:
        for bq in (256, 1024, 4096):
            for bv in (4096, 16384, 65536):
                grid.append(engine_topk(text, video, k, bq, bv, warmup, repeats))
    flat = faiss_flat_ip(text, video, k, warmup, repeats)
    agreement = None
    if flat.get("available"):
        _, ours_ids = engine.topk(
            create_method("meanpool", create_clip("psbench-tiny")),
            {"text": text},
            {"video": video},
            k,
            block_queries,
            block_videos,
        )
        ids = torch.from_numpy(flat.pop("ids"))
        agreement = float((ours_ids[:, 0] == ids[:, 0]).float().mean())

    table = Table(title=f"exact top-{k}: Q={queries} N={gallery} D={dim}, fp32, {torch.get_num_threads()} threads")
    for col in ("what", "median s", "GFLOP/s (2QND/t)", "vs matmul peak"):
        table.add_column(col, justify="left" if col == "what" else "right")
    table.add_row(
        f"matmul peak {matmul_size}^3 ({peak['library']})", f"{peak['seconds']:.4f}", f"{peak['gflops']:.1f}", "100%"
    )
    alt = peak["by_library"]["numpy"]
    table.add_row(
        f"  numpy (OpenBLAS) {matmul_size}^3",
        f"{alt['seconds']:.4f}",
        f"{alt['gflops']:.1f}",
        f"{alt['gflops'] / peak['gflops']:.0%}",
    )
    for label, row in [
        ("bare GEMM (Q,D)@(D,N)", gemm),
        (f"engine.topk bq={block_queries} bv={block_videos}", ours),
        *[(f"  tune bq={r['block_queries']} bv={r['block_videos']}", r) for r in grid],
    ]:
        table.add_row(label, f"{row['seconds']:.4f}", f"{row['gflops']:.1f}", f"{row['gflops'] / peak['gflops']:.0%}")
    if flat.get("available"):
        table.add_row(
            f"faiss IndexFlatIP ({flat['threads']} threads)",
            f"{flat['seconds']:.4f}",
            f"{flat['gflops']:.1f}",
            f"{flat['gflops'] / peak['gflops']:.0%}",
        )
    console.print(table)
    ratio = ours["gflops"] / peak["gflops"]
    console.print(f"engine.topk at {ratio:.0%} of the matmul peak (target >= 70%): {'OK' if ratio >= 0.7 else 'BELOW'}")
    if agreement is not None:
        console.print(f"top-1 agreement with faiss: {agreement:.1%}")
    if out is not None:
        atomic_write_json(
            out,
            {
                "config": {"queries": queries, "gallery": gallery, "dim": dim, "k": k},
                "environment": environment("cpu"),
                "matmul_peak": peak,
                "bare_gemm": gemm,
                "engine_topk": ours,
                "tune": grid,
                "faiss": flat,
                "ratio_to_peak": ratio,
                "top1_agreement_with_faiss": agreement,
            },
        )
        console.print(f"written {out}")


if __name__ == "__main__":
    typer.run(main)
