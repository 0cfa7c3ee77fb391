"""``psbench table`` and ``psbench report``: finished runs as the report's tables on the terminal, and as the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from psbench.cli import _common as policy


@policy.guarded
def table(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run directories or folders of runs.")] = None,
    protocol: Annotated[
        list[str] | None, typer.Option("--protocol", "-p", help="Only these protocol(s) (repeatable).")
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.", min=100)] = 2000,
) -> None:
    """Print the report's quality tables of finished runs: mean ± std over distinct seeds and a bootstrap CI.

    Rows are grouped exactly as in `psbench report`: runs with a different protocol hash, test data or CLIP
    weights (sha256) are separate rows; a seed repeated within a row is an error naming the run directories.
    Example: `psbench table runs/`
    """
    print_results(runs or [Path("runs")], protocol, resamples)


def print_results(runs: list[Path], protocols: list[str] | None = None, resamples: int = 2000) -> None:
    """The results tables of ``psbench table`` (also printed at the end of ``psbench bench``)."""
    from psbench.report.build import results_tables
    from psbench.report.quality import StatsConfig
    from psbench.report.terminal import render_terminal

    results = results_tables(runs, protocols, StatsConfig(resamples=resamples))
    if not results.runs:
        policy.fail("no finished runs found" + (f" for protocol(s) {', '.join(protocols)}" if protocols else ""))
    if results.repeated_seeds:
        policy.fail(
            "repeated seeds: a row's seeds must be distinct (remove or move the extra run directories): "
            + "; ".join(r.message() for r in results.repeated_seeds)
        )
    render_terminal(results.blocks, policy.console)
    for conflict in results.conflicts:
        policy.print_note("hash conflict, split into separate rows", conflict.message())
    for problem in results.problems:
        policy.print_note("consistency", problem)


REPORT_HELP = (
    "Write a Markdown + PDF comparison of finished runs (and optional efficiency results).\n\n"
    "Per protocol: R@1/5/10, MdR, MnR (t2v and v2t) as mean ± std over seeds with a 95% bootstrap CI over test "
    "queries; published numbers as separate rows; paired tests against meanpool and promptswitch (sign-flip "
    "permutation on R@1, Wilcoxon on ranks); order accuracy and frame-order drops; training curves; provenance "
    "with the exact command of every run.\n\n"
    "Runs of one protocol and method whose protocol or test-data hash differ are never merged: they become "
    "separate, labelled rows, and the report and this command name the hashes and run directories.\n\n"
    "Example: `psbench report runs/ --out reports/synthetic --protocol synthetic --efficiency "
    "results/gpu/efficiency.json` writes reports/synthetic/report.md, report.pdf and the PNG figures the "
    "Markdown links to."
)


def register(app: typer.Typer) -> None:
    """Add ``table`` and ``report`` to ``app``."""
    app.command("table", rich_help_panel="Results")(table)

    @app.command("report", help=REPORT_HELP, rich_help_panel="Results")
    @policy.guarded
    def report(
        runs: Annotated[
            list[Path] | None, typer.Argument(help="Run directories or folders of runs (default: runs/).")
        ] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("reports/latest"),
        protocol: Annotated[
            list[str] | None, typer.Option("--protocol", "-p", help="Only these protocol(s) (repeatable).")
        ] = None,
        efficiency: Annotated[
            list[Path] | None,
            typer.Option("--efficiency", "-e", help="efficiency.json or its directory (repeatable)."),
        ] = None,
        cross_machine: Annotated[
            list[Path] | None,
            typer.Option(
                "--cross-machine",
                help="Runs of the same protocol made on another machine (repeatable): shown beside this "
                "report's numbers in an 'across machines' table, never merged into its rows.",
            ),
        ] = None,
        pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also render report.pdf.")] = True,
        resamples: Annotated[int, typer.Option(help="Bootstrap resamples for CIs.", min=100)] = 2000,
        permutations: Annotated[int, typer.Option(help="Sign-flip permutations per test.", min=100)] = 5000,
        seed: Annotated[int, typer.Option(help="Seed of the resampling.")] = 0,
        title: Annotated[str, typer.Option(help="Report title.")] = "psbench report",
    ) -> None:
        from psbench.report import StatsConfig, build_report

        policy.check_output_dir(out, "--out")  # before any run is read
        policy.on_interrupt(lambda: f"the report in {out} may be incomplete; rerun the same command")
        result = build_report(
            runs or [Path("runs")],
            out,
            protocol,
            efficiency or [],
            pdf,
            StatsConfig(resamples=resamples, permutations=permutations, seed=seed),
            title,
            cross_machine or [],
        )
        for message in result.conflicts:
            policy.print_note("hash conflict, split into separate rows", message)
        for message in result.repeated_seeds:
            policy.print_note("repeated seed, counted once", message)
        for problem in result.problems:
            policy.print_note("consistency", problem)
        policy.print_line(f"{result.runs} run(s) -> {result.markdown}")
        if result.pdf is not None:
            policy.print_line(f"{result.pdf} ({result.pdf_pages} pages), {len(result.figures)} figure(s)")
