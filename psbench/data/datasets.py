"""Dataset registry: a dataset name -> a function that loads one split as a ``RetrievalSplit``.

The one table of datasets: the generated synthetic set and the real ones of
:mod:`psbench.data.real_datasets`, registered here (that module never imports this one).
"""

from __future__ import annotations

from pathlib import Path

from psbench.data.real_datasets import REAL_LOADERS, annotation_files
from psbench.data.relation_probe import load_relation_groups
from psbench.data.split import RetrievalSplit, SplitLoader
from psbench.data.synthetic import load_synthetic, recorded_split_videos
from psbench.protocol import DataConfig
from psbench.registry import Registry

DATASETS: Registry[SplitLoader] = Registry("dataset")


@DATASETS.register("synthetic")
def _load_synthetic(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    return load_synthetic(root, split)


@DATASETS.register("relation-probe")
def _load_relation_probe(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    loaded = load_synthetic(root, split)
    loaded.relation_groups = load_relation_groups(root, split, set(loaded.video_ids))
    return loaded


#: datasets written by a psbench generator (MSR-VTT file formats; the generator records each split's size)
GENERATED = ("synthetic", "relation-probe")

for _name, _loader in REAL_LOADERS.items():
    DATASETS.add(_name, _loader)


class SplitSizeError(ValueError):
    """A test annotation file lists another number of videos than the protocol expects (truncated, wrong file)."""


def split_file(cfg: DataConfig, root: Path, split: str) -> Path:
    """The annotation file that lists the videos of ``split`` (the data root when the dataset has none)."""
    if cfg.dataset in GENERATED:
        return Path(root) / ("train_list.csv" if split == "train" else f"{split}.csv")
    files = annotation_files(cfg, cfg.dataset)
    return Path(root) / files[split] if split in files else Path(root)


def expected_videos(cfg: DataConfig, root: Path, split: str) -> int | None:
    """How many videos ``split`` must list: the protocol's ``data.test_videos`` for its test split, or for a
    generated set what the generator recorded for the split; None when nothing fixes it."""
    if split == cfg.test_split and cfg.test_videos:
        return cfg.test_videos
    if cfg.dataset in GENERATED:
        return recorded_split_videos(Path(root), split)
    return None


def check_split_size(cfg: DataConfig, root: Path, split: RetrievalSplit) -> RetrievalSplit:
    """``split`` if it lists the expected number of videos, else :class:`SplitSizeError` naming the file."""
    expected = expected_videos(cfg, root, split.name)
    found = len(split.video_ids)
    if expected is not None and found != expected:
        source = "data.test_videos" if cfg.dataset not in GENERATED else "the generator's synthetic_config.json"
        raise SplitSizeError(
            f"{split_file(cfg, root, split.name)}: split {split.name!r} lists {found} video(s), expected {expected} "
            f"({source}); the file is truncated or not the protocol's {split.name} file"
        )
    return split


def load_split(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    """Load ``split`` of the protocol's dataset from ``root``; a split of the wrong size is an error."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (dataset {cfg.dataset!r})")
    return check_split_size(cfg, Path(root), DATASETS.get(cfg.dataset)(cfg, Path(root), split))
