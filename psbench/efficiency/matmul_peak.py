"""The machine's float32 matmul throughput, per CPU BLAS backend that psbench can reach.

Benchmarks report their throughput against this peak. On CPU three backends can differ by 2x on the
same machine (the 2-core AMD development machine: torch/MKL 211, NumPy/OpenBLAS 250, oneDNN 451
GFLOP/s), so each is measured and the best one is the peak.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from psbench.ops import linear as cpu_linear


def median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def fp32_matmul_peak(size: int = 4096, warmup: int = 1, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of a (size x size) @ (size x size) float32 product on each CPU backend; the best is the peak.

    Backends: ``torch`` (``torch.matmul``: MKL sgemm), ``onednn`` (``psbench.ops.linear``, when
    available) and ``numpy`` (OpenBLAS).
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    b_t = b.t().contiguous()  # linear takes the weight as (out, in)
    backends: dict[str, Callable[[], Any]] = {"torch": lambda: torch.matmul(a, b)}
    if cpu_linear.onednn_fp32_available():
        backends["onednn"] = lambda: cpu_linear.linear(a, b_t)
    backends["numpy"] = lambda: np.matmul(a.numpy(), b.numpy())
    results = {}
    with torch.inference_mode():
        for name, fn in backends.items():
            seconds, times = median_seconds(fn, warmup, repeats)
            results[name] = {"seconds": seconds, "times": times, "gflops": 2 * size**3 / seconds / 1e9}
    best = max(results, key=lambda name: results[name]["gflops"])
    return {"size": size, "backend": best, "gflops": results[best]["gflops"], "by_backend": results}


def fp32_reference_peak(square: dict[str, Any], same_shape: dict[str, float]) -> dict[str, Any]:
    """The fp32 peak a run reports against: the best of its square products (``fp32_matmul_peak``) and
    its fp32 measurements of the benchmark's own shape (``same_shape``: name -> GFLOP/s, e.g. the bare
    (Q, D) @ (D, N) GEMM). A square product can be slower than a GEMM of another shape on the same
    machine, so the best of both is used and no fp32 figure of the run exceeds 100% of its peak.

    Returns ``{"gflops", "source", "square_gflops"}``.
    """
    candidates = {f"square {square['size']}^3 {name}": row["gflops"] for name, row in square["by_backend"].items()}
    candidates.update(same_shape)
    source = max(candidates, key=lambda name: candidates[name])
    return {"gflops": candidates[source], "source": source, "square_gflops": square["gflops"]}
