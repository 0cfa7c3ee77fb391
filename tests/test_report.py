"""`psbench report` on a fixture of structurally real run directories (random per-query ranks)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from psbench.files import atomic
from psbench.report import StatsConfig, build_report
from psbench.report.build import assemble
from psbench.report.document import Table
from tests.toys import TEST_HASH, make_run

FAST = StatsConfig(resamples=300, permutations=500, seed=0)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1):
        make_run(root, "meanpool", seed, 6.0, "1111222233334444", order_accuracy=50.0)
        make_run(root, "promptswitch", seed, 1.5, "5555666677778888", order_accuracy=60.0 + 10 * seed)
    # Same protocol and method, different protocol hash (a --set variant): must not be merged.
    make_run(root, "meanpool", 2, 6.0, "9999aaaabbbbcccc", sets={"options.variant": 1})
    return root


def _table(doc, title_part: str) -> Table:
    return next(b for b in doc.blocks if isinstance(b, Table) and title_part in b.title)


def _sample_mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _metric(run_dir: Path, direction: str, key: str) -> float:
    return json.loads((run_dir / "metrics.json").read_text())[direction][key]


def test_table_cells_are_mean_std_over_seeds_with_a_ci(runs: Path, tmp_path: Path):
    content = assemble([runs], tmp_path / "out", stats=FAST)
    table = _table(content.document, "text-to-video (t2v)")
    rows = {r.cells[-1].split("\n")[0]: r for r in table.rows if r.style == ""}  # by protocol hash prefix
    row = rows["11112222"]
    assert row.cells[0].startswith("meanpool\n")  # split from the variant: labelled by what differs
    assert row.cells[2] == "2"  # seeds
    for col, key in ((3, "R1"), (7, "MnR")):
        seed_dirs = sorted(runs.glob("*_meanpool_s[01]"))
        values = [_metric(d, "t2v", key) for d in seed_dirs]
        mean, std = _sample_mean_std(values)
        first, ci = row.cells[col].split("\n")
        assert first == f"{mean:.1f} ± {std:.1f}"
        low, high = (float(x) for x in ci.strip("[]").split(", "))
        assert low <= round(mean, 1) + 0.05 and round(mean, 1) - 0.05 <= high  # R@K / MnR: the CI's point = mean
    ps = rows["55556666"]
    ps_r1 = [_metric(d, "t2v", "R1") for d in sorted(runs.glob("*_promptswitch_s*"))]
    assert ps.cells[3].startswith("{:.1f} ± {:.1f}".format(*_sample_mean_std(ps_r1)))
    # The single-seed variant row shows its value without a std.
    variant = rows["9999aaaa"]
    assert variant.cells[2] == "1" and "±" not in variant.cells[3] and "options.variant=1" in variant.cells[0]
    # Published rows from the protocol file would sit below a separator; synthetic has none, so no section row.
    assert all(r.style != "published" for r in table.rows)


def test_mismatched_hash_is_split_and_named(runs: Path, tmp_path: Path):
    content = assemble([runs], tmp_path / "out", stats=FAST)
    assert len(content.conflicts) == 1
    message = content.conflicts[0].message()
    assert "1111222233334444" in message and "9999aaaabbbbcccc" in message
    assert all(d.name in message for d in runs.glob("*_meanpool_*"))
    labels = [r.cells[0] for r in _table(content.document, "text-to-video (t2v)").rows]
    meanpool_rows = [label for label in labels if label.startswith("meanpool")]
    assert len(meanpool_rows) == 2 and len(set(meanpool_rows)) == 2
    assert any("options.variant" in label for label in meanpool_rows)  # labelled by what differs
    conflict = _table(content.document, "Hash conflicts")
    assert {r.cells[1] for r in conflict.rows} == {"1111222233334444", "9999aaaabbbbcccc"}


def test_paired_tests_only_on_the_same_test_data(tmp_path: Path, runs: Path):
    make_run(runs, "xpool", 0, 3.0, "dddd000011112222", test_hash="ffff0000ffff0000")
    content = assemble([runs], tmp_path / "out", stats=FAST)
    table = _table(content.document, "paired tests, text-to-video")
    pairs = [(r.cells[0].split("\n")[0], r.cells[1].split("\n")[0]) for r in table.rows]
    assert ("promptswitch", next(b for a, b in pairs if a == "promptswitch")) in pairs
    assert not any(a.startswith("xpool") for a, _ in pairs)
    assert any("xpool" in note and "not tested" in note for note in table.notes)
    ps_vs_mp = next(r for r in table.rows if r.cells[0].startswith("promptswitch"))
    assert "sign-flip" in table.columns[4] and "Wilcoxon" in table.columns[6]
    assert float(ps_vs_mp.cells[3].split("\n")[0].replace("−", "-")) > 0  # promptswitch ranks are much better


@pytest.mark.slow  # renders a PDF
def test_report_files_markdown_and_multipage_pdf(runs: Path, tmp_path: Path):
    out = tmp_path / "report"
    result = build_report([runs], out, stats=FAST)
    markdown = result.markdown.read_text()
    for figure in result.figures:
        assert figure.is_file() and f"]({figure.name})" in markdown  # relative links
    assert "9999aaaabbbbcccc" in markdown and "psbench run --method promptswitch" in markdown
    assert "order accuracy" in markdown
    data = result.pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", data))
    assert pages == result.pdf_pages >= 2
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-r", "20", "-png", str(result.pdf), str(tmp_path / "pg")], check=True)
        assert len(list(tmp_path.glob("pg-*.png"))) == pages


def test_frame_order_table_reports_drops(runs: Path, tmp_path: Path):
    run_dir = next(runs.glob("*_promptswitch_s0"))
    own = json.loads((run_dir / "metrics.json").read_text())
    altered = {
        **own,
        "frame_order": "reverse",
        "t2v": {**own["t2v"], "R1": own["t2v"]["R1"] - 5.0},
        "order_accuracy": 50.0,
    }
    atomic.write_json(run_dir / "eval_20260101T000000_000000Z.json", altered)
    content = assemble([runs], tmp_path / "out", stats=FAST)
    table = _table(content.document, "frame-order test")
    (row,) = table.rows
    assert row.cells[2] == "reverse"
    assert row.cells[3].endswith("(−5.0)")
    assert row.cells[-1] == "60.0 → 50.0\n(−10.0)"


def test_efficiency_section_separates_measured_and_extrapolated(runs: Path, tmp_path: Path):
    point = {"gallery": 1000, "status": "measured", "latency_per_query_s": {"median": 2e-6}, "peak_memory_bytes": 2**20}
    extra = {"gallery": 10**6, "status": "extrapolated", "latency_per_query_s": {"median": 2e-3, "extrapolated": True}}
    stage = {
        "offline": {"latency_s": {"median": 0.005}, "flops_closed_form": 1e11, "bytes_per_video": 1024},
        "text": {"latency_per_query_s": 4e-5, "flops_per_query_closed_form": 6e9},
        "online": {"flops_per_pair_closed_form": 1024.0},
        "points": [point, extra],
    }
    eff = {
        "kind": "psbench-efficiency",
        "config": {"arch": "ViT-B-32", "device": "cpu", "dtype": "fp32", "frames": 12, "queries": 1000, "k": 10},
        "environment": {"device_name": "cpu"},
        "methods": {"meanpool": stage},
    }
    atomic.write_json(tmp_path / "eff" / "efficiency.json", eff)
    content = assemble([runs], tmp_path / "out", efficiency=[tmp_path / "eff"], stats=FAST)
    latency = _table(content.document, "Online latency per query")
    assert latency.rows[0].cells[1].startswith("2 µs") and "extrapolated" in latency.rows[0].cells[2]
    assert (tmp_path / "out" / "efficiency_0.png").is_file()


def test_cli_report_command(runs: Path, tmp_path: Path):
    from psbench.cli.results import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    cli = CliRunner()
    assert "Example" in cli.invoke(app, ["report", "--help"]).output
    out = tmp_path / "cli"
    result = cli.invoke(
        app, ["report", str(runs), "--out", str(out), "--no-pdf", "--resamples", "200", "--permutations", "200"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file() and not (out / "report.pdf").exists()
    missing = cli.invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(out)])
    assert missing.exit_code == 2


def test_different_test_data_with_same_protocol_hash_is_split(runs: Path, tmp_path: Path):
    make_run(runs, "promptswitch", 2, 1.5, "5555666677778888", test_hash="eeee9999eeee9999")
    content = assemble([runs], tmp_path / "out", stats=FAST)
    conflict = next(c for c in content.conflicts if c.method == "promptswitch")
    assert {dh for _, dh, _, _ in conflict.groups} == {TEST_HASH, "eeee9999eeee9999"}
    labels = [
        r.cells[0]
        for r in _table(content.document, "text-to-video (t2v)").rows
        if r.cells[0].startswith("promptswitch")
    ]
    assert sorted(labels) == ["promptswitch\ntest data aaaa1111", "promptswitch\ntest data eeee9999"]


@pytest.mark.slow  # renders a PDF
def test_pdf_tables_fit_the_page_and_split_over_pages(tmp_path: Path):
    from psbench.report.document import Document, Row
    from psbench.report.pdf import BODY_W, layout_table, render_pdf

    long_name = "promptswitch-" + "very-long-variant-name-" * 4
    rows = [
        Row([f"{long_name}{i}", "trained (5 ep)", *["12.3 ± 0.4\n[11.0, 13.5]"] * 5, "0123456789abcdef"])
        for i in range(60)
    ]
    table = Table("long", ["method", "kind", "R1", "R5", "R10", "MdR", "MnR", "hash"], rows)
    layout = layout_table(table)
    assert layout.total() <= BODY_W and layout.widths[0] < len(long_name)  # the long name column wraps
    pages = render_pdf(Document("t", [table]), tmp_path / "t.pdf")
    assert pages >= 3


def test_xpool_ratio_table_has_a_column_per_cell() -> None:
    """Both X-Pool forms (and a result from before the folded form): every row fills every column."""
    from psbench.report.efficiency import ratio_table

    row = {"gallery": 1000, "promptswitch_s_per_query": 1e-5, "status": "measured"}
    ref = [{**row, "xpool_s_per_query": 2e-3, "ratio": 200.0}]
    folded = [{**row, "xpool-folded_s_per_query": 1e-4, "ratio": 10.0}]
    config = {"arch": "ViT-B-32", "device": "cpu", "dtype": "fp32", "frames": 12, "queries": 1000, "k": 10}
    for data in (
        {"xpool_vs_promptswitch": ref},
        {"xpool_vs_promptswitch": ref, "xpool_folded_vs_promptswitch": folded},
    ):
        table = ratio_table({**data, "config": config, "environment": {}})
        assert table is not None and all(len(r.cells) == len(table.columns) for r in table.rows), table.columns
    assert ratio_table({"config": config, "environment": {}}) is None
