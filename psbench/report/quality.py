"""Per-row quality numbers: mean ± std over seeds and a bootstrap CI over test queries.

Seed pooling (documented in the report): the per-query values of a row (R@K contribution under the
run's tie rule, or the 0-based rank position) are AVERAGED OVER SEEDS first, then the test queries
are resampled with replacement. The CI therefore describes the uncertainty from the finite test set
for the seed-averaged model; the spread between seeds is the separate ``± std``. For R@K and MnR
the CI's point estimate equals the mean over seeds; for MdR it is the median of the seed-averaged
ranks + 1, which can differ from the mean of the per-seed medians.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from psbench.report.collect import DIRECTIONS, METRICS, Group
from psbench.report.stats import Interval, bootstrap_ci


@dataclass(frozen=True)
class StatsConfig:
    resamples: int = 2000
    permutations: int = 5000
    level: float = 0.95
    seed: int = 0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


@dataclass
class Cell:
    mean: float
    std: float | None  # None with one seed
    seeds: int
    ci: Interval | None


@dataclass
class GroupQuality:
    group: Group
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (direction, metric) -> cell
    num_queries: dict[str, int] = field(default_factory=dict)


def metric_ci(group: Group, direction: str, metric: str, cfg: StatsConfig) -> Interval:
    """Bootstrap CI over queries of one metric for the seed-pooled per-query values."""
    if metric.startswith("R"):
        values = group.per_query(direction, int(metric[1:]))
        return bootstrap_ci(values, "mean", cfg.resamples, cfg.level, cfg.rng(), scale=100.0)
    positions = group.per_query(direction, None)
    statistic = "median" if metric == "MdR" else "mean"
    return bootstrap_ci(positions, statistic, cfg.resamples, cfg.level, cfg.rng(), shift=1.0)


def group_quality(group: Group, cfg: StatsConfig) -> GroupQuality:
    out = GroupQuality(group)
    for direction in DIRECTIONS:
        out.num_queries[direction] = len(group.runs[0].ranks(direction))
        for metric in METRICS:
            values = group.metric_values(direction, metric)
            std = float(np.std(values, ddof=1)) if values.size > 1 else None
            out.cells[(direction, metric)] = Cell(
                float(values.mean()), std, int(values.size), metric_ci(group, direction, metric, cfg)
            )
    return out
