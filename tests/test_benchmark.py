"""The benchmark is resumable: a finished (method, seed, protocol hash) is never redone."""

from __future__ import annotations

from pathlib import Path

from psbench.files import atomic
from psbench.protocol import RunConfig
from psbench.runs.benchmark import PlannedRun, plan, run_benchmark
from psbench.runs.dirs import create_run_dir


def _fake_run(runs_dir: Path, calls: list[str]):
    def run_one(cfg: RunConfig) -> Path:
        calls.append(f"{cfg.method}:{cfg.seed}:{cfg.train.epochs}")
        d = create_run_dir(runs_dir, cfg.protocol, cfg.method, cfg.seed)
        atomic.write_json(
            d / "metrics.json", {"method": cfg.method, "seed": cfg.seed, "hashes": {"protocol": cfg.protocol_hash()}}
        )
        return d

    return run_one


def test_benchmark_skips_finished_runs(tmp_path: Path):
    planned = plan("synthetic", ("meanpool", "xpool"), [0, 1])
    assert [p.label for p in planned][0] == "meanpool s0 [train.epochs=0]"
    calls: list[str] = []
    first = run_benchmark("synthetic", tmp_path, _fake_run(tmp_path, calls), planned)
    assert len(calls) == 5 and len(set(first)) == 5
    second = run_benchmark("synthetic", tmp_path, _fake_run(tmp_path, calls), planned)
    assert len(calls) == 5 and second == first  # nothing redone
    # a changed setting is a different protocol hash: that run is done, the finished one is kept
    changed = [PlannedRun("xpool", 0, (("train.epochs", 1),))]
    third = run_benchmark("synthetic", tmp_path, _fake_run(tmp_path, calls), changed)
    assert calls[-1] == "xpool:0:1" and len(calls) == 6 and third[0] not in first
