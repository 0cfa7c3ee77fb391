"""benchmarks/gpu_train_promptswitch.py runs on the CPU and writes its JSON (the GPU numbers come from an H200)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # times training steps of ViT-B/32 on the CPU

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_train_promptswitch.py"


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 1: loss" in proc.stderr
    return json.loads(out.read_text())


def _check(result: dict, batch: int) -> None:
    assert result["measured_steps"] == 1 and result["warmup_steps"] == 1 and result["steps_run"] == 2
    assert result["clips_per_second"] == pytest.approx(result["steps_per_second"] * batch)
    assert result["clips_per_second"] > 0 and result["peak_memory_bytes"] is None  # CPU: no CUDA memory counter
    assert len(result["losses_logged"]) == 2 and all(v == v for v in result["losses_logged"])  # finite, not NaN


def test_cpu_path_on_the_tiny_backbone(tmp_path: Path) -> None:
    args = ["--steps", "2", "--batch", "2", "--device", "cpu", "--arch", "psbench-tiny", "--resolution", "32"]
    _check(_run(tmp_path, *args), batch=2)


@pytest.mark.slow
def test_cpu_path_on_vit_b32(tmp_path: Path) -> None:
    """The exact CPU invocation of the GPU benchmark: ViT-B/32, 224 px, 6 frames (about a minute on 2 cores)."""
    result = _run(tmp_path, "--steps", "2", "--batch", "2", "--device", "cpu")
    _check(result, batch=2)
    assert result["arch"] == "ViT-B-32-quickgelu" and result["resolution"] == 224 and result["frames"] == 6
