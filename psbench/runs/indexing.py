"""Building a video index from a trained run: open the run, encode a gallery once, save it.

The index itself (format, search, sharding) is retrieval-layer code (:mod:`psbench.retrieval.index`,
:mod:`psbench.retrieval.sharded_index`); building one starts from a run directory, which is run-layer work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from psbench.method import Encoded, RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.retrieval import engine
from psbench.retrieval.index import VideoIndex, model_fingerprint
from psbench.retrieval.sharded_index import ShardedIndex, write_sharded_index
from psbench.runs.record import open_run
from psbench.runs.runner import build_method


def load_run_method(run_dir: Path, trust_checkpoint: bool = False) -> tuple[RetrievalMethod, Any, Any]:
    """The trained method of a run directory (selected checkpoint), its RunConfig and its RunRecord.

    The run is opened with :func:`psbench.runs.record.open_run`: the same trust rule (``trust_checkpoint``
    for the CLIP weights and the run's checkpoint) and the same weights check as ``eval`` and ``--resume``.
    """
    run = open_run(run_dir, trust_checkpoint)
    cfg = run.config
    method = build_method(cfg, run.weights_input(), trust_checkpoint)
    state = run.load_model_state()
    if state is not None:
        method.load_state_dict(state)
    return method.eval(), cfg, run


def directory_split(directory: Path) -> Any:
    """A caption-less split of every video file under ``directory`` (ids: relative paths without suffix)."""
    from psbench.data.paths import VIDEO_EXTENSIONS
    from psbench.data.split import RetrievalSplit

    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {directory}")
    ids = [p.relative_to(directory).with_suffix("").as_posix() for p in files]
    return RetrievalSplit(directory.name or str(directory), ids, [], dict(zip(ids, files, strict=True)))


def _gallery(
    run_dir: Path, videos: str, data_root: Path | None, device: str, trust_checkpoint: bool
) -> tuple[RetrievalMethod, Any, Any, Any, dict[str, Any]]:
    """The run's method (on ``device``), config, split, gallery dataset and the index provenance."""
    from psbench.data.datasets import load_split
    from psbench.data.loader import GalleryDataset, pixels_for
    from psbench.retrieval.evaluate import frame_spec

    method, cfg, run = load_run_method(run_dir, trust_checkpoint)
    method.to(torch.device(device))
    if Path(videos).is_dir():
        split, source = directory_split(Path(videos)), {"directory": str(Path(videos).resolve())}
    else:
        root = run.data_root_input(data_root)
        split, source = load_split(cfg.data, root, videos), {"split": videos, "data_root": str(root)}
    test = cfg.test
    dataset = GalleryDataset(
        split,
        frame_spec(test.frames, test.sampler, test.segments, method),
        test.transform,
        test.resolution,
        pixels=pixels_for(device),
    )
    meta = {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": str(run.selected_checkpoint) if run.selected_checkpoint else None,
        "config": run.record["config"],
        "protocol_hash": run.hashes.get("protocol"),
        "weights_sha256": run.hashes.get("weights"),
        "model_fingerprint": model_fingerprint(method),
        "max_words": test.max_words,
        "frames": test.frames,
        "source": source,
        "created": datetime.now(UTC).isoformat(),
    }
    return method, cfg, split, dataset, meta


def build_index(
    run_dir: Path,
    videos: str,
    data_root: Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    trust_checkpoint: bool = False,
) -> VideoIndex:
    """Encode a gallery with a run's model: ``videos`` is a directory of video files or a split name
    of the run's dataset (e.g. ``test``), read under ``data_root`` (default: the run's).
    ``trust_checkpoint`` follows the rule of :func:`load_run_method`."""
    from psbench.data.loader import make_gallery_loader

    progress = progress or SilentProgress()
    method, cfg, split, dataset, meta = _gallery(run_dir, videos, data_root, device, trust_checkpoint)
    loader = make_gallery_loader(dataset, cfg.test.batch_size, cfg.test.num_workers)
    with progress.task(f"encode {len(split.video_ids)} videos", len(split.video_ids)) as task:
        encoded = engine.encode_gallery(method, loader, device, progress=task.advance)
    return VideoIndex(cfg.method, list(split.video_ids), encoded, meta)


def build_sharded_index(
    run_dir: Path,
    videos: str,
    out: Path,
    storage: str = "fp32",
    shard_size: int = 100_000,
    data_root: Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    trust_checkpoint: bool = False,
) -> ShardedIndex:
    """:func:`build_index` written as a sharded index directory ``out`` (see ``psbench.retrieval.sharded_index``):
    one shard of ``shard_size`` videos encoded and written at a time (bounded memory); a rerun after a
    crash keeps the finished shards (checked by sha256) and continues."""
    from psbench.data.loader import make_gallery_loader

    method, cfg, split, dataset, meta = _gallery(run_dir, videos, data_root, device, trust_checkpoint)

    def encode_shard(start: int, stop: int) -> Encoded:
        subset = torch.utils.data.Subset(dataset, range(start, stop))
        loader = engine.GalleryShard(make_gallery_loader(subset, cfg.test.batch_size, cfg.test.num_workers), start)
        return engine.encode_gallery(method, loader, device)

    return write_sharded_index(
        out,
        cfg.method,
        list(split.video_ids),
        encode_shard,
        meta["model_fingerprint"],
        storage,
        shard_size,
        meta,
        progress,
    )
