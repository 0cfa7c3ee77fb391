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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from psbench.backbone.checkpoint import CheckpointFormatError, UntrustedCheckpointError, load_torch_file
from psbench.files import atomic
from psbench.method import Encoded, RetrievalMethod
from psbench.progress import Progress
from psbench.retrieval import engine
from psbench.retrieval.sharded_index import ShardedIndex, distributed_topk

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
    atomic.torch_save(payload, Path(path))


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
    from psbench.backbone.clip import tokenizer_for

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
