"""The real datasets (MSR-VTT, MSVD, LSMDC, ActivityNet Captions, DiDeMo): their split loaders (spec §8).

Each loader has the registry signature ``(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit``.
Annotation files come from ``cfg.files`` (keys below; a missing key takes the default file name of the
official release), relative to the data root (an absolute path is used as is). Videos are looked up in
``root / cfg.video_dir`` and must resolve inside it. Then, for every dataset and split:

- ``cfg.exclude_videos`` drops those videos and their captions (e.g. the LSMDC clip X-Pool and
  Prompt Switch skip, spec §8.3);
- ``cfg.dedupe_train_by_video`` keeps one caption per video in the TRAINING split
  (``cfg.train_split``), the last one in file order (X-Pool / Prompt Switch LSMDC training).

``files`` keys:
- msrvtt: ``<split>`` names a JSFUSION csv (``key,vid_key,video_id,sentence``) unless
  ``<split>_captions`` exists, in which case ``<split>`` is a training id csv and
  ``<split>_captions`` the ``MSRVTT_data.json`` that gives its captions;
- msvd: ``captions`` (``captions_msvd.json``) and ``<split>`` (an id list per split);
- lsmdc: ``<split>`` (a six-column tab-separated file);
- activitynet: ``<split>`` (captions json: ``train.json``, ``val_1.json``) and ``<split>_ids`` (id list json);
- didemo: ``<split>`` (moment annotations json) and optionally ``<split>_list`` (video names to keep).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

from psbench.data.activitynet import load_activitynet_split
from psbench.data.didemo import load_didemo_split
from psbench.data.lsmdc import load_lsmdc_split
from psbench.data.msrvtt import load_msrvtt_test, load_msrvtt_train
from psbench.data.msvd import load_msvd_split
from psbench.data.split import Caption, RetrievalSplit, SplitLoader
from psbench.protocol import DataConfig

log = logging.getLogger(__name__)

DEFAULT_FILES: dict[str, dict[str, str]] = {
    "msrvtt": {
        "train": "MSRVTT_train.9k.csv",
        "train_captions": "MSRVTT_data.json",
        "test": "MSRVTT_JSFUSION_test.csv",
    },
    "msvd": {
        "captions": "captions_msvd.json",
        "train": "train_list.txt",
        "val": "val_list.txt",
        "test": "test_list.txt",
    },
    "lsmdc": {
        "train": "LSMDC16_annos_training.csv",
        "val": "LSMDC16_annos_val.csv",
        "test": "LSMDC16_challenge_1000_publictect.csv",
    },
    # CLIP4Clip evaluates ActivityNet on val_1 (it has no test loader)
    "activitynet": {
        "train": "train.json",
        "train_ids": "train_ids.json",
        "test": "val_1.json",
        "test_ids": "val_ids.json",
    },
    "didemo": {
        "train": "train_data.json",
        "val": "val_data.json",
        "test": "test_data.json",
    },
}

#: the LSMDC public-test clip X-Pool and Prompt Switch drop from every split (line 109 of the test file)
LSMDC_SKIPPED_CLIP = "1012_Unbreakable_00.05.16.065-00.05.21.941"


def annotation_files(cfg: DataConfig, dataset: str) -> dict[str, str]:
    """The dataset's default file names, overridden by the protocol's ``data.files``."""
    return {**DEFAULT_FILES.get(dataset, {}), **cfg.files}


def _file(cfg: DataConfig, dataset: str, root: Path, key: str) -> Path:
    return _files(cfg, dataset, root, key)[0]


def _files(cfg: DataConfig, dataset: str, root: Path, *keys: str) -> list[Path]:
    """The annotation files of ``keys``; one error naming EVERY missing file, not just the first."""
    files = annotation_files(cfg, dataset)
    unknown = [k for k in keys if k not in files]
    if unknown:
        raise ValueError(
            f"dataset {dataset!r}: no annotation file for {', '.join(map(repr, unknown))} in data.files; "
            f"known keys: {', '.join(sorted(files))}"
        )
    paths = [root / files[k] for k in keys]
    missing = [f"{p} (data.files.{k})" for k, p in zip(keys, paths, strict=True) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset {dataset!r}: annotation file(s) not found: {', '.join(missing)}")
    return paths


def video_folder(cfg: DataConfig, root: Path) -> Path:
    """``root / cfg.video_dir``; the setting must be a relative path that stays inside the root."""
    rel = PurePath(cfg.video_dir)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"data.video_dir={cfg.video_dir!r} must be a relative path inside the data root {root}")
    return Path(root) / rel


def drop_videos(split: RetrievalSplit, exclude: list[str]) -> RetrievalSplit:
    """``split`` without the videos in ``exclude`` (and their captions); logs what was dropped."""
    present = [v for v in exclude if v in split.video_paths]
    if not present:
        return split
    log.info("split %s: excluding %d video(s) named in data.exclude_videos: %s", split.name, len(present), present)
    removed = set(present)
    return split.subset([v for v in split.video_ids if v not in removed])


def keep_last_caption(split: RetrievalSplit) -> RetrievalSplit:
    """One caption per video, the last one in caption order; captions follow the gallery order."""
    last = {c.video_id: c.text for c in split.captions}
    captions = [Caption(last[v], v) for v in split.video_ids if v in last]
    return RetrievalSplit(split.name, list(split.video_ids), captions, dict(split.video_paths), dict(split.twin_of))


def _finish(cfg: DataConfig, split: RetrievalSplit, split_name: str) -> RetrievalSplit:
    split = drop_videos(split, cfg.exclude_videos)
    if cfg.dedupe_train_by_video and split_name == cfg.train_split:
        split = keep_last_caption(split)
    return split


def _load_msrvtt(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    video_dir = video_folder(cfg, root)
    if f"{split}_captions" in annotation_files(cfg, "msrvtt"):
        data_json, id_csv = _files(cfg, "msrvtt", root, f"{split}_captions", split)
        return load_msrvtt_train(data_json, id_csv, video_dir, name=split)
    return load_msrvtt_test(_file(cfg, "msrvtt", root, split), video_dir, name=split)


def _load_msvd(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    captions, ids = _files(cfg, "msvd", root, "captions", split)
    return load_msvd_split(captions, ids, video_folder(cfg, root), name=split)


def _load_lsmdc(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    # dedupe happens in _finish (the same rule as the parser's dedupe=True: the last line per clip wins)
    return load_lsmdc_split(_file(cfg, "lsmdc", root, split), video_folder(cfg, root), name=split)


def _load_activitynet(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    captions, ids = _files(cfg, "activitynet", root, split, f"{split}_ids")
    return load_activitynet_split(captions, ids, video_folder(cfg, root), name=split)


def _load_didemo(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
    has_list = f"{split}_list" in annotation_files(cfg, "didemo")
    data, *listed = _files(cfg, "didemo", root, split, *([f"{split}_list"] if has_list else []))
    return load_didemo_split(data, video_folder(cfg, root), name=split, list_txt=listed[0] if listed else None)


def _finished(loader: SplitLoader) -> SplitLoader:
    """The dataset's parser, then exclusion and training de-duplication."""

    def load(cfg: DataConfig, root: Path, split: str) -> RetrievalSplit:
        return _finish(cfg, loader(cfg, Path(root), split), split)

    load.__doc__ = loader.__doc__
    return load


#: the real datasets' loaders, by dataset name (psbench.data.datasets puts them in the dataset registry)
REAL_LOADERS: dict[str, SplitLoader] = {
    "msrvtt": _finished(_load_msrvtt),
    "msvd": _finished(_load_msvd),
    "lsmdc": _finished(_load_lsmdc),
    "activitynet": _finished(_load_activitynet),
    "didemo": _finished(_load_didemo),
}
