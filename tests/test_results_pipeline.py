"""One results pipeline: ``psbench table`` and ``psbench efficiency`` print the report's own tables, and the
score-neutral config keys have one home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from psbench.cli import app
from psbench.protocol import SCORE_NEUTRAL_KEYS, load_protocol, resolve
from psbench.report.build import assemble, results_tables
from psbench.report.document import Table
from psbench.report.quality import StatsConfig
from psbench.report.terminal import render_terminal
from tests.toys import make_run

FAST = StatsConfig(resamples=200, permutations=200, seed=0)


def _quality_tables(blocks: list) -> list[Table]:
    return [b for b in blocks if isinstance(b, Table) and b.title.endswith(("(t2v)", "(v2t)"))]


def test_table_prints_the_reports_quality_tables_cell_for_cell(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run(runs, "meanpool", seed, 6.0, "1111222233334444", order_accuracy=50.0)
        make_run(runs, "promptswitch", seed, 1.5, "5555666677778888", order_accuracy=65.0)
    report = _quality_tables(assemble([runs], tmp_path / "report", stats=StatsConfig(resamples=2000)).document.blocks)
    terminal = _quality_tables(results_tables([runs]).blocks)
    assert [t.title for t in terminal] == [t.title for t in report] and len(report) == 2
    assert [[r.cells for r in t.rows] for t in terminal] == [[r.cells for r in t.rows] for t in report]
    result = CliRunner().invoke(app, ["table", str(runs)], terminal_width=250)
    assert result.exit_code == 0, result.output
    for table in report:
        assert table.title in result.output
        for row in table.rows:
            for cell in row.cells:
                for line in cell.split("\n"):
                    assert line in result.output, line
    assert "order accuracy" in result.output and "65.0" in result.output


def test_terminal_renderer_keeps_every_line_of_a_cell_and_the_notes() -> None:
    from psbench.report.document import Heading, Paragraph, Row

    table = Table("t [x]", ["a", "b"], [Row(["one\ntwo", "[bold]3[/bold]"]), Row(["pub", "4"], "published")], ["n1"])
    for markup in (True, False):  # the CLI's console has markup off; the content never depends on it
        console = Console(width=120, record=True, color_system=None, markup=markup)
        render_terminal([Heading("H"), Paragraph("p [red]"), table], console)
        text = console.export_text()
        for piece in ("H", "p [red]", "t [x]", "one", "two", "[bold]3[/bold]", "pub", "n1"):
            assert piece in text, piece  # markup in the content is printed literally


def test_score_neutral_keys_are_what_the_hash_ignores() -> None:
    base = resolve(load_protocol("synthetic"), "meanpool", 0, {})
    neutral = {
        "data.root": "/elsewhere",
        "data.skip_missing": True,
        "train.num_workers": 0,
        "test.num_workers": 0,
        "backbone.weights": "/other.pt",
    }
    assert set(neutral) <= set(SCORE_NEUTRAL_KEYS)
    moved = resolve(load_protocol("synthetic"), "meanpool", 3, neutral)
    assert moved.protocol_hash() == base.protocol_hash()
    assert (
        resolve(load_protocol("synthetic"), "meanpool", 0, {"train.lr_new": 5e-4}).protocol_hash()
        != base.protocol_hash()
    )


def test_report_labels_ignore_the_score_neutral_keys(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "meanpool", 0, 6.0, "1111222233334444", sets={"train.num_workers": 0, "train.lr_new": 1e-3})
    make_run(runs, "meanpool", 1, 6.0, "9999aaaabbbbcccc", sets={"train.num_workers": 1, "train.lr_new": 2e-3})
    (table, _) = _quality_tables(assemble([runs], tmp_path / "out", stats=FAST).document.blocks)
    labels = sorted(r.cells[0] for r in table.rows)
    assert labels == ["meanpool\ntrain.lr_new=0.001", "meanpool\ntrain.lr_new=0.002"]


TINY_EFFICIENCY = [
    "efficiency",
    "--methods",
    "xpool,promptswitch",
    "--arch",
    "psbench-tiny",
    "--frames",
    "6",
    "--queries",
    "4",
    "--gallery",
    "300",
    "--budget-s",
    "5",
    "--repeats",
    "1",
    "--text-queries",
    "2",
    "-k",
    "5",
]


@pytest.mark.usefixtures("one_torch_thread")
def test_efficiency_set_reaches_config_fields_and_method_options(tmp_path: Path) -> None:
    out = tmp_path / "eff"
    sets = ["--set", "offline_repeats=1", "--set", "block_videos=100", "--set", "options.xpool.num_heads=2"]
    result = CliRunner().invoke(app, [*TINY_EFFICIENCY, *sets, "--out", str(out)], terminal_width=250)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "efficiency.json").read_text())["config"]
    assert config["offline_repeats"] == 1 and config["block_videos"] == 100
    assert config["options"] == {"xpool": {"num_heads": 2}}
    for title in ("Cost per stage", "FLOPs, fvcore vs closed form", "Online latency per query vs gallery size"):
        assert title in result.output, title  # the report's own tables


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("nosuch=1", "--set nosuch"),
        ("queries=many", "--set queries: expected an integer"),
        ("options.xpool.nosuch=1", "nosuch"),
        ("options.meanpool.x=1", "'meanpool' is not measured"),
        ("options.xpool=1", "options.METHOD.OPTION"),
    ],
)
def test_efficiency_set_rejects_bad_keys_before_measuring(bad: str, named: str, tmp_path: Path) -> None:
    out = tmp_path / "eff"
    result = CliRunner().invoke(app, [*TINY_EFFICIENCY, "--set", bad, "--out", str(out)], terminal_width=250)
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert not (out / "efficiency.json").exists()
