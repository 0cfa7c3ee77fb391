"""Paired comparisons of one row against a baseline row over the same test queries.

Pairing rule: protocol hashes always differ between methods (the hash covers the method name and its
recipe), so two rows are paired only when they share the protocol name and version, the TEST-DATA
hash, the tie rule, the v2t rule and the DSL flag (:attr:`Run.scoring_key`), and their query lists
(caption -> video index) are identical. Each row's per-query values are averaged over its seeds first.
"""

from __future__ import annotations

from dataclasses import dataclass

from psbench.report.collect import Group
from psbench.report.quality import StatsConfig
from psbench.report.stats import Interval, TestResult, paired_bootstrap_diff, sign_flip_test, wilcoxon_test

BASELINES = ("meanpool", "promptswitch")


@dataclass
class Comparison:
    group: Group
    baseline: Group
    direction: str
    num_queries: int
    delta_r1: Interval  # percentage points, row minus baseline (positive: row better)
    r1_test: TestResult
    delta_rank: Interval  # mean rank difference, row minus baseline (negative: row better)
    rank_test: TestResult


def find_baseline(group: Group, name: str, groups: list[Group]) -> Group | None:
    """The ``name`` row pairable with ``group``: same scoring key and same kind (zero-shot or trained),
    most seeds first. A zero-shot row is never tested against a trained one: that gap is training, not method."""
    candidates = [
        g
        for g in groups
        if g.method == name and g is not group and g.scoring_key == group.scoring_key and g.zero_shot == group.zero_shot
    ]
    if not candidates:
        return None
    candidates.sort(key=lambda g: (-len(g.runs), g.variant))
    return candidates[0]


def same_queries(a: Group, b: Group) -> bool:
    return a.runs[0].caption_video() == b.runs[0].caption_video()


def compare(group: Group, baseline: Group, direction: str, cfg: StatsConfig) -> Comparison:
    """Paired bootstrap CIs and tests of ``group`` vs ``baseline`` on per-query R@1 and rank positions."""
    if not same_queries(group, baseline):
        raise ValueError(f"{group.label} and {baseline.label}: the query lists differ; no paired comparison")
    r1_x, r1_y = group.per_query(direction, 1), baseline.per_query(direction, 1)
    pos_x, pos_y = group.per_query(direction, None), baseline.per_query(direction, None)
    return Comparison(
        group,
        baseline,
        direction,
        int(r1_x.size),
        paired_bootstrap_diff(r1_x, r1_y, cfg.resamples, cfg.level, cfg.rng(), scale=100.0),
        sign_flip_test(r1_x - r1_y, cfg.permutations, cfg.rng()),
        paired_bootstrap_diff(pos_x, pos_y, cfg.resamples, cfg.level, cfg.rng()),
        wilcoxon_test(pos_x, pos_y),
    )


def all_comparisons(groups: list[Group], direction: str, cfg: StatsConfig) -> tuple[list[Comparison], list[str]]:
    """Every row against each baseline method it can be paired with (each unordered pair once).

    A row is never compared with its own method; ``promptswitch`` vs ``meanpool`` is shown once (as
    promptswitch minus meanpool). Notes name the rows that could not be paired and why.
    """
    out: list[Comparison] = []
    notes: list[str] = []
    seen: set[frozenset[int]] = set()
    for name in BASELINES:
        for group in groups:
            if group.method == name:
                continue
            baseline = find_baseline(group, name, groups)
            if baseline is None:
                if any(g.method == name for g in groups):
                    notes.append(
                        f"{group.label} ({group.kind}): no {name} row of the same kind with the same test data and "
                        "scoring rules; not tested"
                    )
                continue
            pair = frozenset((id(group), id(baseline)))
            if pair in seen:
                continue
            seen.add(pair)
            if not same_queries(group, baseline):
                notes.append(f"{group.label} vs {baseline.label}: query lists differ; not compared")
                continue
            out.append(compare(group, baseline, direction, cfg))
    return out, notes
