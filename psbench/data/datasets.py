"""Dataset registry: a dataset name -> a function that loads one split as a ``RetrievalSplit``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from psbench.data.split import RetrievalSplit
from psbench.protocol import DataConfig
from psbench.registry import Registry

SplitLoader = Callable[[DataConfig, Path, str], RetrievalSplit]

DATASETS: Registry[SplitLoader] = Registry("dataset")


@DATASETS.register("synthetic")
def _load_synthetic(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    from psbench.data.synthetic import load_synthetic

    return load_synthetic(root, split)


def load_split(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    """Load ``split`` of the protocol's dataset from ``root``."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (dataset {cfg.dataset!r})")
    return DATASETS.get(cfg.dataset)(cfg, Path(root), split)


import psbench.data.real_datasets  # noqa: E402,F401 - registers msrvtt, msvd, lsmdc
