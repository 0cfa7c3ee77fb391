"""Issue 12's bad-input catalogue, end to end through the CLI.

Every case must stop with exit code 2 and ONE ``error:`` line naming the file / key / value, print no
traceback, and leave every finished run directory byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from psbench.cli import app
from psbench.protocol import load_protocol, resolve
from psbench.runs.runner import run
from tests.conftest import TINY_SETS, read_only_folder
from tests.paths import SHARED_ANNOTATIONS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: fixed garbage (random bytes could start like a pickle, or happen to look like an audio file to FFmpeg)
GARBAGE = b"GARBAGE!" + random.Random(0).randbytes(4088)
ZERO_SHOT = [f"--set={k}={v}" for k, v in {**TINY_SETS, "train.epochs": 0}.items()]


@dataclass
class Env:
    """Inputs shared by the cases: the tiny set, a finished run and a scratch folder."""

    data: Path
    runs: Path
    finished: Path
    scratch: Path


@pytest.fixture(scope="module")
def env(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    runs = tmp_path_factory.mktemp("catalogue_runs")
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**TINY_SETS, "train.epochs": 0})
    finished = run(cfg, runs, data_root=tiny_synthetic)
    return Env(tiny_synthetic, runs, finished, tmp_path_factory.mktemp("catalogue"))


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of the data set whose videos are hard links (replace one by unlinking it first)."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("*.csv", "*.json"))
    for item in src.iterdir():
        if item.is_file() and item.suffix in (".csv", ".json"):
            shutil.copy(item, dst / item.name)
    return dst


def _test_video(root: Path) -> Path:
    video_id = (root / "test.csv").read_text().splitlines()[1].split(",")[2]
    return root / "videos" / f"{video_id}.mp4"


def _run_args(root: Path, runs: Path, *extra: str) -> list[str]:
    return ["run", "--method", "meanpool", "--data-root", str(root), "--runs-dir", str(runs), *ZERO_SHOT, *extra]


# -- the cases: each builds its inputs under `tmp` and returns (argv, text the error line must contain) ----
def index_garbage(env: Env, tmp: Path) -> tuple[list[str], str]:
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(GARBAGE[:512])
    return ["index", "search", "--index", str(garbage), "-q", "a red circle"], f"{garbage} is not a psbench index"


def bench_unknown_protocol(env: Env, tmp: Path) -> tuple[list[str], str]:
    return ["bench", "--protocol", "nope", "--runs-dir", str(tmp / "runs")], "nope"


def bench_unknown_method(env: Env, tmp: Path) -> tuple[list[str], str]:
    return ["bench", "--methods", "foo", "--runs-dir", str(tmp / "runs")], "foo"


def report_out_is_a_file(env: Env, tmp: Path) -> tuple[list[str], str]:
    out = tmp / "existing.txt"
    out.write_text("keep me")
    return ["report", str(env.runs), "--out", str(out), "--no-pdf"], "existing.txt"


def synth_out_is_a_file(env: Env, tmp: Path) -> tuple[list[str], str]:
    out = tmp / "existing.txt"
    out.write_text("keep me")
    return ["data", "synth", "--out", str(out)], "existing.txt"


def bad_tie_rule(env: Env, tmp: Path) -> tuple[list[str], str]:
    return _run_args(env.data, tmp / "runs", "--set", "test.tie_rule=bogus"), "test.tie_rule"


def negative_epochs(env: Env, tmp: Path) -> tuple[list[str], str]:
    return _run_args(env.data, tmp / "runs", "--set", "train.epochs=-1"), "train.epochs"


def negative_lr(env: Env, tmp: Path) -> tuple[list[str], str]:
    return _run_args(env.data, tmp / "runs", "--set", "train.lr_clip=-1"), "train.lr_clip"


def zero_byte_video(env: Env, tmp: Path) -> tuple[list[str], str]:
    root = _linked_copy(env.data, tmp / "data")
    video = _test_video(root)
    video.unlink()
    video.write_bytes(b"")
    return _run_args(root, tmp / "runs"), f"empty video file (0 bytes): {video}"


def garbage_video(env: Env, tmp: Path) -> tuple[list[str], str]:
    root = _linked_copy(env.data, tmp / "data")
    video = _test_video(root)
    video.unlink()
    video.write_bytes(GARBAGE)
    return _run_args(root, tmp / "runs"), f"cannot open video (Invalid data found when processing input): {video}"


def garbage_video_through_workers(env: Env, tmp: Path) -> tuple[list[str], str]:
    """The same garbage video decoded in DataLoader worker processes (the default): the same one line."""
    argv, named = garbage_video(env, tmp)
    return [*argv, "--set=test.num_workers=2"], named


def malformed_annotation(env: Env, tmp: Path) -> tuple[list[str], str]:
    root = _linked_copy(env.data, tmp / "data")
    lines = (root / "test.csv").read_text().splitlines()
    lines.insert(2, "only,three,fields")
    (root / "test.csv").write_text("\n".join(lines) + "\n")
    return _run_args(root, tmp / "runs"), "test.csv line 3"


def truncated_lsmdc(env: Env, tmp: Path) -> tuple[list[str], str]:
    source = SHARED_ANNOTATIONS / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    root = tmp / "lsmdc"
    root.mkdir()
    (root / source.name).write_text("".join(source.read_text().splitlines(keepends=True)[:219]))
    argv = ["data", "verify", "--dataset", "lsmdc", "--root", str(root), "--split", "test"]
    return argv, f"{source.name}: split 'test' lists 219 video(s), expected 1000"


def wrong_shaped_weights(env: Env, tmp: Path) -> tuple[list[str], str]:
    from psbench.backbone.clip import create_clip

    state = create_clip("psbench-tiny").state_dict()
    state["positional_embedding"] = torch.randn(33, state["positional_embedding"].shape[1])
    weights = tmp / "wrong.pt"
    torch.save({"state_dict": state}, weights)
    return _run_args(env.data, tmp / "runs", "--weights", str(weights)), "positional_embedding has shape 33x64"


def read_only_verify(env: Env, tmp: Path) -> tuple[list[str], str]:
    argv = ["data", "verify", "--dataset", "synthetic", "--root", str(env.data), "--split", "test"]
    return argv, f"cannot write the manifest {env.data / 'manifest.json'}"


def bracketed_data_root(env: Env, tmp: Path) -> tuple[list[str], str]:
    """Square brackets in a path are printed literally (no rich markup)."""
    root = tmp / "data[x]"
    root.mkdir()
    return _run_args(root, tmp / "runs"), str(root)


def unknown_method(env: Env, tmp: Path) -> tuple[list[str], str]:
    argv = ["run", "--method", "nosuchmethod", "--data-root", str(env.data), "--runs-dir", str(tmp / "runs")]
    return argv, "nosuchmethod"


def seed_and_all_seeds(env: Env, tmp: Path) -> tuple[list[str], str]:
    return _run_args(env.data, tmp / "runs", "--seed", "0", "--all-seeds"), "--all-seeds"


def frames_the_method_cannot_take(env: Env, tmp: Path) -> tuple[list[str], str]:
    argv = _run_args(env.data, tmp / "runs", "--set=test.frames=7")
    return [a if a != "meanpool" else "promptswitch" for a in argv], "test.frames = 7: Prompt Switch needs"


CASES: list[Callable[[Env, Path], tuple[list[str], str]]] = [
    index_garbage,
    bench_unknown_protocol,
    bench_unknown_method,
    report_out_is_a_file,
    synth_out_is_a_file,
    bad_tie_rule,
    negative_epochs,
    negative_lr,
    zero_byte_video,
    garbage_video,
    garbage_video_through_workers,
    malformed_annotation,
    truncated_lsmdc,
    wrong_shaped_weights,
    read_only_verify,
    bracketed_data_root,
    unknown_method,
    seed_and_all_seeds,
    frames_the_method_cannot_take,
]


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_error_line_exit_2(
    case: Callable[[Env, Path], tuple[list[str], str]], env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, named = case(env, tmp_path)
    if case is read_only_verify:
        read_only_folder(monkeypatch, env.data)
    monkeypatch.chdir(tmp_path)  # nothing lands in the checkout
    before = _tree_hash(env.runs)
    result = CliRunner().invoke(app, argv, terminal_width=400)
    output = result.output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, (argv, output)
    assert len(errors) == 1, output
    assert named in errors[0], (named, errors[0])
    assert "Traceback" not in output
    assert "PyTorch 2.6" not in output and "No pretrained weights loaded" not in output  # no foreign boilerplate
    assert _tree_hash(env.runs) == before  # the finished run is untouched
    assert (env.finished / "metrics.json").is_file()
