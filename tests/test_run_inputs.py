"""Issue 12: clear reasons for bad weights / checkpoints / JSON, run records independent of the working
directory (checked overrides), and repeated seeds never counted as seeds."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from psbench.backbone.checkpoint import CheckpointFormatError, UntrustedCheckpointError, read_state_dict
from psbench.backbone.clip import BackboneError, create_clip, save_clip
from psbench.cli import app
from psbench.data.datasets import load_split
from psbench.data.paths import AnnotationError
from psbench.protocol import DataConfig, load_protocol, resolve
from psbench.report.build import assemble
from psbench.report.quality import StatsConfig
from psbench.runs.record import RunRecordError, open_run
from psbench.runs.runner import run
from tests.conftest import TINY_SETS
from tests.toys import make_run

ZERO_SHOT = {**TINY_SETS, "train.epochs": 0}


def _text(result) -> str:
    return " ".join(result.output.split())


def _names(result, *paths: Path) -> bool:
    """Every path appears in the output, however the console wrapped it (paths here contain no spaces)."""
    flat = "".join(result.output.split())
    return all(str(p) in flat for p in paths)


# -- item 9: reasons ---------------------------------------------------------------------------------------
def test_empty_weights_file_gives_a_reason(tmp_path: Path) -> None:
    for name in ("empty.pt", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(BackboneError, match=rf"{name} is empty \(0 bytes\), not a weights file"):
            create_clip("psbench-tiny", tmp_path / name)


def test_garbage_weights_file_is_not_called_pickled(tmp_path: Path) -> None:
    torch.manual_seed(0)
    for name, data in {
        "text.pt": b"this is not a checkpoint\n" * 40,
        "random.pt": bytes((i * 97 + 13) % 256 for i in range(4096)),
        "bad.safetensors": b"\xff" * 64,
    }.items():
        (tmp_path / name).write_bytes(data)
        for trust in (False, True):
            with pytest.raises(CheckpointFormatError) as err:
                read_state_dict(tmp_path / name, trust=trust)
            message = str(err.value)
            assert name in message and "pickled objects" not in message and "--trust-checkpoint" not in message


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    save_clip(create_clip("psbench-tiny"), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointFormatError, match=r"cut\.pt is not a readable weights file \(truncated"):
        read_state_dict(path)


def test_torch_refusal_is_quoted_whole(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        read_state_dict(path)
    message = str(err.value)
    reason = message.split("(", 1)[1].split(");", 1)[0]
    assert reason == "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default."
    assert "\x1b[" not in message


def test_json_errors_give_line_and_column(tiny_synthetic: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{\n  "config": {"a": "unterminated')
    expected = "config.json: invalid JSON: Unterminated string starting at line 2 column 19"
    with pytest.raises(RunRecordError, match=expected):
        open_run(run_dir)
    result = CliRunner().invoke(app, ["eval", str(run_dir)], terminal_width=400)
    assert result.exit_code == 2 and expected in _text(result)
    root = tmp_path / "ann"
    root.mkdir()
    (root / "captions_msvd.json").write_text('{"vid0": ["a dog"],\n "vid1": [oops]}')
    (root / "test_list.txt").write_text("vid0\n")
    with pytest.raises(
        AnnotationError, match=r"captions_msvd\.json: invalid JSON: Expecting value at line 2 column 11"
    ):
        load_split(DataConfig(dataset="msvd"), root, "test")


# -- item 13: run records independent of the working directory --------------------------------------------
@pytest.fixture()
def relative_run(tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread) -> Path:
    """A zero-shot run started from tmp_path/a with relative --data-root, --weights and --runs-dir."""
    start = tmp_path / "a"
    start.mkdir()
    monkeypatch.chdir(start)
    root = Path(os.path.relpath(tiny_synthetic, start))
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, ZERO_SHOT)
    run_dir = run(cfg, Path("runs"), data_root=root, weights=root / "tiny_clip.pt")
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return start / run_dir


def test_records_store_absolute_paths_and_eval_resume_work_elsewhere(relative_run: Path, tiny_synthetic: Path):
    record = json.loads((relative_run / "config.json").read_text())
    assert record["data_root"] == str(tiny_synthetic) and record["weights"] == str(tiny_synthetic / "tiny_clip.pt")
    cli = CliRunner()
    result = cli.invoke(app, ["eval", str(relative_run)], terminal_width=400)
    assert result.exit_code == 0, result.output
    metrics = json.loads((relative_run / "metrics.json").read_text())
    (relative_run / "metrics.json").unlink()  # an interrupted run, resumed from another directory
    resumed = cli.invoke(app, ["run", "--resume", str(relative_run)], terminal_width=400)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((relative_run / "metrics.json").read_text())["t2v"] == metrics["t2v"]


def test_overrides_are_checked_against_the_recorded_hashes(
    relative_run: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    cli = CliRunner()
    recorded = json.loads((relative_run / "config.json").read_text())["hashes"]
    moved = tmp_path / "moved" / "clip.pt"
    moved.parent.mkdir()
    shutil.copy(tiny_synthetic / "tiny_clip.pt", moved)
    ok = cli.invoke(app, ["eval", str(relative_run), "--weights", str(moved)], terminal_width=400)
    assert ok.exit_code == 0, ok.output

    other = tmp_path / "other_clip.pt"
    torch.manual_seed(1)
    save_clip(create_clip("psbench-tiny"), other)
    (relative_run / "metrics.json").unlink()
    for args in (["eval", str(relative_run)], ["run", "--resume", str(relative_run)]):
        bad = cli.invoke(app, [*args, "--weights", str(other)], terminal_width=400)
        text = _text(bad)
        assert bad.exit_code == 2, (args, bad.output)
        assert "differ from the weights the run used" in text and recorded["weights"][:12] in text, args
    assert not (relative_run / "metrics.json").exists()

    changed = tmp_path / "changed_data"
    shutil.copytree(tiny_synthetic, changed)
    lines = (changed / "test.csv").read_text().splitlines()
    (changed / "test.csv").write_text("\n".join([*lines[:-1], lines[-1] + " slowly"]) + "\n")
    for args in (["eval", str(relative_run)], ["run", "--resume", str(relative_run)]):
        bad = cli.invoke(app, [*args, "--data-root", str(changed)], terminal_width=400)
        text = _text(bad)
        assert bad.exit_code == 2, (args, bad.output)
        assert f"test-data hash recorded {recorded['test_data']}" in text and _names(bad, changed), args


def test_an_older_relative_record_names_the_flag(relative_run: Path, tiny_synthetic: Path) -> None:
    path = relative_run / "config.json"
    record = json.loads(path.read_text())
    record["data_root"] = "data/synthetic"
    path.write_text(json.dumps(record))
    cli = CliRunner()
    bad = cli.invoke(app, ["eval", str(relative_run)], terminal_width=400)
    assert bad.exit_code == 2 and "records data_root 'data/synthetic' relative" in _text(bad)
    assert "--data-root" in _text(bad)
    ok = cli.invoke(app, ["eval", str(relative_run), "--data-root", str(tiny_synthetic)], terminal_width=400)
    assert ok.exit_code == 0, ok.output


# -- item 4: repeated seeds --------------------------------------------------------------------------------
@pytest.fixture()
def repeated(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Seed 1 three times (three folders of runs, as when a benchmark is rerun into a new folder), and seed 2."""
    folders = [tmp_path / "runs" / f"copy{i}" for i in range(3)]
    dirs = [make_run(folder, "meanpool", 1, 6.0, "1111222233334444") for folder in folders]
    make_run(folders[0], "meanpool", 2, 5.0, "1111222233334444")
    return folders, dirs


def test_table_refuses_repeated_seeds_naming_the_runs(repeated: tuple[list[Path], list[Path]]) -> None:
    folders, dirs = repeated
    result = CliRunner().invoke(app, ["table", *map(str, folders)], terminal_width=2000)
    text = _text(result)
    assert result.exit_code == 2 and "repeated seeds" in text and "seed 1 appears in 3 runs" in text
    assert _names(result, *dirs)


def test_report_counts_a_repeated_seed_once_and_warns_in_a_section(
    repeated: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    folders, dirs = repeated
    content = assemble(folders, tmp_path / "out", stats=StatsConfig(resamples=200, permutations=200, seed=0))
    headings = [getattr(b, "text", None) for b in content.document.blocks]
    assert "Repeated seeds" in headings
    bullets = content.document.blocks[headings.index("Repeated seeds") + 2]
    (message,) = bullets.items
    assert "seed 1 appears in 3 runs (identical metrics)" in message
    assert all(str(d) in message for d in dirs)
    table = next(b for b in content.document.blocks if getattr(b, "title", "").endswith("text-to-video (t2v)"))
    (row,) = [r for r in table.rows if r.cells[0].startswith("meanpool")]
    assert row.cells[2] == "2"  # seeds 1 and 2, not 4 runs
    cli = CliRunner().invoke(app, ["report", *map(str, folders), "--out", str(tmp_path / "cli"), "--no-pdf"])
    assert cli.exit_code == 0 and "repeated seed, counted once" in _text(cli)
    assert "Repeated seeds" in (tmp_path / "cli" / "report.md").read_text()
