"""Two runs with the same seed give identical metrics and weights on CPU; --deterministic is applied and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from psbench.cli import app
from psbench.protocol import load_protocol, resolve
from psbench.runs.runner import run
from tests.conftest import TINY_SETS

pytestmark = pytest.mark.slow  # trains the same run twice end to end


def test_same_seed_same_metrics_and_weights(tiny_synthetic: Path, tmp_path: Path) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    sets = [f"--set={k}={v}" for k, v in TINY_SETS.items()]
    args = ["run", "--method", "promptswitch", "--data-root", str(tiny_synthetic), "--deterministic"]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "a"), *sets])
    assert result.exit_code == 0, result.output
    (first,) = (tmp_path / "a").iterdir()
    cfg = resolve(load_protocol("synthetic"), "promptswitch", 0, TINY_SETS)
    second = run(cfg, tmp_path / "b", data_root=tiny_synthetic, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() == before  # restored after the run

    record = json.loads((first / "config.json").read_text())["determinism"]
    assert record["deterministic"] and record["use_deterministic_algorithms"] and record["cudnn_deterministic"]
    assert record["cudnn_benchmark"] is False and record["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    for key in ("t2v", "v2t", "order_accuracy"):
        assert a[key] == b[key], key
    assert a["train"]["history"] == b["train"]["history"]
    wa, wb = (torch.load(d / "checkpoint_last.pt", weights_only=True)["model"] for d in (first, second))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    print(f"two seeded runs: t2v {a['t2v']}, loss history {[h['mean_loss'] for h in a['train']['history']]}")
