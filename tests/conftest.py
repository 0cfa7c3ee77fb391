"""Shared fixtures: a tiny synthetic data set and a randomly initialised tiny CLIP checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.paths import SHARED_ANNOTATIONS


def pytest_report_header() -> str:
    found = "found" if SHARED_ANNOTATIONS.is_dir() else "MISSING: set PSBENCH_ANNOTATIONS to the annotations folder"
    return f"psbench annotations: {SHARED_ANNOTATIONS} ({found})"


#: what the CLI tests see as their terminal, whatever the developer's or CI's terminal is
FIXED_TERMINAL = {"COLUMNS": "200", "LINES": "50", "NO_COLOR": "1"}
#: environment variables with which rich would colour, resize or treat a pipe as a terminal
TERMINAL_OVERRIDES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "JUPYTER_LINES")


@pytest.fixture(autouse=True)
def fixed_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees the same terminal: 200 columns, no colour (CLI output must not depend on $COLUMNS)."""
    for name in TERMINAL_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    for name, value in FIXED_TERMINAL.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated synthetic set (8 / 2 / 4 twin pairs) with a random tiny CLIP saved as its weights."""
    from psbench.backbone.clip import create_clip, save_clip
    from psbench.data.synthetic import generate_synthetic

    logging.getLogger("root").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, seed=0, n_train_pairs=8, n_val_pairs=2, n_test_pairs=4, workers=1)
    torch.manual_seed(0)
    save_clip(create_clip("psbench-tiny"), root / "tiny_clip.pt")
    return root


TINY_SETS = {
    "train.epochs": 1,
    "train.batch_size": 4,
    "train.num_workers": 0,
    "test.batch_size": 8,
    "test.num_workers": 0,
}


def read_only_folder(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` behave as on a read-only file system: creating a temporary file there (what every
    psbench writer does first) fails with EROFS. chmod does not stop root, which runs CI here."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(kwargs.get("dir") or ".").resolve() == folder.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(folder))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny shapes: one thread avoids OpenMP spin contention on a shared machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
