"""Untrusted files: weights load without running code unless trusted; annotation ids cannot leave the data root."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from psbench.backbone.checkpoint import UntrustedCheckpointError, read_state_dict
from psbench.backbone.clip import BackboneError, create_clip
from psbench.cli import app
from psbench.data.datasets import load_split
from psbench.data.paths import AnnotationError
from psbench.protocol import DataConfig

MARKER = Path("/tmp/psbench_untrusted_marker_should_never_exist")


class _Payload:
    """Unpickling this runs ``Path.touch`` on MARKER: the code execution a weights-only load must prevent."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone().contiguous() for k, v in create_clip("psbench-tiny").state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_pickled_object_is_refused_without_running_it(tmp_path: Path, tiny_state) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_state, "extra": _Payload()}, path)
    with pytest.raises(BackboneError) as err:
        create_clip("psbench-tiny", path)
    assert str(path) in str(err.value) and "--trust-checkpoint" in str(err.value)
    assert "arbitrary code" in str(err.value)
    assert not MARKER.exists()


def test_trusted_pickle_loads(tmp_path: Path, tiny_state) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": tiny_state, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(UntrustedCheckpointError, match="with_args.pt holds pickled objects"):
        read_state_dict(path)
    assert _same(create_clip("psbench-tiny", path, trust_checkpoint=True), tiny_state)


def _torchscript_like_openai(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose state_dict has the given names plus OpenAI's non-parameter entries."""
    root = nn.Module()
    for name, value in {**state, "input_resolution": torch.tensor(32), "vocab_size": torch.tensor(49408)}.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), str(path))


def test_torchscript_archive_needs_trust_then_loads_via_jit(tmp_path: Path, tiny_state) -> None:
    small = tmp_path / "small_ts.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(small))
    with pytest.raises(BackboneError, match=r"small_ts\.pt is a TorchScript archive; pass --trust-checkpoint"):
        create_clip("psbench-tiny", small)
    path = tmp_path / "clip_ts.pt"
    _torchscript_like_openai(tiny_state, path)
    with pytest.raises(BackboneError, match="TorchScript archive"):
        create_clip("psbench-tiny", path)
    assert _same(create_clip("psbench-tiny", path, trust_checkpoint=True), tiny_state)


def test_safetensors_and_plain_state_dicts_load_without_trust(tmp_path: Path, tiny_state) -> None:
    save_file(tiny_state, str(tmp_path / "clip.safetensors"))
    assert _same(create_clip("psbench-tiny", tmp_path / "clip.safetensors"), tiny_state)
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, tmp_path / "ddp.pt")
    assert _same(create_clip("psbench-tiny", tmp_path / "ddp.pt"), tiny_state)


def test_cli_help_explains_the_trust_flag_and_the_refusal(tiny_synthetic: Path, tmp_path: Path, tiny_state) -> None:
    for command in ("run", "eval"):
        text = " ".join(CliRunner().invoke(app, [command, "--help"], terminal_width=200).output.split())
        assert "--trust-checkpoint" in text and "arbitrary code" in text, command
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_state, "extra": _Payload()}, path)
    args = ["run", "--method", "meanpool", "--weights", str(path), "--runs-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, [*args, "--set", "train.epochs=0", "--data-root", str(tiny_synthetic)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "refusing to load CLIP weights" in message and "--trust-checkpoint" in message
    assert not MARKER.exists() and not (tmp_path / "runs").exists()  # refused before a run directory exists


# -- video ids from annotation files -----------------------------------------------------------------------
EVIL_ID = "../../x"


def test_msrvtt_test_and_train_reject_escaping_ids(tmp_path: Path) -> None:
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(f"key,vid_key,video_id,sentence\nr0,m0,{EVIL_ID},a dog\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test\.csv line 2: video id '\.\./\.\./x'"):
        load_split(DataConfig(dataset="msrvtt"), tmp_path, "test")
    (tmp_path / "MSRVTT_train.9k.csv").write_text(f"video_id\nvideo0\n{EVIL_ID}\n")
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": EVIL_ID, "caption": "a"}]}))
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv line 3: video id '\.\./\.\./x'"):
        load_split(DataConfig(dataset="msrvtt"), tmp_path, "train")


def test_msvd_and_lsmdc_reject_escaping_ids(tmp_path: Path) -> None:
    (tmp_path / "captions_msvd.json").write_text(json.dumps({EVIL_ID: ["a dog"]}))
    (tmp_path / "test_list.txt").write_text(f"vid0\n{EVIL_ID}\n")
    with pytest.raises(AnnotationError, match=r"test_list\.txt line 2: video id '\.\./\.\./x'"):
        load_split(DataConfig(dataset="msvd"), tmp_path, "test")
    (tmp_path / "LSMDC16_challenge_1000_publictect.csv").write_text(f"{EVIL_ID}\t0\t1\t0\t1\tsomeone runs\n")
    with pytest.raises(AnnotationError, match=r"publictect\.csv line 1: video id '\.\./\.\./x'"):
        load_split(DataConfig(dataset="lsmdc"), tmp_path, "test")


def test_synthetic_rejects_escaping_ids(tiny_synthetic: Path, tmp_path: Path) -> None:
    root = tmp_path / "syn"
    root.mkdir()
    for name in ("MSRVTT_data.json", "train_list.csv", "test.csv", "twins.json"):
        shutil.copy(tiny_synthetic / name, root / name)
    with (root / "test.csv").open("a") as f:
        f.write(f"r99,m99,{EVIL_ID},a red circle appears\n")
    with pytest.raises(AnnotationError, match=r"test\.csv line \d+: video id '\.\./\.\./x'"):
        load_split(DataConfig(dataset="synthetic"), root, "test")
