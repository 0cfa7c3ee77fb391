"""``psbench table`` and ``psbench report``: finished runs as the terminal table and as the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from psbench.cli import _common as policy


@policy.guarded
def table(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run directories or folders of runs.")] = None,
) -> None:
    """Print the results of finished runs: mean ± std over distinct seeds per protocol, method and inputs.

    Runs with a different protocol hash, test data or CLIP weights (sha256) are separate rows; a seed repeated
    within a row is an error naming the run directories. Example: `psbench table runs/`
    """
    print_results(runs or [Path("runs")])


def print_results(runs: list[Path]) -> None:
    """The results table of ``psbench table`` (also printed at the end of ``psbench bench``)."""
    from psbench.runs.summary import format_cell, load_runs, summarize

    df = summarize(load_runs(runs))
    if df.empty:
        policy.fail("no finished runs found")
    for (protocol, phash), group in df.groupby(["protocol", "protocol_hash"], sort=False):
        t = Table(title=f"{protocol} (protocol hash {phash})")
        t.add_column("method")
        t.add_column("test data")
        t.add_column("weights")
        t.add_column("epochs", justify="right")
        t.add_column("seeds", justify="right")
        for d in ("t2v", "v2t"):
            for k in ("R1", "R5", "R10", "MdR", "MnR"):
                t.add_column(f"{d} {k}", justify="right")
        t.add_column("order acc.", justify="right")
        for _, row in group.iterrows():
            hashes = [str(row["test_data_hash"])[:8], str(row["weights_hash"])[:8]]
            cells = [row["method"], *hashes, str(row["epochs"]), str(row["seeds"])]
            for d in ("t2v", "v2t"):
                for k in ("R1", "R5", "R10", "MdR", "MnR"):
                    cells.append(format_cell(row[f"{d}_{k}"], row[f"{d}_{k}_std"], row["seeds"]))
            cells.append(format_cell(row["order_accuracy"], row["order_accuracy_std"], row["seeds"]))
            t.add_row(*cells)
        policy.console.print(t)


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
