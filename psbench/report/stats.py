"""Statistics over test queries: percentile bootstrap CIs and paired significance tests.

All resampling is vectorised and chunked so that at most ``MAX_CELLS`` values are materialised at
once (MSVD text-to-video has ~27k queries). Every function takes a ``numpy.random.Generator`` so a
report is reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: largest (resamples x queries) block held in memory at once
MAX_CELLS = 4_000_000

STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda block: block.mean(axis=1),
    "median": lambda block: np.median(block, axis=1),
}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval."""

    point: float
    low: float
    high: float
    level: float
    resamples: int


@dataclass(frozen=True)
class TestResult:
    """A p-value (None when the test does not apply) with the test's name and why it was skipped."""

    name: str
    p: float | None
    note: str = ""


def _chunks(total: int, per_row: int) -> list[int]:
    """Row counts whose blocks of ``per_row`` columns stay under MAX_CELLS."""
    step = max(1, MAX_CELLS // max(1, per_row))
    return [min(step, total - start) for start in range(0, total, step)]


def bootstrap_distribution(values: np.ndarray, statistic: str, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` values of ``statistic`` over queries drawn with replacement from ``values`` (n,)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D array of per-query values, got shape {values.shape}")
    fn = STATISTICS[statistic]
    n = values.size
    out = [fn(values[rng.integers(0, n, size=(rows, n))]) for rows in _chunks(resamples, n)]  # each (rows,)
    return np.concatenate(out)


def bootstrap_ci(
    values: np.ndarray,
    statistic: str = "mean",
    resamples: int = 2000,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
    scale: float = 1.0,
    shift: float = 0.0,
) -> Interval:
    """Percentile bootstrap CI of ``scale * statistic(values) + shift`` over resampled queries."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    rng = rng if rng is not None else np.random.default_rng(0)
    values = np.asarray(values, dtype=np.float64)
    dist = bootstrap_distribution(values, statistic, resamples, rng) * scale + shift
    alpha = (1 - level) / 2
    low, high = np.quantile(dist, [alpha, 1 - alpha])
    point = float(STATISTICS[statistic](values[None, :])[0] * scale + shift)
    return Interval(point, float(low), float(high), level, resamples)


def sign_flip_test(diff: np.ndarray, permutations: int = 5000, rng: np.random.Generator | None = None) -> TestResult:
    """Two-sided paired permutation test of mean(diff) = 0 by random sign flips of the paired differences.

    Exact (all 2^m sign patterns of the m non-zero differences) when 2^m <= ``permutations``;
    otherwise Monte Carlo with the (1 + hits) / (1 + permutations) estimate, which is never zero.
    """
    name = "paired sign-flip permutation"
    d = np.asarray(diff, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return TestResult(name, 1.0, "all paired differences are zero")
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, np.abs(d).sum())
    if 2**d.size <= permutations:
        patterns = ((np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1  # (2^m, m)
        sums = np.abs(patterns @ d)
        return TestResult(f"{name} (exact)", float((sums >= observed - tol).mean()))
    rng = rng if rng is not None else np.random.default_rng(0)
    hits = 0
    for rows in _chunks(permutations, d.size):
        signs = rng.integers(0, 2, size=(rows, d.size), dtype=np.int8) * 2 - 1  # (rows, m)
        hits += int((np.abs(signs @ d) >= observed - tol).sum())
    return TestResult(f"{name} ({permutations} resamples)", (1 + hits) / (1 + permutations))


def wilcoxon_test(x: np.ndarray, y: np.ndarray, min_nonzero: int = 10) -> TestResult:
    """Two-sided Wilcoxon signed-rank test on paired values (zero differences dropped).

    Not applied (p None) when fewer than ``min_nonzero`` pairs differ: the test then has almost no
    resolution and its normal approximation is poor.
    """
    name = "Wilcoxon signed-rank"
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    nonzero = int((d != 0).sum())
    if nonzero < min_nonzero:
        return TestResult(name, None, f"only {nonzero} pairs differ (< {min_nonzero})")
    result = sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return TestResult(name, float(result.pvalue))


def paired_bootstrap_diff(
    x: np.ndarray,
    y: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
    scale: float = 1.0,
) -> Interval:
    """CI of ``scale * mean(x - y)`` resampling query PAIRS (the same queries for both methods)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal shapes, got {x.shape} and {y.shape}")
    return bootstrap_ci(x - y, "mean", resamples, level, rng, scale)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error), None entries left out of the family."""
    index = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(index)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda i: pvalues[i])):  # type: ignore[arg-type, return-value]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def format_p(p: float | None) -> str:
    """p-values to two significant digits, small ones as '<1e-4'."""
    if p is None or math.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "<1e-4"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"
