"""The whole pipeline on a tiny synthetic set: run directory contents, re-evaluation, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from psbench.cli import app
from psbench.protocol import load_protocol, resolve
from psbench.runs.runner import run
from tests.conftest import TINY_SETS

pytestmark = pytest.mark.slow  # trains and evaluates runs end to end through the runner and the CLI


def test_run_writes_complete_record_and_reevaluates(tiny_synthetic: Path, tmp_path: Path):
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, TINY_SETS)
    run_dir = run(cfg, tmp_path / "runs", data_root=tiny_synthetic)
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "environment.json", "metrics.json", "ranks.json", "train_log.jsonl"} <= names
    assert "checkpoint_last.pt" in names
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["method"] == "meanpool"
    assert metrics["num_videos"] == 8 and 0 <= metrics["t2v"]["R1"] <= 100
    assert 0 <= metrics["order_accuracy"] <= 100
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hashes"]["protocol"] == cfg.protocol_hash()
    env = json.loads((run_dir / "environment.json").read_text())
    assert {"python", "torch", "open_clip", "git", "cpu_fp32_inference_products", "cpu_native_bf16"} <= set(env)
    assert env["device_name"]  # the CPU model where /proc/cpuinfo has one
    ranks = json.loads((run_dir / "ranks.json").read_text())
    assert len(ranks["t2v"]["greater"]) == metrics["num_queries"]

    from psbench.runs.reevaluate import reevaluate

    again = json.loads(reevaluate(run_dir, None, "cpu").read_text())
    assert again["t2v"] == pytest.approx(metrics["t2v"]) and again["v2t"] == pytest.approx(metrics["v2t"])


def test_mean_pool_order_accuracy_is_exactly_chance(tiny_synthetic: Path, tmp_path: Path):
    """Mean pooling sees a video and its reversed twin as the same frame set: every twin pair ties."""
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**TINY_SETS, "train.epochs": 0})
    metrics = json.loads((run(cfg, tmp_path, data_root=tiny_synthetic) / "metrics.json").read_text())
    assert metrics["order_accuracy"] == 50.0


def test_mean_pool_under_reversed_frames_reports_no_change(tiny_synthetic: Path, tmp_path: Path):
    """`eval --reverse-frames` of an order-blind mean-pool: rounding between twins is no effect (issue 12)."""
    from psbench.runs.reevaluate import reevaluate

    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**TINY_SETS, "train.epochs": 0})
    run_dir = run(cfg, tmp_path, data_root=tiny_synthetic)
    kept = json.loads(reevaluate(run_dir, None, "cpu").read_text())
    reversed_ = json.loads(reevaluate(run_dir, None, "cpu", frame_order="reverse").read_text())
    assert reversed_["frame_order"] == "reverse"
    assert reversed_["t2v"] == kept["t2v"] and reversed_["v2t"] == kept["v2t"]
    assert reversed_["order_accuracy"] == kept["order_accuracy"] == 50.0


def test_cli_run_and_table(tiny_synthetic: Path, tmp_path: Path):
    sets = [f"--set={k}={v}" for k, v in TINY_SETS.items()]
    args = ["run", "--method", "promptswitch", "--dataset", "synthetic", "--data-root", str(tiny_synthetic)]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path), *sets])
    assert result.exit_code == 0, result.output
    assert "order accuracy" in result.output
    table = CliRunner().invoke(app, ["table", str(tmp_path)])
    assert table.exit_code == 0 and "promptswitch" in table.output


def test_cli_unknown_method_lists_valid_names(tmp_path: Path):
    result = CliRunner().invoke(app, ["run", "--method", "nosuchmethod", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nosuchmethod" in result.output and "meanpool" in result.output and "promptswitch" in result.output


def test_missing_weights_named(tiny_synthetic: Path, tmp_path: Path):
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, TINY_SETS)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        run(cfg, tmp_path, data_root=tiny_synthetic, weights=tmp_path / "nope.pt")
    assert not any(tmp_path.iterdir())  # nothing created before the inputs are checked


def test_real_dataset_without_data_or_weights_names_what_is_missing(tmp_path: Path):
    cfg = resolve(load_protocol("lsmdc"), "promptswitch", 0, {})
    with pytest.raises(FileNotFoundError) as info:
        run(cfg, tmp_path / "runs", data_root=tmp_path / "no-lsmdc")
    message = str(info.value)
    assert "no-lsmdc" in message and "--weights" in message and "annotation" in message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
