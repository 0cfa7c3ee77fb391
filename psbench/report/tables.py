"""Report tables: quality (ours + published), paired tests, temporal diagnostics, provenance."""

from __future__ import annotations

import math
from typing import Any

from psbench.report.collect import METRICS, Conflict, Group, Run
from psbench.report.compare import Comparison
from psbench.report.document import Code, Row, Table
from psbench.report.quality import Cell, GroupQuality
from psbench.report.references import reference_label
from psbench.report.stats import format_p, holm

DIRECTION_NAMES = {"t2v": "text-to-video", "v2t": "video-to-text"}
METRIC_HEADERS = {"R1": "R@1 (%)", "R5": "R@5 (%)", "R10": "R@10 (%)", "MdR": "MdR", "MnR": "MnR"}
DASH = "–"


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{digits}f}"


def signed(value: float, digits: int = 1) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def format_cell(cell: Cell) -> str:
    """'mean ± std' over seeds (just the value with one seed), then the bootstrap CI on a second line."""
    head = fmt(cell.mean) if cell.std is None else f"{fmt(cell.mean)} ± {fmt(cell.std)}"
    if cell.ci is None:
        return head
    return f"{head}\n[{fmt(cell.ci.low)}, {fmt(cell.ci.high)}]"


def quality_table(
    protocol: str,
    direction: str,
    qualities: list[GroupQuality],
    references: list[dict[str, Any]],
    reference_source: str,
    level: float,
) -> Table:
    """Ours (one row per group, zero-shot rows labelled) then the published rows below a separator."""
    columns = [
        "method",
        "kind",
        "seeds",
        *(METRIC_HEADERS[m] for m in METRICS),
        "hashes:\nprotocol\ntest data\nweights",
    ]
    rows = []
    for q in qualities:
        g = q.group
        cells = [format_cell(q.cells[(direction, m)]) for m in METRICS]
        hashes = f"{g.protocol_hash[:8]}\n{g.test_data_hash[:8]}\n{g.weights_hash[:8]}"
        rows.append(Row([g.cell_label, g.kind, str(len(g.runs)), *cells, hashes]))
    published = [r for r in references if r.get("direction") == direction]
    sources: list[str] = []
    if published:
        rows.append(Row([f"published numbers ({reference_source}); not ours, never averaged in"], "section"))
        for ref in published:
            source = str(ref.get("source", "source not given"))
            if source not in sources:
                sources.append(source)
            values = [fmt(float(ref[m])) if ref.get(m) is not None else DASH for m in METRICS]
            post = ref.get("post_processing")
            kind = "published" + (f"\n+ {post}" if post not in (None, "", "none") else "")
            rows.append(Row([reference_label(ref, sources.index(source) + 1), kind, DASH, *values, DASH], "published"))
    queries = sorted({q.num_queries[direction] for q in qualities})
    notes = [
        f"Ours: mean ± std over seeds (sample std, n-1) of each run's metrics.json; second line: {level:.0%} "
        "percentile bootstrap CI over test queries (per-query values averaged over seeds, queries resampled "
        f"with replacement). Test queries: {', '.join(map(str, queries))}. MdR/MnR: lower is better. "
        "Hashes: protocol, test data, sha256 of the CLIP weights file ('random': no weights), first 8 hex digits.",
        *(f"[{i}] {source}" for i, source in enumerate(sources, 1)),
    ]
    align = ["l", "l"] + ["r"] * (len(columns) - 3) + ["l"]
    return Table(f"{protocol}: {DIRECTION_NAMES[direction]} ({direction})", columns, rows, notes, align)


def comparison_table(protocol: str, direction: str, comparisons: list[Comparison], notes: list[str]) -> Table:
    """Paired tests; p-values with Holm adjustment within this table (per test family)."""
    r1_holm = holm([c.r1_test.p for c in comparisons])
    rank_holm = holm([c.rank_test.p for c in comparisons])
    columns = [
        "method",
        "vs baseline",
        "queries",
        "ΔR@1 (pp)\n[95% CI]",
        "p: sign-flip\non R@1 (Holm)",
        "Δ mean rank\n[95% CI]",
        "p: Wilcoxon\non ranks (Holm)",
    ]
    rows = []
    for c, h1, h2 in zip(comparisons, r1_holm, rank_holm, strict=True):
        rows.append(
            Row(
                [
                    f"{c.group.cell_label}\n({c.group.kind})",
                    f"{c.baseline.cell_label}\n({c.baseline.kind})",
                    str(c.num_queries),
                    f"{signed(c.delta_r1.point)}\n[{signed(c.delta_r1.low)}, {signed(c.delta_r1.high)}]",
                    _p_cell(c.r1_test.p, h1, c.r1_test.note),
                    f"{signed(c.delta_rank.point, 2)}\n[{signed(c.delta_rank.low, 2)}, {signed(c.delta_rank.high, 2)}]",
                    _p_cell(c.rank_test.p, h2, c.rank_test.note),
                ]
            )
        )
    test_names = sorted({c.r1_test.name for c in comparisons})
    table_notes = [
        "Δ = row minus baseline over the same test queries (per-query values averaged over each row's seeds); "
        "ΔR@1 > 0 and Δ mean rank < 0 favour the row. CIs: paired bootstrap over queries. "
        f"R@1 test: {'; '.join(test_names) or 'paired sign-flip permutation'}, two-sided. Rank test: Wilcoxon "
        "signed-rank (zero differences dropped), two-sided. Holm: Holm-Bonferroni over the rows of this table.",
        "Rows are paired only with equal protocol name and version, test-data hash, tie rule, v2t rule and DSL "
        "flag, and the same kind (zero-shot with zero-shot, trained with trained); protocol hashes differ between "
        "methods by construction (they cover each method's recipe).",
        *notes,
    ]
    align = ["l", "l"] + ["r"] * (len(columns) - 2)
    return Table(f"{protocol}: paired tests, {DIRECTION_NAMES[direction]}", columns, rows, table_notes, align)


def _p_cell(p: float | None, adjusted: float | None, note: str) -> str:
    if p is None:
        return f"n/a\n({note})" if note else "n/a"
    return f"{format_p(p)}\n({format_p(adjusted)})"


def order_accuracy_table(protocol: str, groups: list[Group]) -> Table | None:
    rows = []
    for g in groups:
        if any(r.metrics.get("relation") for r in g.runs):
            continue  # the relation probe's twins are not reversals: its own table shows them
        values = [r.metrics.get("order_accuracy") for r in g.runs]
        values = [float(v) for v in values if v is not None]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        cell = fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"
        rows.append(Row([g.cell_label, g.kind, str(len(values)), cell]))
    if not rows:
        return None
    note = (
        "Percent of captions whose own video scores above its time-reversed twin (ties within 1e-5 count one "
        "half); 50% is chance and what an order-blind method scores. Mean ± std over seeds."
    )
    columns = ["method", "kind", "seeds", "order acc. (%)"]
    return Table(f"{protocol}: order accuracy (synthetic twins)", columns, rows, [note], ["l", "l", "r", "r"])


FRAME_ORDER_METRICS = (("t2v", "R1"), ("t2v", "R5"), ("t2v", "MnR"), ("v2t", "R1"), ("v2t", "MnR"))


def frame_order_table(protocol: str, groups: list[Group]) -> Table | None:
    """For each run's eval_*.json: the metric with altered frame order vs the run's own metrics.json."""
    rows = []
    skipped = []
    for g in groups:
        for run in g.runs:
            for ev in run.evals:
                order = ev.get("frame_order", "keep")
                if ev.get("tie_rule", run.tie_rule) != run.tie_rule:
                    skipped.append(f"{run.path.name}/{ev['_file']}: tie rule differs from the run's")
                    continue
                cells = [_delta_cell(run.metrics, ev, d, m) for d, m in FRAME_ORDER_METRICS]
                acc = _delta_cell(run.metrics, ev, None, "order_accuracy")
                rows.append(Row([g.cell_label, str(run.seed), order, *cells, acc]))
    if not rows:
        return None
    columns = ["method", "seed", "frame\norder", "t2v R@1", "t2v R@5", "t2v MnR", "v2t R@1", "v2t MnR", "order acc."]
    notes = [
        "Each cell: run's own metric → metric with the gallery frames reversed/shuffled (change). R@K and order "
        "accuracy in %. An order-blind method changes by ~0; 'keep' rows re-evaluate unchanged frames "
        "(a reproducibility check: expect no change).",
        *skipped,
    ]
    title = f"{protocol}: frame-order test (psbench eval --reverse-frames / --shuffle-frames)"
    if all(r.cells[-1] == DASH for r in rows):  # no order accuracy (no twins in this test set)
        columns, rows = columns[:-1], [Row(r.cells[:-1]) for r in rows]
    return Table(title, columns, rows, notes, ["l", "r", "l"] + ["r"] * (len(columns) - 3))


def _delta_cell(own: dict[str, Any], altered: dict[str, Any], direction: str | None, metric: str) -> str:
    a = own.get(direction, {}).get(metric) if direction else own.get(metric)
    b = altered.get(direction, {}).get(metric) if direction else altered.get(metric)
    if a is None or b is None:
        return DASH
    return f"{fmt(float(a))} → {fmt(float(b))}\n({signed(float(b) - float(a))})"


def conflict_table(conflicts: list[Conflict]) -> Table:
    rows = []
    for c in conflicts:
        for phash, dhash, whash, dirs in c.groups:
            rows.append(Row([f"{c.protocol} / {c.method}", phash, dhash, whash[:16], "\n".join(dirs)]))
    note = (
        "Runs of one protocol and method whose protocol hash, test-data hash or weights (sha256 of the CLIP weights "
        "file or of the tokenizer vocabulary) differ are never merged into one row: they are shown as separate rows "
        "labelled with what differs. Splitting (rather than failing) keeps legitimate variants (a --set override, "
        "other weights, a regenerated test set) visible without averaging them together."
    )
    columns = ["protocol / method", "protocol hash", "test-data hash", "weights sha256", "run directories"]
    return Table("Hash conflicts (split into separate rows)", columns, rows, [note], ["l"] * 5)


def provenance_table(protocol: str, runs: list[Run]) -> Table:
    rows = []
    for run in runs:
        env = run.environment
        git = env.get("git", {})
        dirty = {True: " (dirty)", False: "", None: " (dirty: unknown)"}.get(git.get("dirty"), "")
        hashes = run.metrics.get("hashes", {})
        rows.append(
            Row(
                [
                    run.path.name,
                    f"{run.method}\nseed {run.seed}",
                    f"v{run.metrics.get('protocol_version')}\n{run.protocol_hash}",
                    f"{hashes.get('test_data', DASH)}\n{hashes.get('train_data', DASH)}\n{run.weights_hash[:16]}",
                    "\n".join(f"{k} {env.get(k, '?')}" for k in ("python", "torch", "open_clip")),
                    f"{env.get('device', '?')}\n{env.get('device_name', '')}",
                    f"{str(git.get('sha', 'unknown'))[:10]}{dirty}",
                ]
            )
        )
    columns = [
        "run directory",
        "method",
        "protocol\nversion / hash",
        "hashes: test /\ntrain data,\nweights sha256",
        "software",
        "device",
        "git sha",
    ]
    return Table(f"{protocol}: provenance of every run", columns, rows, align=["l"] * len(columns))


def commands_block(runs: list[Run]) -> Code:
    lines = []
    for run in runs:
        lines.append(f"# {run.path}")
        lines.append(run.config.get("command") or "(command not recorded)")
    return Code(lines)
