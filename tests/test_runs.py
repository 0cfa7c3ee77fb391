"""Run directories are never overwritten; writes are atomic; the registry errors list valid names."""

import json
from pathlib import Path

import pytest

from psbench.files import atomic
from psbench.registry import Registry, UnknownKeyError
from psbench.runs.dirs import RunDirError, create_run_dir


def test_run_dir_is_never_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    first = create_run_dir(tmp_path, "synthetic", "meanpool", 0)
    (first / "metrics.json").write_text("{}")
    second = create_run_dir(tmp_path, "synthetic", "meanpool", 0)
    assert first != second and (first / "metrics.json").read_text() == "{}"
    # Force a name collision: the existing directory must not be reused.
    monkeypatch.setattr("psbench.runs.dirs.run_dir_name", lambda *a, **k: first.name)
    with pytest.raises(RunDirError, match="already exists"):
        create_run_dir(tmp_path, "synthetic", "meanpool", 0)


def test_unwritable_runs_dir_fails_before_anything(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match=str(blocker)):
        create_run_dir(blocker / "runs", "synthetic", "meanpool", 0)


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "m.json"
    atomic.write_json(path, {"a": 1})
    atomic.write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_registry_lists_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    reg.add("b", 2)
    with pytest.raises(UnknownKeyError, match="unknown widget 'c'; valid widgets: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 3)
