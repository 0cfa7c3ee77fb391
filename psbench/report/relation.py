"""The relation probe's report section: v2t group score and video accuracy per row, with paired tests.

Per row (a method and its seeds), each test group's value is averaged over seeds first (as for the
per-query metrics), then the groups are resampled for the CI; paired tests pair the same groups of two
rows. Runs of the same protocol made under other kernels (``--cross-machine``) get the same tables,
so a reader sees whether the conclusion holds on both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psbench.report.collect import Group, Run, group_runs
from psbench.report.document import Block, Heading, Paragraph, Row, Table
from psbench.report.machines import machines_of
from psbench.report.quality import StatsConfig
from psbench.report.stats import Interval, bootstrap_ci, format_p, holm, paired_bootstrap_diff, sign_flip_test
from psbench.report.tables import fmt, signed

#: rows every other row is tested against: the chance floor, and Prompt Switch without its switch
RELATION_BASELINES = ("random", "promptswitch-noswitch")
#: how each registered method's frames meet before the video-text score (what the probe is about)
FRAME_EXCHANGE = {
    "meanpool": "none: additive (0% by construction)",
    "promptswitch-noswitch": "none: additive (0% by construction)",
    "xpool": "none: text-conditioned frame weights",
    "xpool-folded": "none: text-conditioned frame weights",
    "tokenshift": "yes: channels shifted between neighbours",
    "videoproxy": "yes: proxy tokens across frames",
    "promptswitch": "yes: switched prompts in every layer",
    "promptswitch-noagg": "yes: switched prompts in every layer",
    "promptswitch-nocap": "yes: switched prompts in every layer",
    "random": "chance floor",
}
CHANCE_GROUP, CHANCE_VIDEO = 6.25, 50.0
ATOL = 1e-5  # a margin within this counts as no preference (as in metrics.relation_summary)


@dataclass
class RelationRow:
    group: Group
    names: list[str]
    passes: np.ndarray  # (G,) share of seeds in which all four members chose their own relation
    credit: np.ndarray  # (G,) mean over seeds and members of the per-video credit
    group_score: Interval
    video_accuracy: Interval


def _per_group(run: Run) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    found = run.relation_margins()
    if found is None:
        return None
    names, m = found  # (G, 4)
    credit = np.where(np.abs(m) <= ATOL, 0.5, (m > ATOL).astype(np.float64)).mean(axis=1)  # (G,)
    return names, (m > ATOL).all(axis=1).astype(np.float64), credit


def relation_row(group: Group, cfg: StatsConfig) -> RelationRow | None:
    """Seed-averaged per-group values of a row and their bootstrap CIs; None without relation groups."""
    per_seed = [_per_group(r) for r in group.runs]
    if any(p is None for p in per_seed):
        return None
    names = per_seed[0][0]  # type: ignore[index]
    if any(p[0] != names for p in per_seed):  # type: ignore[index]
        raise ValueError(f"{group.label}: seeds list different relation groups despite equal test-data hashes")
    passes = np.mean([p[1] for p in per_seed], axis=0)  # type: ignore[index]
    credit = np.mean([p[2] for p in per_seed], axis=0)  # type: ignore[index]
    return RelationRow(
        group,
        names,
        passes,
        credit,
        bootstrap_ci(passes, "mean", cfg.resamples, cfg.level, cfg.rng(), scale=100.0),
        bootstrap_ci(credit, "mean", cfg.resamples, cfg.level, cfg.rng(), scale=100.0),
    )


def _seed_cell(group: Group, key: str, ci: Interval) -> str:
    values = np.array([float(r.metrics["relation"][key]) for r in group.runs])
    head = fmt(float(values.mean())) + (f" ± {fmt(float(values.std(ddof=1)))}" if values.size > 1 else "")
    return f"{head}\n[{fmt(ci.low)}, {fmt(ci.high)}]"


def _twin_cell(group: Group) -> str:
    values = [float(r.metrics["order_accuracy"]) for r in group.runs if r.metrics.get("order_accuracy") is not None]
    return fmt(sum(values) / len(values)) if values else "–"


def rows_table(protocol: str, rows: list[RelationRow], where: str) -> Table:
    out = [
        Row(
            [
                r.group.cell_label,
                r.group.kind,
                str(len(r.group.runs)),
                FRAME_EXCHANGE.get(r.group.method, "?"),
                _seed_cell(r.group, "group_score", r.group_score),
                _seed_cell(r.group, "video_accuracy", r.video_accuracy),
                _twin_cell(r.group),
            ]
        )
        for r in rows
    ]
    groups = len(rows[0].names) if rows else 0
    notes = [
        f"Video-to-text over {groups} test groups of four (aa, bb: both halves one colour; ab, ba: two colours). "
        "Group score: % of groups in which all four videos score their own relation's caption above the other "
        f"one (chance {CHANCE_GROUP}%; any mean of per-frame features: 0% by construction). Video accuracy: % of "
        f"videos doing so (chance {CHANCE_VIDEO}%, additive pooling at most 75%). Mean ± std over seeds, then the "
        "95% bootstrap CI over groups of the seed-averaged values. Twin acc.: text-to-video, % of captions whose "
        "video scores above the video with the same first half and the other relation (no bound holds there: "
        "the cosine's per-video norm can carry a same-colour signal).",
    ]
    columns = ["method", "kind", "seeds", "frames exchange", "group score (%)", "video acc. (%)", "twin acc. (%)"]
    return Table(f"{protocol}: relation probe ({where})", columns, out, notes, ["l", "l", "r", "l", "r", "r", "r"])


@dataclass
class RelationComparison:
    row: RelationRow
    baseline: RelationRow
    delta_group: Interval
    group_p: float | None
    delta_video: Interval
    video_p: float | None


def comparisons(rows: list[RelationRow], cfg: StatsConfig) -> list[RelationComparison]:
    """Every row against each baseline row present (paired over the same groups; each pair once)."""
    out: list[RelationComparison] = []
    seen: set[frozenset[int]] = set()
    for name in RELATION_BASELINES:
        bases = [b for b in rows if b.group.method == name]
        if not bases:
            continue
        base = max(bases, key=lambda b: len(b.group.runs))
        for r in rows:
            pair = frozenset((id(r), id(base)))
            if r is base or pair in seen or r.names != base.names:
                continue
            if r.group.scoring_key[:3] != base.group.scoring_key[:3]:
                continue
            seen.add(pair)
            out.append(
                RelationComparison(
                    r,
                    base,
                    paired_bootstrap_diff(r.passes, base.passes, cfg.resamples, cfg.level, cfg.rng(), scale=100.0),
                    sign_flip_test(r.passes - base.passes, cfg.permutations, cfg.rng()).p,
                    paired_bootstrap_diff(r.credit, base.credit, cfg.resamples, cfg.level, cfg.rng(), scale=100.0),
                    sign_flip_test(r.credit - base.credit, cfg.permutations, cfg.rng()).p,
                )
            )
    return out


def holm_adjusted(found: list[RelationComparison]) -> list[float | None]:
    """Holm-adjusted p-values of every comparison's two tests, in order (group score, video accuracy)."""
    return holm([p for c in found for p in (c.group_p, c.video_p)])


def comparison_table(protocol: str, found: list[RelationComparison], adjusted: list[float | None], where: str) -> Table:
    rows = []
    for i, c in enumerate(found):
        ag, av = adjusted[2 * i], adjusted[2 * i + 1]
        rows.append(
            Row(
                [
                    f"{c.row.group.cell_label}\n{c.row.group.kind}",
                    c.baseline.group.method,
                    f"{signed(c.delta_group.point)}\n[{signed(c.delta_group.low)}, {signed(c.delta_group.high)}]",
                    f"{format_p(c.group_p)}\n({format_p(ag)})",
                    f"{signed(c.delta_video.point)}\n[{signed(c.delta_video.low)}, {signed(c.delta_video.high)}]",
                    f"{format_p(c.video_p)}\n({format_p(av)})",
                ]
            )
        )
    note = (
        "Row minus baseline in percentage points over the same test groups (seed-averaged per group), 95% paired "
        "bootstrap CI; p: two-sided paired sign-flip permutation test over groups, Holm-adjusted over this table "
        "in parentheses."
    )
    columns = ["row", "vs", "Δ group score", "p (Holm)", "Δ video acc.", "p (Holm)"]
    return Table(f"{protocol}: relation probe, paired ({where})", columns, rows, [note])


def verdict(
    rows: list[RelationRow], found: list[RelationComparison], adjusted: list[float | None], where: str
) -> Paragraph:
    """Which rows are above the chance floor (CI above 6.25% and Holm p < 0.05 against ``random``)."""
    above, near = [], []
    for r in rows:
        if r.group.method == "random":
            continue
        test = [(c, adjusted[2 * i]) for i, c in enumerate(found) if c.row is r and c.baseline.group.method == "random"]
        clear = r.group_score.low > CHANCE_GROUP and bool(test) and test[0][1] is not None and test[0][1] < 0.05
        (above if clear else near).append(f"{r.group.label} ({r.group.kind}) {fmt(r.group_score.point)}%")
    if not any(c.baseline.group.method == "random" for c in found):
        return Paragraph(f"{where}: no random-floor row to test against; run the `random` method too.")
    switch = [
        c for c in found if c.row.group.method == "promptswitch" and c.baseline.group.method == "promptswitch-noswitch"
    ]
    text = (
        f"{where}: group score clearly above chance (CI above {CHANCE_GROUP}% and Holm p < 0.05 against the "
        f"random floor): {', '.join(above) or 'none'}; not: {', '.join(near) or 'none'}."
    )
    if switch:
        s = switch[0].delta_group
        text += (
            f" What the switch adds (promptswitch minus promptswitch-noswitch): {signed(s.point)} points of group "
            f"score [{signed(s.low)}, {signed(s.high)}]."
        )
    return Paragraph(text)


def _rows(groups: list[Group], cfg: StatsConfig) -> list[RelationRow]:
    return [r for r in (relation_row(g, cfg) for g in groups) if r is not None]


def relation_blocks(protocol: str, groups: list[Group], other_runs: list[Run], cfg: StatsConfig) -> list[Block]:
    """The probe's tables for this report's runs and, if given, for the same protocol's other-kernel runs."""
    rows = _rows(groups, cfg)
    if not rows:
        return []
    blocks: list[Block] = [Heading(f"{protocol}: relation probe (cross-frame interaction)", 3)]
    settings = [(rows, [r for g in groups for r in g.runs])]
    others = [r for r in other_runs if r.protocol == protocol]
    if others:
        settings.append((_rows(group_runs(others)[0], cfg), others))
    for these, runs in settings:
        if not these:
            continue
        where = "; ".join(machines_of(runs))
        found = comparisons(these, cfg)
        adjusted = holm_adjusted(found)
        blocks.append(rows_table(protocol, these, where))
        if found:
            blocks.append(comparison_table(protocol, found, adjusted, where))
        blocks.append(verdict(these, found, adjusted, where))
    return blocks
