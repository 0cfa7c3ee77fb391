"""A real protocol file end to end on placeholder videos: tiny backbone, one training step.

The MSR-VTT 1k-A annotation files are copied from ../shared/annotations into a temporary data root
(never into the project); a few test and training ids get tiny generated videos; the rest are
missing and skipped (``data.skip_missing``), which the run record lists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from psbench.backbone.clip import create_clip, save_clip
from psbench.data.video_writer import write_video
from psbench.protocol import load_protocol, resolve
from psbench.runs.runner import run
from tests.paths import SHARED_ANNOTATIONS

SHARED = SHARED_ANNOTATIONS / "msrvtt"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"real annotation files not found at {SHARED}"),
]  # slow: runs a real protocol end to end

TINY = {
    "backbone.arch": "psbench-tiny",
    "data.skip_missing": True,
    "train.frames": 4,
    "train.resolution": 32,
    "train.max_words": 32,
    "test.max_words": 32,
    "train.batch_size": 4,
    "train.epochs": 1,
    "train.num_workers": 0,
    "test.frames": 4,
    "test.resolution": 32,
    "test.batch_size": 8,
    "test.num_workers": 0,
}


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msrvtt")
    for name in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"):
        shutil.copy(SHARED / name, root / name)
    train_ids = [line.strip() for line in (SHARED / "MSRVTT_train.9k.csv").read_text().splitlines()[1:5]]
    test_ids = [line.split(",")[2] for line in (SHARED / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:7]]
    sentences = [
        {"video_id": v, "caption": f"placeholder caption {i} of {v}", "sen_id": i} for v in train_ids for i in range(2)
    ]
    all_train = [line.strip() for line in (SHARED / "MSRVTT_train.9k.csv").read_text().splitlines()[1:]]
    sentences += [{"video_id": v, "caption": "unused", "sen_id": 0} for v in all_train[4:]]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    rng = np.random.default_rng(0)
    for vid in train_ids + test_ids:
        write_video(root / "videos" / f"{vid}.mp4", rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    save_clip(create_clip("psbench-tiny"), root / "tiny_clip.pt")
    return root


def _run(root: Path, runs: Path) -> dict:
    cfg = resolve(load_protocol("msrvtt-1ka"), "promptswitch", 0, {**TINY, "train.frames": 6, "test.frames": 12})
    run_dir = run(cfg, runs, data_root=root, weights=root / "tiny_clip.pt")
    return {
        "config": json.loads((run_dir / "config.json").read_text()),
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
    }


def test_real_protocol_runs_and_hashes_are_stable(msrvtt_root: Path, tmp_path: Path):
    first, second = _run(msrvtt_root, tmp_path / "a"), _run(msrvtt_root, tmp_path / "b")
    assert first["config"]["hashes"] == second["config"]["hashes"]
    assert first["metrics"]["num_videos"] == 6 and first["metrics"]["train"]["steps"] == 2
    skipped = first["config"]["skipped_missing_videos"]
    assert len(skipped["test"]) == 994 and len(skipped["train"]) == 8996
    assert first["metrics"]["t2v"] == second["metrics"]["t2v"]
