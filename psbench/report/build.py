"""Build the report: collect runs, compute tables and figures, write report.md (+ report.pdf)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from psbench.files import atomic
from psbench.files.atomic import atomic_path
from psbench.report import collect, tables
from psbench.report.compare import all_comparisons
from psbench.report.document import Block, Bullets, Document, Figure, Heading, Paragraph
from psbench.report.efficiency import efficiency_blocks
from psbench.report.figures import recall_ci_plot, training_curves
from psbench.report.machines import cross_machine_table, machines_paragraph
from psbench.report.markdown import render_markdown
from psbench.report.quality import GroupQuality, StatsConfig, group_quality
from psbench.report.references import references_for
from psbench.report.relation import relation_blocks

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    out_dir: Path
    markdown: Path
    pdf: Path | None
    pdf_pages: int
    figures: list[Path]
    runs: int
    conflicts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    repeated_seeds: list[str] = field(default_factory=list)


def _method_notes(cfg: StatsConfig) -> Bullets:
    return Bullets(
        [
            "Rows: one per (protocol, method, zero-shot or trained, protocol hash, test-data hash, sha256 of the "
            "CLIP weights file and of the tokenizer vocabulary). Seeds of a row share all of them; runs with "
            "different hashes are never merged (see 'Hash conflicts') nor paired in a test. A row's seeds are "
            "distinct: a repeated seed counts once (see 'Repeated seeds').",
            "Cells: mean ± sample std over seeds of each run's recorded metrics; with one seed only the value.",
            f"Second line: {cfg.level:.0%} percentile bootstrap CI over test queries ({cfg.resamples} resamples, "
            f"seed {cfg.seed}). Per-query values (R@K contribution under the run's tie rule, or rank position) are "
            "averaged over the row's seeds, then queries are resampled with replacement: the CI is the test-set "
            "uncertainty of the seed-averaged model; the std is the seed-to-seed spread.",
            "Paired tests compare a row with meanpool and with promptswitch on the same queries: a sign-flip "
            f"permutation test on per-query R@1 ({cfg.permutations} random sign patterns, exact when fewer "
            "patterns exist) and the Wilcoxon signed-rank test on rank positions, both two-sided, with Holm "
            "adjustment within each table.",
            "Published numbers come from the protocol file's [[reference]] entries and are shown as separate, "
            "shaded rows; they are never averaged with ours.",
        ]
    )


def quality_blocks(
    protocol: str, groups: list[collect.Group], qualities: list[GroupQuality], cfg: StatsConfig
) -> list[Block]:
    """A protocol's heading, its machines and the quality table of each direction (ours + published)."""
    references, source = references_for(protocol, groups)
    versions = sorted({str(r.metrics.get("protocol_version")) for g in groups for r in g.runs})
    blocks: list[Block] = [
        Heading(f"Protocol {protocol} (version {', '.join(versions)})", 2),
        machines_paragraph(protocol, [r for g in groups for r in g.runs]),
    ]
    for direction in collect.DIRECTIONS:
        blocks.append(tables.quality_table(protocol, direction, qualities, references, source, cfg.level))
    return blocks


def _by_protocol(groups: list[collect.Group]) -> dict[str, list[collect.Group]]:
    by_protocol: dict[str, list[collect.Group]] = {}
    for group in groups:
        by_protocol.setdefault(group.protocol, []).append(group)
    return by_protocol


@dataclass
class Results:
    """The results tables of ``psbench table``: the report's quality and order-accuracy tables, no figures."""

    blocks: list[Block]
    runs: int
    conflicts: list[collect.Conflict]
    repeated_seeds: list[collect.RepeatedSeed]
    problems: list[str]


def results_tables(
    runs_dirs: Iterable[Path], protocols: Iterable[str] | None = None, stats: StatsConfig | None = None
) -> Results:
    """Collect and group runs exactly as the report does, and build each protocol's quality tables."""
    cfg = stats or StatsConfig()
    runs = collect.load([Path(p) for p in runs_dirs], list(protocols) if protocols else None)
    groups, conflicts, repeated = collect.group_runs(runs)
    problems = [p for run in runs for p in collect.check_recorded_metrics(run)]
    blocks: list[Block] = []
    for protocol, members in _by_protocol(groups).items():
        blocks.extend(quality_blocks(protocol, members, [group_quality(g, cfg) for g in members], cfg))
        order = tables.order_accuracy_table(protocol, members)
        if order is not None:
            blocks.append(order)
    return Results(blocks, len(runs), conflicts, repeated, problems)


def _protocol_section(
    protocol: str,
    groups: list[collect.Group],
    cfg: StatsConfig,
    out: Path,
    doc: Document,
    figures: list[Path],
    other_machine: list[collect.Run],
) -> None:
    qualities = [group_quality(g, cfg) for g in groups]
    references, _ = references_for(protocol, groups)
    doc.add(*quality_blocks(protocol, groups, qualities, cfg))
    plot = recall_ci_plot(protocol, qualities, references, out)
    if plot is not None:
        figures.append(plot)
        doc.add(
            Figure(
                plot,
                f"{protocol}: R@1 per row with its 95% bootstrap CI over test queries; hollow "
                "diamonds: published R@1 for the same method (not ours).",
            )
        )
    for direction in collect.DIRECTIONS:
        comparisons, notes = all_comparisons(groups, direction, cfg)
        if comparisons or notes:
            doc.add(tables.comparison_table(protocol, direction, comparisons, notes))
    cross = cross_machine_table(protocol, groups, other_machine) if other_machine else None
    if cross is not None:
        doc.add(Heading(f"{protocol}: across machines", 3), cross)
    doc.add(Heading(f"{protocol}: temporal diagnostics", 3))
    order = tables.order_accuracy_table(protocol, groups)
    frame = tables.frame_order_table(protocol, groups)
    if order is None and frame is None:
        doc.add(
            Paragraph(
                "No order accuracy (the test set has no twins) and no eval_*.json with altered frame "
                "order: run `psbench eval RUN --reverse-frames` or `--shuffle-frames` to add one."
            )
        )
    doc.add(*(t for t in (order, frame) if t is not None))
    doc.add(*relation_blocks(protocol, groups, other_machine, cfg))
    curves = training_curves(protocol, groups, out)
    if curves is not None:
        figures.append(curves)
        doc.add(
            Heading(f"{protocol}: training curves", 3),
            Figure(
                curves,
                f"{protocol}: training loss per step (faint: raw mean over seeds; solid: moving "
                "average), and validation R@1 per epoch where the protocol selects on validation.",
            ),
        )


@dataclass
class Assembled:
    """The report content before rendering."""

    document: Document
    figures: list[Path]
    runs: int
    conflicts: list[collect.Conflict]
    problems: list[str]
    repeated_seeds: list[collect.RepeatedSeed] = field(default_factory=list)


def assemble(
    runs_dirs: Iterable[Path],
    out: Path,
    protocols: Iterable[str] | None = None,
    efficiency: Iterable[Path] = (),
    stats: StatsConfig | None = None,
    title: str = "psbench report",
    cross_machine: Iterable[Path] = (),
) -> Assembled:
    """Collect runs, compute every table and write the PNG figures into ``out``; render nothing yet.

    ``cross_machine``: runs of the same protocols made on another machine; they appear only in each
    protocol's "across machines" table, never in its rows.
    """
    cfg = stats or StatsConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dirs = [Path(p) for p in runs_dirs]
    protocols = list(protocols) if protocols else None
    runs = collect.load(runs_dirs, protocols)
    efficiency = [Path(p) for p in efficiency]
    if not runs and not efficiency:
        where = ", ".join(map(str, runs_dirs))
        wanted = f" for protocol(s) {', '.join(protocols)}" if protocols else ""
        raise FileNotFoundError(f"no finished runs (directories with metrics.json){wanted} under {where}")
    groups, conflicts, repeated = collect.group_runs(runs)
    other_machine = collect.load([Path(p) for p in cross_machine], protocols) if cross_machine else []
    problems = [p for run in runs for p in collect.check_recorded_metrics(run)]
    for problem in problems:
        log.warning(problem)
    doc = Document(title)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc.add(Paragraph(f"Generated {stamp} from {len(runs)} run(s) under {', '.join(map(str, runs_dirs))}."))
    doc.add(Heading("How to read this report", 2), _method_notes(cfg))
    if repeated:
        doc.add(
            Heading("Repeated seeds", 2),
            Paragraph(
                "WARNING: some rows were given the same seed more than once. A repeated seed is not an independent "
                "seed: each row counts it once (the first run directory) and the runs below are left out of every "
                "mean, std, CI and test."
            ),
            Bullets([r.message() for r in repeated]),
        )
    if conflicts:
        doc.add(Heading("Hash conflicts", 2), tables.conflict_table(conflicts))
    if problems:
        doc.add(Heading("Consistency problems", 2), Bullets(problems))
    figures: list[Path] = []
    by_protocol = _by_protocol(groups)
    for protocol, members in by_protocol.items():
        _protocol_section(protocol, members, cfg, out, doc, figures, other_machine)
    if efficiency:
        blocks = efficiency_blocks(efficiency, out)
        figures.extend(b.path for b in blocks if isinstance(b, Figure))
        doc.add(*blocks)
    if runs:
        doc.add(Heading("Provenance", 2))
        for protocol in by_protocol:
            protocol_runs = [r for r in runs if r.protocol == protocol]
            doc.add(tables.provenance_table(protocol, protocol_runs))
            doc.add(Paragraph(f"{protocol}: the exact command that produced each run (from config.json):"))
            doc.add(tables.commands_block(protocol_runs))
    return Assembled(doc, figures, len(runs), conflicts, problems, repeated)


def build_report(
    runs_dirs: Iterable[Path],
    out: Path,
    protocols: Iterable[str] | None = None,
    efficiency: Iterable[Path] = (),
    pdf: bool = True,
    stats: StatsConfig | None = None,
    title: str = "psbench report",
    cross_machine: Iterable[Path] = (),
) -> ReportResult:
    """Write ``report.md``, ``report.pdf`` (unless ``pdf`` is False) and the PNG figures into ``out``."""
    out = Path(out)
    content = assemble(runs_dirs, out, protocols, efficiency, stats, title, cross_machine)
    markdown_path = out / "report.md"
    atomic.write_text(markdown_path, render_markdown(content.document, out))
    pdf_path, pages = None, 0
    if pdf:
        from psbench.report.pdf import render_pdf

        pdf_path = out / "report.pdf"
        with atomic_path(pdf_path) as tmp:
            pages = render_pdf(content.document, tmp)
    log.info("report written to %s (%d runs, %d figures, %d PDF pages)", out, content.runs, len(content.figures), pages)
    return ReportResult(
        out,
        markdown_path,
        pdf_path,
        pages,
        content.figures,
        content.runs,
        [c.message() for c in content.conflicts],
        content.problems,
        [r.message() for r in content.repeated_seeds],
    )
