"""Resuming a killed run ends where an uninterrupted run ends; a crash while saving never corrupts a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from psbench.cli import app
from psbench.files import atomic
from psbench.protocol import load_protocol, resolve
from psbench.runs.runner import run
from psbench.train.loop import load_resume_state
from tests.conftest import TINY_SETS

pytestmark = pytest.mark.slow  # kills and resumes training runs in child processes

REPO = Path(__file__).resolve().parent.parent
SETS = {**TINY_SETS, "train.epochs": 3}


def _kill_after_first_checkpoint(data_root: Path, runs_dir: Path) -> Path:
    """Start `python -m psbench.cli run` and SIGKILL it as soon as checkpoint_last.pt exists."""
    sets = [f"--set={k}={v}" for k, v in SETS.items()]
    cmd = [sys.executable, "-m", "psbench.cli", "run", "--method", "meanpool", "--data-root", str(data_root)]
    proc = subprocess.Popen([*cmd, "--runs-dir", str(runs_dir), *sets], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not list(runs_dir.glob("*/checkpoint_last.pt")):
            if proc.poll() is not None:
                raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint within 120 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    (run_dir,) = runs_dir.iterdir()
    return run_dir


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_synthetic: Path, tmp_path: Path) -> None:
    killed = _kill_after_first_checkpoint(tiny_synthetic, tmp_path / "killed")
    assert not (killed / "metrics.json").exists()
    epoch_at_kill = load_resume_state(killed / "checkpoint_last.pt")["epoch"]
    assert epoch_at_kill < SETS["train.epochs"] - 1, "the run finished training before it was killed"

    result = CliRunner().invoke(app, ["run", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    resumed = json.loads((killed / "metrics.json").read_text())

    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, SETS)
    reference_dir = run(cfg, tmp_path / "reference", data_root=tiny_synthetic)
    reference = json.loads((reference_dir / "metrics.json").read_text())
    for key in ("t2v", "v2t", "order_accuracy"):
        assert resumed[key] == reference[key], key  # exact, not approximate
    assert resumed["train"]["resumed_from_epoch"] == epoch_at_kill
    assert [h["mean_loss"] for h in resumed["train"]["history"]] == [
        h["mean_loss"] for h in reference["train"]["history"]
    ]
    a = load_resume_state(killed / "checkpoint_last.pt")["model"]
    b = load_resume_state(reference_dir / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)  # bit for bit on CPU

    log = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    markers = [r["resumed"] for r in log if "resumed" in r]
    assert markers == [{"from_checkpoint_epoch": epoch_at_kill, "step": markers[0]["step"]}]
    print(f"killed after epoch {epoch_at_kill}; resumed metrics t2v {resumed['t2v']} == reference")

    again = CliRunner().invoke(app, ["run", "--resume", str(killed)])
    message = " ".join(again.output.split())
    assert again.exit_code == 2 and "finished run" in message and "metrics.json" in message


def test_resume_refuses_a_missing_run_and_mixed_options(tmp_path: Path) -> None:
    mixed = CliRunner().invoke(app, ["run", "--resume", str(tmp_path), "--method", "meanpool"])
    assert mixed.exit_code == 2 and "--resume" in mixed.output
    missing = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a run directory" in " ".join(missing.output.split())


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint_last.pt"
    atomic.torch_save({"epoch": 0, "w": torch.arange(10.0)}, path)
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):  # writes half a file (atomic.torch_save passes an open file), then dies
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        atomic.torch_save({"epoch": 1, "w": torch.zeros(10)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # the temp file is gone
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 0 and torch.equal(state["w"], torch.arange(10.0))


@pytest.mark.parametrize("where", ["fsync", "torch.save"])
def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path: Path, where: str) -> None:
    """A real SIGKILL while the new checkpoint is half written (torch.save) or written but not renamed (fsync)."""
    path = tmp_path / "checkpoint_last.pt"
    atomic.torch_save({"epoch": 0, "w": torch.arange(1000.0)}, path)
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from pathlib import Path
        from psbench.files import atomic as runs
        real_save = torch.save
        def die(*args, **kwargs):
            if {where!r} == "torch.save":
                real_save(*args, **kwargs)
                f = args[1]; f.flush(); f.truncate(os.fstat(f.fileno()).st_size // 2); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if {where!r} == "fsync":
            runs.os.fsync = die
        else:
            torch.save = die
        runs.torch_save({{"epoch": 1, "w": torch.zeros(1000)}}, Path({str(path)!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "checkpoint_last.pt")
    assert len(leftovers) == 1 and ".partial" in leftovers[0]  # the killed write stays a temp file
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 0 and torch.equal(state["w"], torch.arange(1000.0))
    os.remove(tmp_path / leftovers[0])
