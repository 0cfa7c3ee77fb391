"""The ActivityNet and DiDeMo protocols end to end, zero-shot, on placeholder videos: the released test
annotations are copied into a temporary data root (never into the project), five test videos get tiny
generated files, the rest are missing and left out as the official code does (recorded in the run record)."""

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

pytestmark = [
    pytest.mark.slow,  # two real protocols end to end
    pytest.mark.skipif(
        not (SHARED_ANNOTATIONS / "activitynet").is_dir(), reason=f"annotations not found at {SHARED_ANNOTATIONS}"
    ),
]

TINY = {
    "backbone.arch": "psbench-tiny",
    "train.epochs": 0,
    "test.frames": 4,
    "test.resolution": 32,
    "test.max_words": 32,
    "test.batch_size": 4,
    "test.num_workers": 0,
}
FILES = {"activitynet": ("val_1.json", "val_ids.json"), "didemo": ("test_data.json",)}
TOTAL = {"activitynet": 4916, "didemo": 1037}


def placeholder_root(tmp_path: Path, dataset: str) -> tuple[Path, list[str]]:
    root = tmp_path / dataset
    root.mkdir()
    for name in FILES[dataset]:
        shutil.copy(SHARED_ANNOTATIONS / dataset / name, root / name)
    cfg = resolve(load_protocol(dataset), "meanpool", 0, TINY).data
    from psbench.data.datasets import load_split

    ids = load_split(cfg, root, "test").video_ids[:5]
    rng = np.random.default_rng(0)
    for i, vid in enumerate(ids):
        stem = vid.removeprefix("v_") if i == 0 else vid  # one ActivityNet file with CLIP4Clip's naming
        name = f"{Path(stem).stem if dataset == 'didemo' else stem}.mp4"  # DiDeMo: as `data compress` names it
        write_video(root / "videos" / name, rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    save_clip(create_clip("psbench-tiny"), root / "tiny_clip.pt")
    return root, ids


@pytest.mark.parametrize("dataset", sorted(FILES))
@pytest.mark.parametrize("method", ["meanpool", "promptswitch", "promptswitch@64"])
def test_zero_shot_run_writes_a_complete_record(tmp_path: Path, dataset: str, method: str) -> None:
    """``promptswitch@64``: the field's 64 test frames, as 8 chunks of a cube with 8 prompts (the official
    cube has 6, so the protocol keeps its 12 test frames; this is the `--set` that gives 64)."""
    root, ids = placeholder_root(tmp_path, dataset)
    extra = {"test.frames": 12} if method == "promptswitch" else {}
    if method == "promptswitch@64":
        method, extra = "promptswitch", {"test.frames": 64, "train.frames": 8, "options.num_prompts": 8}
    cfg = resolve(load_protocol(dataset), method, 0, {**TINY, **extra})
    run_dir = run(cfg, tmp_path / "runs", data_root=root, weights=root / "tiny_clip.pt")
    for name in ("config.json", "metrics.json", "environment.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_videos"] == 5 and metrics["protocol"] == dataset
    assert len(config["skipped_missing_videos"]["test"]) == TOTAL[dataset] - 5
    assert not set(ids) & set(config["skipped_missing_videos"]["test"])
    for direction in ("t2v", "v2t"):
        assert set(metrics[direction]) >= {"R1", "R5", "R10", "MdR", "MnR"}
    assert config["config"]["data"]["dataset"] == dataset and config["config"]["train"]["epochs"] == 0
    assert config["config"]["test"]["frames"] == extra.get("test.frames", TINY["test.frames"])


def test_a_larger_backbone_family_needs_only_a_protocol_file(tiny_synthetic: Path, tmp_path: Path) -> None:
    """ViT-L/14's family (patch 14) at tiny size: a protocol file naming the architecture is all it takes; no
    code knows the patch size. Zero-shot runs of every method with per-frame tokens (Token Shift shifts them)."""
    from psbench.protocol import PROTOCOL_DIR

    text = (PROTOCOL_DIR / "synthetic.toml").read_text()
    text = text.replace('name = "synthetic"', 'name = "synthetic-p14"').replace(
        'arch = "psbench-tiny"', 'arch = "psbench-tiny-p14"'
    )
    text = text.replace('weights = "tiny_clip.pt"', 'weights = "random"').replace("resolution = 32", "resolution = 56")
    protocol = tmp_path / "synthetic-p14.toml"
    protocol.write_text(text)
    sets = {"train.epochs": 0, "test.batch_size": 8, "test.num_workers": 0}
    for method in ("meanpool", "tokenshift", "videoproxy"):
        cfg = resolve(load_protocol(str(protocol)), method, 0, sets)
        assert cfg.backbone.arch == "psbench-tiny-p14"
        run_dir = run(cfg, tmp_path / "runs", data_root=tiny_synthetic)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["num_videos"] == 8 and set(metrics["t2v"]) >= {"R1", "MnR"}, method
