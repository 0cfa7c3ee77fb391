"""Shared fixtures: a tiny synthetic data set and a randomly initialised tiny CLIP checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated synthetic set (8 / 2 / 4 twin pairs) with a random tiny CLIP saved as its weights."""
    from psbench.backbone import create_clip, save_clip
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
