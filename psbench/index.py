"""A saved gallery index: precomputed ``encode_video`` outputs + video ids, searched with the engine's top-k.

File layout (``torch.save``; loaded with ``weights_only=True``)::

    {"format": 1, "method": str, "video_ids": [str], "encoded": {key: Tensor (N, ...)},
     "meta": JSON string: run dir, resolved config, model fingerprint, frames, source, time}

The model fingerprint (a hash of the method's state dict) is checked at search time, so an index
is never searched with a model other than the one that encoded its gallery.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from psbench import engine
from psbench.checkpoint import CheckpointFormatError, UntrustedCheckpointError, load_torch_file
from psbench.method import Encoded, RetrievalMethod
from psbench.progress import Progress, SilentProgress
from psbench.runs import atomic_torch_save
from psbench.sharded_index import ShardedIndex, distributed_topk, write_sharded_index

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


class VideoIndexError(ValueError):
    """An index file is malformed or does not match the model it is searched with."""


@dataclass
class VideoIndex:
    method: str
    video_ids: list[str]
    encoded: Encoded
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = engine.encoded_len(self.encoded)
        if n != len(self.video_ids):
            raise VideoIndexError(f"index has {n} encoded items but {len(self.video_ids)} video ids")
        if len(set(self.video_ids)) != len(self.video_ids):
            raise VideoIndexError("index video ids are not unique")

    def __len__(self) -> int:
        return len(self.video_ids)


@dataclass
class SearchResult:
    """Per query: the k best video ids, their scores and gallery indices (best first)."""

    ids: list[list[str]]
    scores: Tensor  # (Q, k) float32
    indices: Tensor  # (Q, k) int64


def model_fingerprint(method: RetrievalMethod) -> str:
    """sha256 (16 hex) of the method's class name and every state-dict tensor (names, shapes, bytes)."""
    h = hashlib.sha256(type(method).__name__.encode())
    for name, value in sorted(method.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_index(index: VideoIndex, path: Path) -> None:
    """Write the index atomically (CPU tensors)."""
    payload = {
        "format": INDEX_FORMAT,
        "method": index.method,
        "video_ids": list(index.video_ids),
        "encoded": {k: v.detach().cpu().contiguous() for k, v in index.encoded.items()},
        "meta": json.dumps(index.meta, sort_keys=True, default=str),
    }
    atomic_torch_save(payload, Path(path))


def load_index(path: Path) -> VideoIndex:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file not found: {path}")
    not_index = f"{path} is not a psbench index (format {INDEX_FORMAT}, written by `psbench index build`)"
    try:  # the one reading rule of weights and run checkpoints: tensors only, torch's reason in one sentence
        payload = load_torch_file(path, trust=False, what="psbench index")
    except (CheckpointFormatError, UntrustedCheckpointError) as exc:
        raise VideoIndexError(f"{exc} (format {INDEX_FORMAT} is written by `psbench index build`)") from None
    if not isinstance(payload, dict) or payload.get("format") != INDEX_FORMAT:
        raise VideoIndexError(not_index)
    try:
        meta = json.loads(payload["meta"])
        return VideoIndex(payload["method"], list(payload["video_ids"]), dict(payload["encoded"]), meta)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise VideoIndexError(f"{not_index}: malformed payload ({type(exc).__name__}: {exc})") from exc


# -- building from a run ----------------------------------------------------------------------------
def load_run_method(run_dir: Path, trust_checkpoint: bool = False) -> tuple[RetrievalMethod, Any, Any]:
    """The trained method of a run directory (selected checkpoint), its RunConfig and its RunRecord.

    The run is opened with :func:`psbench.run_record.open_run`: the same trust rule (``trust_checkpoint``
    for the CLIP weights and the run's checkpoint) and the same weights check as ``eval`` and ``--resume``.
    """
    from psbench.run_record import open_run
    from psbench.runner import build_method

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
    from psbench.data.loader import GalleryDataset
    from psbench.evaluate import frame_spec

    method, cfg, run = load_run_method(run_dir, trust_checkpoint)
    method.to(torch.device(device))
    if Path(videos).is_dir():
        split, source = directory_split(Path(videos)), {"directory": str(Path(videos).resolve())}
    else:
        root = run.data_root_input(data_root)
        split, source = load_split(cfg.data, root, videos), {"split": videos, "data_root": str(root)}
    test = cfg.test
    dataset = GalleryDataset(
        split, frame_spec(test.frames, test.sampler, test.segments, method), test.transform, test.resolution
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
    """:func:`build_index` written as a sharded index directory ``out`` (see ``psbench.sharded_index``):
    one shard of ``shard_size`` videos encoded and written at a time (bounded memory); a rerun after a
    crash keeps the finished shards (checked by sha256) and continues."""
    from psbench.data.loader import make_gallery_loader
    from psbench.distributed import _Shifted

    method, cfg, split, dataset, meta = _gallery(run_dir, videos, data_root, device, trust_checkpoint)

    def encode_shard(start: int, stop: int) -> Encoded:
        subset = torch.utils.data.Subset(dataset, range(start, stop))
        loader = _Shifted(make_gallery_loader(subset, cfg.test.batch_size, cfg.test.num_workers), start)
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


# -- searching ----------------------------------------------------------------------------------------
def check_compatible(index: VideoIndex | ShardedIndex, method: RetrievalMethod, method_name: str | None = None) -> None:
    """Refuse a method other than the one (same name, same weights) that built the index."""
    if method_name is not None and method_name != index.method:
        raise VideoIndexError(f"index was built with method {index.method!r}, not {method_name!r}")
    expected = index.meta.get("model_fingerprint")
    if expected and model_fingerprint(method) != expected:
        raise VideoIndexError("the model's weights differ from the ones that built this index (fingerprint mismatch)")


def query_tokens(method: RetrievalMethod, queries: Sequence[str] | Tensor, max_words: int) -> Tensor:
    """Query texts tokenised with the model's tokenizer (``max_words`` words); a (Q, L) tensor is taken as tokens."""
    from psbench.backbone import tokenizer_for

    if isinstance(queries, Tensor):
        return queries
    if not queries:
        raise ValueError("search: no queries")
    return tokenizer_for(method.clip, max_words)(list(queries))  # (Q, L)


def search(
    index: VideoIndex,
    method: RetrievalMethod,
    queries: Sequence[str] | Tensor,
    k: int,
    device: str = "cpu",
    max_words: int | None = None,
    block_queries: int = 1024,
    block_videos: int = 16384,
) -> SearchResult:
    """Top-k videos per query through ``engine.topk``: texts are tokenised with the model's tokenizer
    (``max_words`` from the index unless given); a (Q, L) tensor is taken as tokens."""
    tokens = query_tokens(method, queries, max_words or int(index.meta.get("max_words", 32)))  # (Q, L)
    k = min(k, len(index))
    text = engine.encode_queries(method, tokens, batch_size=256, device=device)
    scores, indices = engine.topk(method, text, index.encoded, k, block_queries, block_videos, device)
    ids = [[index.video_ids[i] for i in row] for row in indices.tolist()]
    return SearchResult(ids, scores, indices)


def search_sharded(
    index: ShardedIndex,
    method: RetrievalMethod,
    queries: Sequence[str] | Tensor,
    k: int,
    device: str = "cpu",
    max_words: int | None = None,
    progress: Progress | None = None,
) -> SearchResult:
    """:func:`search` over a sharded index: the shards are streamed (bounded memory) and, under torchrun,
    split across the ranks; the result is the same exact top-k as the in-memory search."""
    tokens = query_tokens(method, queries, max_words or int(index.meta.get("max_words", 32)))  # (Q, L)
    text = engine.encode_queries(method, tokens, batch_size=256, device=device)
    method.to("cpu")  # shard blocks are scored on the CPU, where they are read
    scores, indices = distributed_topk(index, method, text, k, progress=progress)
    names = index.video_ids(indices.flatten().tolist())
    width = indices.shape[1]
    ids = [names[r * width : (r + 1) * width] for r in range(indices.shape[0])]
    return SearchResult(ids, scores, indices)
