"""Bad input stops a run with a message naming the file / line / step, or is skipped and counted when allowed."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from psbench.data.datasets import load_split
from psbench.data.paths import AnnotationError
from psbench.method import RetrievalMethod
from psbench.protocol import DataConfig, load_protocol, resolve
from psbench.runs.dirs import RunDirError
from psbench.runs.runner import run
from psbench.train.loop import NonFiniteLossError, TrainingDataError
from tests.conftest import TINY_SETS


@pytest.fixture(scope="module")
def corrupt_set(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the tiny set whose first training video is truncated to 300 bytes."""
    root = tmp_path_factory.mktemp("corrupt") / "synthetic"
    shutil.copytree(tiny_synthetic, root)
    video_id = (root / "train_list.csv").read_text().splitlines()[1].strip()
    path = root / "videos" / f"{video_id}.mp4"
    path.write_bytes(path.read_bytes()[:300])
    return root, video_id


def test_corrupt_training_video_fails_naming_the_file(corrupt_set: tuple[Path, str], tmp_path: Path) -> None:
    root, video_id = corrupt_set
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, TINY_SETS)
    with pytest.raises(TrainingDataError) as err:
        run(cfg, tmp_path, data_root=root)
    message = str(err.value)
    assert f"{video_id}.mp4" in message and "epoch 0, step" in message and "train.skip_corrupt" in message


@pytest.mark.slow  # a whole run through the runner
def test_corrupt_training_video_is_skipped_and_counted(corrupt_set: tuple[Path, str], tmp_path: Path) -> None:
    root, video_id = corrupt_set
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**TINY_SETS, "train.skip_corrupt": True})
    run_dir = run(cfg, tmp_path, data_root=root)
    skipped = json.loads((run_dir / "metrics.json").read_text())["train"]["skipped_corrupt_videos"]
    assert skipped["count"] == 1 and list(skipped["videos"]) == [video_id]
    assert f"{video_id}.mp4" in skipped["videos"][video_id]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["skipped_video"] for r in log if "skipped_video" in r] == [video_id]
    assert cfg.protocol_hash() != resolve(load_protocol("synthetic"), "meanpool", 0, TINY_SETS).protocol_hash()


@pytest.mark.slow  # a whole run through the runner
def test_nan_loss_names_step_batch_and_last_checkpoint(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RetrievalMethod.training_loss
    calls = {"n": 0}

    def nan_at_step_5(self: RetrievalMethod, batch):  # 4 steps per epoch: step 5 is in epoch 1
        out = real(self, batch)
        calls["n"] += 1
        if calls["n"] == 6:
            out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(RetrievalMethod, "training_loss", nan_at_step_5)
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**TINY_SETS, "train.epochs": 2})
    with pytest.raises(NonFiniteLossError) as err:
        run(cfg, tmp_path, data_root=tiny_synthetic)
    message = str(err.value)
    (run_dir,) = tmp_path.iterdir()
    assert "step 5 (epoch 1)" in message and f"last good checkpoint: {run_dir / 'checkpoint_last.pt'}" in message
    assert "batch video ids ['" in message
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["epoch"] == 0
    assert not (run_dir / "metrics.json").exists()


def _annotation_copy(tiny_synthetic: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("MSRVTT_data.json", "train_list.csv", "val.csv", "test.csv", "twins.json"):
        shutil.copy(tiny_synthetic / name, dest / name)
    return dest


def test_malformed_synthetic_annotation_names_file_and_line(tiny_synthetic: Path, tmp_path: Path) -> None:
    root = _annotation_copy(tiny_synthetic, tmp_path / "syn")
    lines = (root / "test.csv").read_text().splitlines()
    lines.insert(3, "only,three,fields")
    (root / "test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"test\.csv line 4: 3 field\(s\), expected 4"):
        load_split(DataConfig(dataset="synthetic"), root, "test")


def test_malformed_msrvtt_annotation_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr7020,video7020,a man sings\nret1,msr7021,video7021\n"
    )
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test\.csv line 3: 3 field"):
        load_split(DataConfig(dataset="msrvtt"), tmp_path, "test")
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\n\nvideo0\n")
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "video0", "caption": "a"}]}))
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv line 4: video id 'video0' already listed"):
        load_split(DataConfig(dataset="msrvtt"), tmp_path, "train")


def test_unusable_runs_dir_fails_before_training(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psbench.runs.runner as runner

    def never(*args, **kwargs):
        raise AssertionError("training started although the runs directory is unusable")

    monkeypatch.setattr(runner, "train", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, TINY_SETS)
    with pytest.raises(RunDirError, match=f"runs directory {blocker / 'runs'} is not usable"):
        run(cfg, blocker / "runs", data_root=tiny_synthetic)

    def disk_full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(RunDirError, match=r"runs directory .*full_disk is not usable: .*No space left on device"):
        run(cfg, tmp_path / "full_disk", data_root=tiny_synthetic)


def _wrong_shaped_weights(path: Path, text_rows: int = 33, visual_rows: int = 5) -> Path:
    """The tiny CLIP with a text positional embedding of ``text_rows`` and a visual one of ``visual_rows``."""
    from psbench.backbone.clip import create_clip

    state = create_clip("psbench-tiny").state_dict()
    state["positional_embedding"] = torch.randn(text_rows, state["positional_embedding"].shape[1])
    state["visual.positional_embedding"] = torch.randn(visual_rows, state["visual.positional_embedding"].shape[1])
    torch.save({"state_dict": state}, path)
    return path


def test_wrong_shaped_positional_embedding_is_an_error_naming_key_and_shapes(tmp_path: Path) -> None:
    from psbench.backbone.clip import WeightShapeError, create_clip

    text_only = _wrong_shaped_weights(tmp_path / "text.pt", text_rows=33, visual_rows=17)
    with pytest.raises(
        WeightShapeError, match=r"text\.pt.*positional_embedding has shape 33x64, the model expects 32x64"
    ):
        create_clip("psbench-tiny", text_only)
    visual_only = _wrong_shaped_weights(tmp_path / "visual.pt", text_rows=32, visual_rows=5)
    with pytest.raises(WeightShapeError, match=r"visual\.positional_embedding has shape 5x64, the model expects 17x64"):
        create_clip("psbench-tiny", visual_only)


def test_positional_embedding_interpolation_only_when_the_protocol_asks(
    tiny_synthetic: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "syn"
    shutil.copytree(tiny_synthetic, root, ignore=shutil.ignore_patterns("videos"))
    (root / "videos").symlink_to(tiny_synthetic / "videos")
    _wrong_shaped_weights(root / "tiny_clip.pt")
    sets = {**TINY_SETS, "train.epochs": 0}
    with pytest.raises(RuntimeError, match="positional_embedding has shape"):
        run(resolve(load_protocol("synthetic"), "meanpool", 0, sets), tmp_path / "runs", data_root=root)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.json"))
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**sets, "backbone.interpolate_pos_embed": True})
    assert cfg.protocol_hash() != resolve(load_protocol("synthetic"), "meanpool", 0, sets).protocol_hash()
    with caplog.at_level(logging.WARNING, logger="psbench"):
        run_dir = run(cfg, tmp_path / "runs", data_root=root)
    record = json.loads((run_dir / "config.json").read_text())
    assert record["weights_adjusted"] == [
        "positional_embedding 33x64 -> 32x64",
        "visual.positional_embedding 5x64 -> 17x64",
    ]
    assert sum("interpolated" in r.message and r.levelno == logging.WARNING for r in caplog.records) == 2


def _protocol_data(name: str):
    return resolve(load_protocol(name), "meanpool").data


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [("msrvtt-1ka", 1000), ("msvd", 670), ("lsmdc", 1000), ("lsmdc-999", 999)],
)
def test_real_protocols_accept_their_full_test_file(protocol: str, expected: int) -> None:
    from tests.paths import SHARED_ANNOTATIONS

    cfg = _protocol_data(protocol)
    root = SHARED_ANNOTATIONS / cfg.dataset
    if not root.is_dir():
        pytest.skip(f"shared annotations not found in {root}")
    assert cfg.test_videos == expected
    assert len(load_split(cfg, root, "test").video_ids) == expected


def test_truncated_lsmdc_test_file_is_an_error_naming_file_and_counts(tmp_path: Path) -> None:
    from psbench.data.datasets import SplitSizeError
    from tests.paths import SHARED_ANNOTATIONS

    source = SHARED_ANNOTATIONS / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    name = source.name
    (tmp_path / name).write_text("".join(source.read_text().splitlines(keepends=True)[:219]))
    for protocol, found, expected in (("lsmdc", 219, 1000), ("lsmdc-999", 218, 999)):  # 999 drops line 109
        with pytest.raises(
            SplitSizeError, match=rf"{name}: split 'test' lists {found} video\(s\), expected {expected}"
        ):
            load_split(_protocol_data(protocol), tmp_path, "test")


def test_truncated_synthetic_test_file_is_an_error(tiny_synthetic: Path, tmp_path: Path) -> None:
    from psbench.data.datasets import SplitSizeError

    root = _annotation_copy(tiny_synthetic, tmp_path / "syn")
    shutil.copy(tiny_synthetic / "synthetic_config.json", root / "synthetic_config.json")
    assert len(load_split(DataConfig(dataset="synthetic"), root, "test").video_ids) == 8
    lines = (root / "test.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    kept = {row.split(",")[2] for row in rows[:1]}  # one video and its twin stay
    twins = json.loads((root / "twins.json").read_text())
    kept |= {twins[v] for v in kept}
    (root / "test.csv").write_text("\n".join([header, *(r for r in rows if r.split(",")[2] in kept)]) + "\n")
    with pytest.raises(SplitSizeError, match=r"test\.csv: split 'test' lists 2 video\(s\), expected 8"):
        load_split(DataConfig(dataset="synthetic"), root, "test")


def test_missing_test_videos_allowed_by_the_protocol_are_counted_in_record_and_on_screen(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from psbench.cli import app

    root = _annotation_copy(tiny_synthetic, tmp_path / "syn")
    shutil.copy(tiny_synthetic / "synthetic_config.json", root / "synthetic_config.json")
    shutil.copytree(tiny_synthetic / "videos", root / "videos", copy_function=os.link)
    os.link(tiny_synthetic / "tiny_clip.pt", root / "tiny_clip.pt")
    gone = (root / "test.csv").read_text().splitlines()[1].split(",")[2]
    (root / "videos" / f"{gone}.mp4").unlink()
    sets = [f"--set={k}={v}" for k, v in {**TINY_SETS, "train.epochs": 0, "data.skip_missing": "true"}.items()]
    args = ["run", "--method", "meanpool", "--data-root", str(root), "--runs-dir", str(tmp_path / "runs"), *sets]
    result = CliRunner().invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "test videos: 7 of 8 evaluated (1 missing, data.skip_missing=true)" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_videos"] == {"expected": 8, "listed": 8, "evaluated": 7, "missing": 1}
    assert json.loads((run_dir / "config.json").read_text())["skipped_missing_videos"]["test"] == [gone]


def test_garbage_that_starts_like_a_pickle_is_a_format_error_not_a_trust_question(tmp_path: Path) -> None:
    import random
    import warnings

    from psbench.backbone.checkpoint import CheckpointFormatError, load_torch_file

    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x80" + random.Random(1).randbytes(600))  # 0x80 is the pickle PROTO opcode
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning about the bogus protocol number either
        with pytest.raises(CheckpointFormatError, match=r"noise\.pt is not a weights file: .*Unsupported operand"):
            load_torch_file(path)
