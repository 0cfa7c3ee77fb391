"""A run knows its weights (sha256 in config.json, part of a row's identity) and every command opens a run one way."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from psbench.backbone.checkpoint import UntrustedCheckpointError
from psbench.backbone.clip import create_clip, save_clip, tokenizer_vocab_path
from psbench.cli import app
from psbench.files import filehash
from psbench.protocol import load_protocol, resolve
from psbench.report.build import assemble
from psbench.report.quality import StatsConfig
from psbench.runs.record import RunRecordError, open_run
from psbench.runs.reevaluate import reevaluate
from psbench.runs.runner import run
from tests.conftest import TINY_SETS

FAST = StatsConfig(resamples=200, permutations=200, seed=0)
ZERO_SHOT = {**TINY_SETS, "train.epochs": 0}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny CLIP (another random init): same architecture, different bytes."""
    path = tmp_path_factory.mktemp("weights") / "other_clip.pt"
    torch.manual_seed(1)
    save_clip(create_clip("psbench-tiny"), path)
    return path


def _zero_shot(data_root: Path, runs_dir: Path, weights: Path | None = None, method: str = "meanpool") -> Path:
    cfg = resolve(load_protocol("synthetic"), method, 0, ZERO_SHOT)
    return run(cfg, runs_dir, data_root=data_root, weights=weights)


def test_config_records_weights_and_vocabulary_sha256(tiny_synthetic: Path, tmp_path: Path, one_torch_thread) -> None:
    run_dir = _zero_shot(tiny_synthetic, tmp_path / "runs")
    record = json.loads((run_dir / "config.json").read_text())
    weights = tiny_synthetic / "tiny_clip.pt"
    assert record["weights"] == str(weights) and Path(record["weights"]).is_absolute()
    assert record["hashes"]["weights"] == _sha256(weights)
    assert record["hashes"]["tokenizer_vocab"] == _sha256(tokenizer_vocab_path())
    assert record["tokenizer_vocab"] == str(tokenizer_vocab_path())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["hashes"] == record["hashes"]


def test_weights_are_hashed_once_per_run_not_per_eval(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread
) -> None:
    filehash.clear_cache()
    hashed: list[Path] = []
    real = filehash._digest

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(filehash, "_digest", counting)
    run_dir = _zero_shot(tiny_synthetic, tmp_path / "runs")
    assert len(hashed) == 2  # the weights file and the tokenizer vocabulary, once each
    reevaluate(run_dir, None, "cpu")
    reevaluate(run_dir, None, "cpu")
    assert len(hashed) == 2  # cached by (path, size, mtime): evaluating again never re-reads the file


def test_file_sha256_streams_and_notices_a_changed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filehash, "CHUNK_BYTES", 7)  # many chunks, a short last one
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(range(256)) * 3)
    assert filehash.file_sha256(path) == _sha256(path)
    stat = path.stat()
    path.write_bytes(bytes(reversed(range(256))) * 3)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert filehash.file_sha256(path) == _sha256(path)


def test_runs_with_different_weights_are_two_rows(
    tiny_synthetic: Path, tmp_path: Path, other_weights: Path, one_torch_thread
) -> None:
    runs = tmp_path / "runs"
    a = _zero_shot(tiny_synthetic, runs)
    b = _zero_shot(tiny_synthetic, runs, weights=other_weights)
    ha, hb = (json.loads((d / "config.json").read_text())["hashes"] for d in (a, b))
    assert ha["protocol"] == hb["protocol"] and ha["test_data"] == hb["test_data"] and ha["weights"] != hb["weights"]

    # psbench table: two rows, each with its weights hash, seeds 1 (not "seeds 2" of one merged row)
    result = CliRunner().invoke(app, ["table", str(runs)], terminal_width=250)
    assert result.exit_code == 0, result.output
    t2v_table = result.output.split("text-to-video (t2v)")[1].split("video-to-text (v2t)")[0]
    rows = [line for line in t2v_table.splitlines() if line.startswith("│ meanpool ")]
    assert len(rows) == 2 and all("│     1 │" in r for r in rows)
    assert all(f"weights {h['weights'][:8]}" in t2v_table for h in (ha, hb))  # each row labelled by its weights

    # psbench report: two rows, labelled by their weights, named as a split
    content = assemble([runs], tmp_path / "report", stats=FAST)
    (t2v,) = [b for b in content.document.blocks if getattr(b, "title", "").endswith("text-to-video (t2v)")]
    labels = sorted(r.cells[0] for r in t2v.rows if r.cells[0].startswith("meanpool"))
    assert labels == sorted(f"meanpool\nweights {h['weights'][:8]}" for h in (ha, hb))
    assert all(r.cells[-1].split("\n")[2] in (ha["weights"][:8], hb["weights"][:8]) for r in t2v.rows)
    (conflict,) = content.conflicts
    assert {w for _, _, w, _ in conflict.groups} == {ha["weights"], hb["weights"]}


def test_rows_with_different_weights_are_never_paired(
    tiny_synthetic: Path, tmp_path: Path, other_weights: Path, one_torch_thread
) -> None:
    runs = tmp_path / "runs"
    _zero_shot(tiny_synthetic, runs)  # meanpool on the default weights
    _zero_shot(tiny_synthetic, runs, weights=other_weights, method="xpool")
    content = assemble([runs], tmp_path / "report", stats=FAST)
    tables = [b for b in content.document.blocks if "paired tests" in getattr(b, "title", "")]
    for table in tables:
        assert not table.rows
        assert any("xpool" in note and "not tested" in note for note in table.notes)


# -- one way to open a run -------------------------------------------------------------------------------
class _Extra:
    """Stands for any non-tensor object a foreign or older checkpoint writer pickled."""


@pytest.fixture(scope="module")
def pickled_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run whose checkpoint holds a pickled object other than tensors."""
    torch.set_num_threads(1)
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, TINY_SETS)
    run_dir = run(cfg, tmp_path_factory.mktemp("runs"), data_root=tiny_synthetic)
    for name in ("checkpoint_last.pt", "model_selected.pt"):
        path = run_dir / name
        if path.is_file():
            ckpt = torch.load(path, weights_only=True)
            ckpt["args"] = argparse.Namespace(lr=1e-4)
            torch.save(ckpt, path)
    return run_dir


@pytest.mark.slow  # runs, evaluates, indexes and resumes end to end
def test_one_trust_rule_for_eval_index_and_resume(pickled_run: Path, tmp_path: Path) -> None:
    ckpt = open_run(pickled_run).selected_checkpoint
    assert ckpt is not None
    with pytest.raises(UntrustedCheckpointError) as refused:
        open_run(pickled_run).load_model_state()
    message = str(refused.value)
    assert str(ckpt) in message and "--trust-checkpoint" in message
    assert "argparse.Namespace was not an allowed global by default." in message  # torch's reason, whole

    cli = CliRunner()
    index = tmp_path / "index.pt"
    commands = {
        "eval": ["eval", str(pickled_run)],
        "index build": ["index", "build", "--run", str(pickled_run), "--videos", "test", "--out", str(index)],
    }
    for name, args in commands.items():
        result = cli.invoke(app, args, terminal_width=400)
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (name, result.output)
        assert "holds pickled objects other than tensors" in text and "--trust-checkpoint" in text, name
        trusted = cli.invoke(app, [*args, "--trust-checkpoint"], terminal_width=400)
        assert trusted.exit_code == 0, (name, trusted.output)
    assert index.is_file()
    searched = cli.invoke(app, ["index", "search", "--index", str(index), "-q", "a red circle", "--trust-checkpoint"])
    assert searched.exit_code == 0, searched.output

    # resume reads checkpoint_last.pt under the same rule
    (pickled_run / "metrics.json").rename(tmp_path / "metrics.json")
    refused_resume = cli.invoke(app, ["run", "--resume", str(pickled_run)], terminal_width=400)
    assert refused_resume.exit_code == 2 and "--trust-checkpoint" in " ".join(refused_resume.output.split())
    assert not (pickled_run / "metrics.json").exists()
    resumed = cli.invoke(app, ["run", "--resume", str(pickled_run), "--trust-checkpoint"], terminal_width=400)
    assert resumed.exit_code == 0, resumed.output


def test_one_error_for_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunRecordError, match="is not a run directory"):
        open_run(tmp_path)
    cli = CliRunner()
    for args in (
        ["eval", str(tmp_path)],
        ["run", "--resume", str(tmp_path)],
        ["index", "build", "--run", str(tmp_path), "--videos", "test", "--out", str(tmp_path / "i.pt")],
    ):
        result = cli.invoke(app, args, terminal_width=400)
        flat = "".join(result.output.split())  # however the console wrapped the path
        assert result.exit_code == 2 and f"{tmp_path}isnotarundirectory(hasnoconfig.json)" in flat, args


def test_benchmark_never_reuses_a_run_on_other_weights(tmp_path: Path) -> None:
    from psbench.files import atomic
    from psbench.runs.benchmark import PlannedRun, run_benchmark
    from psbench.runs.dirs import create_run_dir

    calls: list[str] = []

    def fake(weights: str):
        def run_one(cfg) -> Path:  # noqa: ANN001
            calls.append(weights)
            d = create_run_dir(tmp_path, cfg.protocol, cfg.method, cfg.seed)
            hashes = {"protocol": cfg.protocol_hash(), "weights": weights}
            atomic.write_json(d / "metrics.json", {"method": cfg.method, "seed": cfg.seed, "hashes": hashes})
            return d

        return run_one

    planned = [PlannedRun("meanpool", 0, (("train.epochs", 0),))]
    first = run_benchmark("synthetic", tmp_path, fake("aaaa"), planned, weights_of=lambda cfg: "aaaa")
    again = run_benchmark("synthetic", tmp_path, fake("aaaa"), planned, weights_of=lambda cfg: "aaaa")
    assert calls == ["aaaa"] and again == first  # same weights: the finished run is reused
    other = run_benchmark("synthetic", tmp_path, fake("bbbb"), planned, weights_of=lambda cfg: "bbbb")
    assert calls == ["aaaa", "bbbb"] and other != first  # other weights: run again, never reused
