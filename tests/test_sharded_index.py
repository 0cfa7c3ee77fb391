"""Sharded, disk-backed index: exact search per storage dtype, crash + resume, named errors, two gloo ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.cli import app
from psbench.protocol import load_protocol, resolve
from psbench.retrieval import engine
from psbench.retrieval.index import load_index, search, search_sharded
from psbench.retrieval.sharded_index import (
    MANIFEST,
    STORAGE_DTYPES,
    ShardedIndexError,
    open_sharded_index,
    random_shard_source,
    write_sharded_index,
)
from psbench.runs.indexing import load_run_method
from psbench.runs.runner import run
from tests.conftest import TINY_SETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parent.parent
N, D = 1000, 32


def _meanpool() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_method("meanpool", create_clip("psbench-tiny")).eval()


def _queries(q: int = 9) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"text": torch.nn.functional.normalize(torch.randn(q, D, generator=gen), dim=-1)}  # (Q, D)


def _hashes(root: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((root / MANIFEST).read_text())["shards"]]


@pytest.mark.parametrize("storage", sorted(STORAGE_DTYPES))
def test_search_equals_in_memory_topk(tmp_path: Path, storage: str) -> None:
    source = random_shard_source(D, seed=3)
    index = write_sharded_index(tmp_path / "idx", "meanpool", N, source, "fp", storage, shard_size=230)
    assert [s["stop"] - s["start"] for s in index.shards] == [230, 230, 230, 230, 80]
    method, text = _meanpool(), _queries()
    scores, indices = index.topk(method, text, k=10, read_rows=64)  # blocks straddle nothing: 4 per shard
    values = source(0, N)["video"]  # (N, D) float32
    rounded = {"video": values.to(STORAGE_DTYPES[storage]).float()}  # the values the index stores, upcast
    expected = engine.topk(method, text, rounded, 10)
    assert torch.equal(scores, expected[0]) and torch.equal(indices, expected[1])
    if storage == "fp32":  # exactly the in-memory search of the original values
        assert torch.equal(indices, engine.topk(method, text, {"video": values}, 10)[1])
    assert index.video_ids([0, 999]) == ["v0000000", "v0000999"]


def test_multi_key_method_xpool_matches_in_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = create_method("xpool", create_clip("psbench-tiny")).eval()
    with torch.inference_mode():
        video = method.encode_video(torch.randn(30, 4, 3, 32, 32), torch.ones(30, 4, dtype=torch.bool))
        text = method.encode_text(torch.randint(1, 100, (5, 32)))
    index = write_sharded_index(
        tmp_path / "x", "xpool", 30, lambda a, b: engine.slice_encoded(video, a, b), "fp", shard_size=9
    )
    assert len(index.shards) == 4
    got = index.topk(method, text, k=6, read_rows=3)
    # X-Pool's scores depend in the last bits on the block shape: the in-memory oracle uses the same blocks
    expected = engine.topk(method, text, video, 6, block_videos=3)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


SLOW_BUILD = """
import sys, time
from psbench.retrieval.sharded_index import random_shard_source, write_sharded_index
source = random_shard_source(32, seed=5)
def slow(start, stop):
    if start > 0:
        time.sleep(0.4)
    return source(start, stop)
write_sharded_index(sys.argv[1], "meanpool", 2000, slow, "fp", "fp16", shard_size=200)
"""


@pytest.mark.slow  # spawns processes
def test_killed_build_resumes_to_bit_identical_index(tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(killed)], cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (killed / MANIFEST).is_file() and len(_hashes(killed)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = _hashes(killed)
    assert 2 <= len(done) < 10, "the build must be killed midway"
    with pytest.raises(ShardedIndexError, match="incomplete"):
        open_sharded_index(killed).topk(_meanpool(), _queries(), 5)
    first = (killed / "shard-00000.safetensors").stat().st_mtime_ns
    source = random_shard_source(32, seed=5)
    resumed = write_sharded_index(killed, "meanpool", 2000, source, "fp", "fp16", shard_size=200)
    assert (killed / "shard-00000.safetensors").stat().st_mtime_ns == first  # kept, not rewritten
    write_sharded_index(clean, "meanpool", 2000, source, "fp", "fp16", shard_size=200)
    assert _hashes(killed)[: len(done)] == done and _hashes(killed) == _hashes(clean) and len(resumed.shards) == 10
    for entry in resumed.shards:
        assert (killed / entry["file"]).read_bytes() == (clean / entry["file"]).read_bytes()
    assert not list(killed.glob(".*.tmp"))
    with pytest.raises(ShardedIndexError, match="other settings .*storage_dtype"):
        write_sharded_index(killed, "meanpool", 2000, source, "fp", "bf16", shard_size=200)


@pytest.mark.slow  # spawns processes
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    index = write_sharded_index(tmp_path / "idx", "meanpool", N, random_shard_source(D), "fp", "fp16", 130)
    assert len(index.shards) == 8
    text = _queries(11)
    torch.save(text, tmp_path / "q.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(REPO / "tests" / "sharded_index_worker.py"), str(tmp_path / "idx"), str(tmp_path / "q.pt")]
    cmd += [str(tmp_path / "out.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    scores, indices = index.topk(_meanpool(), text, k=7, read_rows=50)
    assert torch.equal(got["scores"], scores) and torch.equal(got["indices"], indices)


# -- through the CLI, with a run's model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sharded_cli")
    cfg = resolve(load_protocol("synthetic"), "meanpool", 0, {**TINY_SETS, "train.epochs": 0})
    run_dir = run(cfg, tmp / "runs", data_root=tiny_synthetic)
    cli = CliRunner()
    paths = {"run": run_dir, "pt": tmp / "index.pt", "fp32": tmp / "fp32", "fp16": tmp / "fp16"}
    args = ["index", "build", "--run", str(run_dir), "--videos", "test"]
    for out, extra in ((paths["pt"], []), (paths["fp32"], ["--shard-size", "3"])):
        result = cli.invoke(app, [*args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    result = cli.invoke(app, [*args, "--out", str(paths["fp16"]), "--shard-size", "3", "--storage", "fp16"])
    assert result.exit_code == 0 and "fp16, 3 shards" in result.output, result.output
    return paths


QUERIES = ["a red circle appears", "a blue square moves left"]


def _search(index: Path, *extra: str) -> object:
    args = ["index", "search", "--index", str(index), "-k", "4"]
    for q in QUERIES:
        args += ["-q", q]
    return CliRunner().invoke(app, [*args, *extra], terminal_width=400)


def test_cli_sharded_search_equals_single_file_search(built: dict[str, Path]) -> None:
    method, _, _ = load_run_method(built["run"])
    single = search(load_index(built["pt"]), method, QUERIES, 4)
    sharded = search_sharded(open_sharded_index(built["fp32"]), method, QUERIES, 4)
    assert torch.equal(single.scores, sharded.scores) and single.ids == sharded.ids
    a, b = _search(built["pt"]), _search(built["fp32"])
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert "synth" in a.stdout and a.stdout == b.stdout


def _damage(built: dict[str, Path], tmp_path: Path, how: str) -> tuple[Path, str]:
    root = tmp_path / how
    shutil.copytree(built["fp16"], root)
    shard = root / "shard-00001.safetensors"
    if how == "corrupted":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
        return root, f"shard {shard} changed since it was written"
    if how == "missing":
        shard.unlink()
        return root, f"shard {shard} is missing"
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-10])
        return root, f"shard {shard}: "
    if how == "foreign":
        manifest = json.loads((root / MANIFEST).read_text())
        entry = manifest["shards"][1]
        values = random_shard_source(manifest["keys"]["video"]["shape"][0])
        other = write_sharded_index(
            tmp_path / "other", "meanpool", manifest["num_items"], values, "another", "fp16", manifest["shard_size"]
        )
        shutil.copy(other.root / entry["file"], shard)
        return root, f"shard {shard} was written by another model"
    if how == "half-written":
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["shards"].pop(1)
        manifest["complete"] = False
        (root / MANIFEST).write_text(json.dumps(manifest))
        return root, "incomplete: 1 shard(s) not finished (first: shard-00001.safetensors)"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["corrupted", "missing", "truncated", "foreign", "half-written"])
def test_cli_names_a_bad_shard_with_exit_2(built: dict[str, Path], tmp_path: Path, how: str) -> None:
    assert _search(built["fp16"]).exit_code == 0
    root, message = _damage(built, tmp_path, how)
    result = _search(root)
    assert result.exit_code == 2, result.output
    last = result.stderr.splitlines()[-1]  # one error line, after the progress lines
    assert last.startswith("error: ") and message in last, result.stderr
    assert "synth" not in result.stdout  # no result was shown


@pytest.mark.slow  # spawns processes
def test_cli_torchrun_two_processes_print_the_one_process_result(built: dict[str, Path]) -> None:
    args = ["index", "search", "--index", str(built["fp16"]), "-k", "4", "-q", QUERIES[0], "-q", QUERIES[1]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    one = subprocess.run([sys.executable, "-m", "psbench.cli", *args], env=env, capture_output=True, text=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "psbench.cli"]
    two = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "synth" in one.stdout and two.stdout == one.stdout


@pytest.mark.parametrize("kind", ["pt", "fp32"])
def test_k_beyond_the_gallery_is_said_and_k_below_one_is_an_error(built: dict[str, Path], kind: str) -> None:
    """Both ends of -k are explicit (issue 12 item 16): more than the gallery is a note, < 1 an error."""
    index = built[kind]
    args = ["index", "search", "--index", str(index), "-q", QUERIES[0]]
    big = CliRunner().invoke(app, [*args, "-k", "1000"], terminal_width=400)
    assert big.exit_code == 0, big.output
    assert "-k 1000 is more than the 8 videos" in big.output
    assert "│    8 │" in big.output and "│    9 │" not in big.output  # all 8 ranks shown, no more
    zero = CliRunner().invoke(app, [*args, "-k", "0"], terminal_width=400)
    assert zero.exit_code == 2 and "error: -k 0: must be >= 1" in zero.output, zero.output
