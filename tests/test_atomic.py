"""Atomic writes (psbench.files.atomic): files get the umask's mode (not mkstemp's 0600) and never half-exist."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from psbench.data.prepare.compress import CompressSettings, compress_video
from psbench.data.video_writer import write_video
from psbench.files import atomic


@pytest.fixture
def umask_setter() -> Iterator[Callable[[int], None]]:
    original = os.umask(0o022)
    os.umask(original)
    yield lambda mask: os.umask(mask)
    os.umask(original)


def _frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(4, 16, 16, 3), dtype=np.uint8)


WRITERS: dict[str, Callable[[Path], None]] = {
    "json": lambda p: atomic.write_json(p / "a.json", {"x": 1}),
    "text": lambda p: atomic.write_text(p / "a.md", "hello\n"),
    "bytes": lambda p: atomic.write_bytes(p / "a.bin", b"\x00\x01"),
    "torch.save": lambda p: atomic.torch_save({"w": torch.zeros(2)}, p / "a.pt"),
    "video": lambda p: write_video(p / "v.mp4", _frames(), fps=4),
}


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_written_files_get_the_umask_mode(
    tmp_path: Path, umask_setter: Callable[[int], None], kind: str, mask: int, mode: int
) -> None:
    umask_setter(mask)
    assert atomic.current_umask() == mask
    WRITERS[kind](tmp_path)
    files = [p for p in tmp_path.iterdir()]
    assert len(files) == 1, files  # no temporary file left behind
    assert stat.S_IMODE(files[0].stat().st_mode) == mode, (kind, oct(files[0].stat().st_mode))


def test_compressed_video_gets_the_umask_mode(tmp_path: Path, umask_setter: Callable[[int], None]) -> None:
    src = tmp_path / "src" / "v.mp4"
    write_video(src, _frames(), fps=4)
    umask_setter(0o022)
    dst = tmp_path / "out" / "v.mp4"
    assert compress_video(src, dst, CompressSettings(fps=2.0, size=16)) > 0
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644
    assert [p.name for p in dst.parent.iterdir()] == ["v.mp4"]


def test_umask_is_read_without_changing_it(umask_setter: Callable[[int], None]) -> None:
    umask_setter(0o027)
    assert atomic.current_umask() == 0o027 and atomic.default_file_mode() == 0o640
    assert os.umask(0o027) == 0o027  # unchanged by reading it


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic.write_json(target, {"v": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text("{half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        atomic.write_with(target, broken)
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """The weights sha256 identifies a run's inputs: it must not depend on the temporary file's random name."""
    import hashlib

    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}
    atomic.torch_save(state, tmp_path / "a.pt")
    atomic.torch_save(state, tmp_path / "b.pt")
    digests = {hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.pt", "b.pt")}
    assert len(digests) == 1
    assert torch.equal(torch.load(tmp_path / "a.pt")["state_dict"]["w"], state["state_dict"]["w"])
