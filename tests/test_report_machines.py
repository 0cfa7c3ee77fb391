"""The report names the machine behind its numbers and compares runs made on another machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from psbench.report.build import assemble
from psbench.report.document import Paragraph, Table
from psbench.report.machines import machine_label
from psbench.runs.dirs import cpu_kernels
from tests.test_report import FAST
from tests.toys import make_run


def _set_machine(run_dir: Path, name: str, aten: str, overrides: dict[str, str]) -> None:
    env_path = run_dir / "environment.json"
    env = json.loads(env_path.read_text())
    env.update(device_name=name, cpu_kernels={"aten": aten, "overrides": overrides})
    env_path.write_text(json.dumps(env))


def _two_machines(tmp_path: Path) -> tuple[Path, Path]:
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    for root, scale_shift, aten, overrides in ((machine_a, 0.0, "AVX512", {}), (machine_b, 0.7, "AVX2", {"X": "1"})):
        for seed in (0, 1):
            for method, scale in (("meanpool", 6.0), ("promptswitch", 1.5), ("promptswitch-noswitch", 2.0)):
                run = make_run(root, method, seed, scale + scale_shift, f"{len(method):04d}111122223333")
                _set_machine(run, "Test CPU", aten, overrides)
    return machine_a, machine_b


def test_machine_label_names_the_cpu_and_its_kernels():
    env = {"device": "cpu", "device_name": "AMD EPYC", "cpu_kernels": {"aten": "AVX2", "overrides": {"A": "b"}}}
    assert machine_label(env) == "AMD EPYC · torch CPU kernels AVX2, A=b"
    assert machine_label({"device": "cuda:0", "device_name": "NVIDIA H200"}) == "NVIDIA H200"
    assert machine_label({}) == "unknown machine"


def test_recorded_kernels_follow_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_kernels()["overrides"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert "ONEDNN_MAX_CPU_ISA" not in cpu_kernels()["overrides"]


def test_report_names_the_machine_and_shows_the_other_machine_beside_it(tmp_path: Path):
    machine_a, machine_b = _two_machines(tmp_path)
    content = assemble([machine_a], tmp_path / "out", stats=FAST, cross_machine=[machine_b])
    paragraphs = [b.text for b in content.document.blocks if isinstance(b, Paragraph)]
    assert any("produced on Test CPU · torch CPU kernels AVX512 (6 runs)" in p for p in paragraphs)
    table = next(b for b in content.document.blocks if isinstance(b, Table) and "another machine" in b.title)
    assert len(table.rows) == 3  # every row of machine A has its counterpart on B
    # rows on B never join the main table (2 seeds per row, not 4)
    main = next(b for b in content.document.blocks if isinstance(b, Table) and "(t2v)" in b.title)
    assert all(row.cells[2] == "2" for row in main.rows if row.style == "")
    meanpool = next(r for r in table.rows if r.cells[0] == "meanpool")
    a_cell, b_cell, delta = meanpool.cells[3].split("\n")
    r1 = {
        m: [json.loads(p.read_text())["t2v"]["R1"] for p in sorted(root.glob("*_meanpool_*/metrics.json"))]
        for m, root in (("a", machine_a), ("b", machine_b))
    }
    expected = sum(r1["b"]) / 2 - sum(r1["a"]) / 2
    assert float(delta.replace("−", "-")) == pytest.approx(expected, abs=0.051)
    assert any("promptswitch − promptswitch-noswitch" in note for note in table.notes)


def test_report_without_a_second_machine_has_no_cross_machine_table(tmp_path: Path):
    machine_a, _ = _two_machines(tmp_path)
    content = assemble([machine_a], tmp_path / "out", stats=FAST)
    assert not any(isinstance(b, Table) and "another machine" in b.title for b in content.document.blocks)
