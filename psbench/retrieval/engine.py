"""Evaluation engine: offline gallery encoding, online similarity in blocks, exact blocked top-k.

The offline stage (``encode_gallery``) runs every gallery video through ``method.encode_video``
once and keeps the ``Encoded`` result on the CPU. The online stage calls ``method.similarity`` on
(query block x video block) slices: ``score_matrix`` fills the full (Q, N) matrix for the metrics,
``topk`` keeps only the best k videos per query so that memory is bounded by the block sizes. The
efficiency benchmark times these same two functions: there is no separate benchmark path.

Top-k is exact and deterministic: ties are broken by the lower gallery index. Each (score, index)
pair is packed into one int64 sort key (order-preserving float32 bits in the high word, the
complemented index in the low word), so every key is unique and ``torch.topk`` over keys has one
correct answer, whatever the block layout or shard split. Keys are packed only for the scores that
can still enter the top-k: on CPU those at or above a per-row threshold bounded from group maxima
(one pass over the block, no sort). On accelerators (the *device path*, ``psbench.ops.device_topk``) the
scores stay in the method's dtype (fp16/bf16 are not copied to float32), each block's top-k comes
from its k best groups of consecutive videos (fixed shapes, proven exact), and the host waits for
the device once per call: NaN is flagged on the device and checked after the last block. Block
sizes default to CPU-sized blocks on the CPU and to memory-sized blocks on the device path.

For inner-product methods on CPUs with native bfloat16 dot products, ``topk`` by default rules out
most of the gallery with a bfloat16 matmul and a proven error bound, then rescores the survivors in
float32 (``psbench.ops.prefilter``): the same exact top-k, faster (0.21 s against 0.28 s for 1,000
queries x 100,000 videos x 512 on the 2-core development machine). ``prefilter="off"`` scores
every pair in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from psbench.backbone.pixels import model_pixels
from psbench.method import Encoded, RetrievalMethod
from psbench.ops import device_topk
from psbench.ops.prefilter import (
    bf16_matmul_is_fast,
    block_candidates,
    inner_product_topk_keys,
    operands_are_eligible,
    ragged_to_dense_keys,
    running_kth,
)
from psbench.ops.sortkeys import MAX_INDEX, sort_keys, topk_keys, unpack_keys

log = logging.getLogger(__name__)

Device = torch.device | str


# -- Encoded helpers -----------------------------------------------------------------------------------
def encoded_len(enc: Encoded) -> int:
    """Number of items in ``enc`` (the common leading dimension of its tensors)."""
    if not enc:
        raise ValueError("Encoded is empty: it has no tensors")
    lengths = {key: int(value.shape[0]) for key, value in enc.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Encoded tensors disagree on the number of items: {lengths}")
    return next(iter(lengths.values()))


def slice_encoded(enc: Encoded, start: int, stop: int) -> Encoded:
    """Items ``start:stop`` of every tensor (views, no copy)."""
    return {key: value[start:stop] for key, value in enc.items()}


def concat_encoded(parts: Sequence[Encoded]) -> Encoded:
    """Concatenate Encoded dicts along the item dimension; all parts must have the same keys."""
    if not parts:
        raise ValueError("concat_encoded needs at least one Encoded")
    keys = set(parts[0])
    for i, part in enumerate(parts):
        if set(part) != keys:
            raise ValueError(f"concat_encoded: part {i} has keys {sorted(part)}, part 0 has {sorted(keys)}")
        encoded_len(part)
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def encoded_to(enc: Encoded, device: Device) -> Encoded:
    return {key: value.to(device, non_blocking=True) for key, value in enc.items()}


def encoded_nbytes_per_item(enc: Encoded) -> int:
    """Bytes stored per item (e.g. per gallery video) over all tensors."""
    n = encoded_len(enc)
    if n == 0:
        raise ValueError("encoded_nbytes_per_item: Encoded has zero items")
    return sum(value.numel() * value.element_size() for value in enc.values()) // n


def _check_encoded(enc: Encoded, what: str) -> Encoded:
    for key, value in enc.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{what}[{key!r}] is {type(value).__name__}, expected a Tensor")
    encoded_len(enc)
    return enc


# -- offline and query encoding -----------------------------------------------------------------------
def encode_gallery(
    method: RetrievalMethod,
    loader: Iterable[Mapping[str, Tensor]],
    device: Device,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    """Encode every gallery video once with ``method.encode_video``; returns CPU tensors in gallery order.

    ``loader`` yields dicts with ``frames`` (B, F, 3, H, W), ``mask`` (B, F) and ``index`` (B,), the
    gallery index of each item; batches may come in any order but together must cover 0..N-1 exactly
    once. ``progress(num_items)`` is called after each batch.
    """
    parts: list[Encoded] = []
    indices: list[Tensor] = []
    was_training = method.training
    method.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                missing = [key for key in ("frames", "mask", "index") if key not in batch]
                if missing:
                    raise KeyError(f"gallery batch lacks key(s) {', '.join(missing)} (has {sorted(batch)})")
                frames = model_pixels(batch["frames"].to(device, non_blocking=True))  # (B, F, 3, H, W) float32
                mask = batch["mask"].to(device, non_blocking=True)  # (B, F)
                enc = _check_encoded(method.encode_video(frames, mask), f"{type(method).__name__}.encode_video")
                if encoded_len(enc) != frames.shape[0]:
                    raise ValueError(
                        f"{type(method).__name__}.encode_video returned {encoded_len(enc)} items "
                        f"for a batch of {frames.shape[0]}"
                    )
                parts.append(encoded_to(enc, "cpu"))
                indices.append(torch.as_tensor(batch["index"]).reshape(-1).to("cpu", torch.int64))
                if progress is not None:
                    progress(int(frames.shape[0]))
            if not parts:
                raise ValueError("encode_gallery: the loader yielded no batches")
            gallery = concat_encoded(parts)
            index = torch.cat(indices)  # (N,)
            order = torch.argsort(index)  # (N,)
            if not torch.equal(index[order], torch.arange(index.numel())):
                raise ValueError(
                    f"encode_gallery: batch indices must cover 0..{index.numel() - 1} exactly once "
                    "(duplicated or missing gallery items)"
                )
            return {key: value[order].contiguous() for key, value in gallery.items()}
    finally:
        method.train(was_training)


def encode_queries(
    method: RetrievalMethod,
    tokens: Tensor,
    batch_size: int,
    device: Device,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    """Encode text queries (Q, L) in batches with ``method.encode_text``; returns CPU tensors.

    ``progress(num_queries)`` is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokens.shape[0] == 0:
        raise ValueError("encode_queries: no queries")
    parts = []
    was_training = method.training
    method.eval()
    try:
        with torch.inference_mode():
            for start in range(0, tokens.shape[0], batch_size):
                chunk = tokens[start : start + batch_size].to(device, non_blocking=True)  # (B, L)
                enc = _check_encoded(method.encode_text(chunk), f"{type(method).__name__}.encode_text")
                parts.append(encoded_to(enc, "cpu"))
                if progress is not None:
                    progress(int(chunk.shape[0]))
            return concat_encoded(parts)
    finally:
        method.train(was_training)


# -- online scoring ------------------------------------------------------------------------------------
def _blocks(total: int, size: int, name: str) -> range:
    if size < 1:
        raise ValueError(f"{name} must be >= 1, got {size}")
    return range(0, total, size)


def _similarity_block(method: RetrievalMethod, text: Encoded, video: Encoded, native: bool = False) -> Tensor:
    """(q, n) scores of one block: float32, or in the method's own dtype with ``native``."""
    scores = method.similarity(text, video)  # (q, n)
    expected = (encoded_len(text), encoded_len(video))
    if tuple(scores.shape) != expected:
        raise ValueError(
            f"{type(method).__name__}.similarity returned shape {tuple(scores.shape)}, expected {expected}"
        )
    if native and scores.is_floating_point():
        return scores
    return scores.float()


def score_matrix(
    method: RetrievalMethod,
    text: Encoded,
    video: Encoded,
    block_queries: int = 1024,
    block_videos: int = 4096,
    device: Device = "cpu",
    out_device: Device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """The full (Q, N) float32 score matrix, filled block by block with ``method.similarity``.

    Each video block is moved to ``device`` once and scored against every query block. The result
    lives on ``out_device`` (CPU by default, where the metrics run). ``progress(num_videos)`` is
    called after each video block (all queries scored against it).
    """
    q, n = encoded_len(text), encoded_len(video)
    out = torch.empty(q, n, dtype=torch.float32, device=out_device)  # (Q, N)
    with torch.inference_mode():
        for v0 in _blocks(n, block_videos, "block_videos"):
            v1 = min(v0 + block_videos, n)
            video_block = encoded_to(slice_encoded(video, v0, v1), device)
            for q0 in _blocks(q, block_queries, "block_queries"):
                q1 = min(q0 + block_queries, q)
                text_block = encoded_to(slice_encoded(text, q0, q1), device)
                out[q0:q1, v0:v1] = _similarity_block(method, text_block, video_block).to(out_device)
            if progress is not None:
                progress(v1 - v0)
    return out


# -- exact top-k -----------------------------------------------------------------------------------------
def _block_topk_keys(scores: Tensor, offset: int, k: int) -> Tensor:
    """Exact top-k keys (q, <=k) of one (q, v) score block whose first column is gallery index ``offset``.

    The device path's fixed-shape selection (``device_topk.block_topk_keys``); a NaN raises at once.
    """
    return device_topk.block_topk_keys(scores, offset, k)


def _candidate_keys(scores: Tensor, best: Tensor, offset: int, k: int) -> Tensor:
    """Keys (q, w) of the exact scores of one block that can still enter the running top-k ``best``.

    Group maxima bound each row's k-th best from below (see ``prefilter.block_candidates``), so only
    a few scores per row are packed into keys; rows are padded with the lowest key. Same result as
    :func:`_block_topk_keys`, without a ``torch.topk`` over the whole block (CPU; on CUDA the
    data-dependent sizes would synchronise every block).
    """
    q = scores.shape[0]
    exact = torch.zeros(q, device=scores.device)  # (q,) no error on exact scores
    rows, cols = block_candidates(scores, running_kth(best, k), exact, k)  # (c,), (c,)
    return ragged_to_dense_keys(rows, sort_keys(scores[rows, cols], cols + offset), q)  # (q, w)


PREFILTERS = ("auto", "bf16", "off")


def prefilter_operands(
    method: RetrievalMethod, text: Encoded, video: Encoded, k: int, block_videos: int, device: Device, choice: str
) -> tuple[Tensor, Tensor] | None:
    """The (A, B) inner-product operands when ``topk`` should use the bfloat16 prefilter, else None.

    ``auto``: on CPU, for inner-product methods with float32 embeddings, when the CPU has native
    bfloat16 dot products and a block holds at least 4k videos. ``bf16``: whenever the method is an
    inner product (an error otherwise). ``off``: never.
    """
    if choice not in PREFILTERS:
        raise ValueError(f"prefilter {choice!r}; valid: {', '.join(PREFILTERS)}")
    if choice == "off":
        return None
    operands = method.inner_product_operands(text, video)
    eligible = operands is not None and torch.device(device).type == "cpu" and operands_are_eligible(*operands)
    if choice == "bf16":
        if not eligible:
            raise ValueError(
                f"prefilter 'bf16' needs float32 inner-product embeddings on the CPU; "
                f"{type(method).__name__} on {device} does not qualify (use 'auto' or 'off')"
            )
        return operands
    fast = bf16_matmul_is_fast(torch.device(device)) and 4 * k <= block_videos
    return operands if eligible and fast else None


CPU_BLOCKS = (1024, 4096)  # (block_queries, block_videos) when the CPU path is not told otherwise


def uses_device_path(device: Device, device_path: bool | None) -> bool:
    """Whether ``topk`` takes the device path: by default on every device but the CPU."""
    return torch.device(device).type != "cpu" if device_path is None else bool(device_path)


def topk_block_sizes(
    text: Encoded,
    video: Encoded,
    block_queries: int | None,
    block_videos: int | None,
    device: Device,
    device_path: bool,
) -> tuple[int, int]:
    """The block sizes ``topk`` uses: the given ones, else ``CPU_BLOCKS`` on the CPU path and
    ``device_topk.device_block_sizes`` (from Q, N, bytes per query and per video, free memory) on the
    device path. Scores are assumed to take the element size of the text's first floating tensor."""
    if block_queries is not None and block_videos is not None:
        return block_queries, block_videos
    if not device_path:
        bq, bv = CPU_BLOCKS
    else:
        floats = [t for t in text.values() if t.is_floating_point()]
        score_bytes = floats[0].element_size() if floats else 4
        bq, bv = device_topk.device_block_sizes(
            encoded_len(text),
            encoded_len(video),
            encoded_nbytes_per_item(text),
            encoded_nbytes_per_item(video),
            score_bytes,
            device_topk.free_device_bytes(torch.device(device)),
        )
    return (bq if block_queries is None else block_queries), (bv if block_videos is None else block_videos)


def topk(
    method: RetrievalMethod,
    text: Encoded,
    video: Encoded,
    k: int,
    block_queries: int | None = None,
    block_videos: int | None = None,
    device: Device = "cpu",
    prefilter: str = "auto",
    device_path: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact top-k videos per query: (scores (Q, k) float32, indices (Q, k) int64), on CPU.

    Sorted by descending score, ties broken by the lower gallery index (-0.0 counts as, and is
    returned as, 0.0). Each query block keeps a
    running top-k merged with every video block's top-k, so memory is O(block_queries x block_videos)
    and the (Q, N) matrix is never built. ``prefilter``: see :func:`prefilter_operands` (CPU path
    only). ``device_path``: None takes it on every device but the CPU; True forces it (also on CPU
    tensors, which is how the tests run it), False forces the CPU path. Block sizes: see
    :func:`topk_block_sizes`.
    """
    q, n = encoded_len(text), encoded_len(video)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the gallery size), got {k}")
    if n - 1 > MAX_INDEX:
        raise ValueError(f"gallery of {n} items exceeds the top-k index limit {MAX_INDEX + 1}")
    on_device = uses_device_path(device, device_path)
    block_queries, block_videos = topk_block_sizes(text, video, block_queries, block_videos, device, on_device)
    video_starts = _blocks(n, block_videos, "block_videos")
    query_starts = _blocks(q, block_queries, "block_queries")
    if on_device:
        if prefilter not in PREFILTERS:
            raise ValueError(f"prefilter {prefilter!r}; valid: {', '.join(PREFILTERS)}")
        if prefilter == "bf16":
            raise ValueError("prefilter 'bf16' runs on the CPU path only; the device path takes 'auto' or 'off'")
        return _device_topk(method, text, video, k, block_queries, block_videos, device)
    out_scores, out_indices = [], []
    with torch.inference_mode():
        for q0 in query_starts:
            q1 = min(q0 + block_queries, q)
            text_block = encoded_to(slice_encoded(text, q0, q1), device)
            operands = prefilter_operands(method, text_block, video, k, block_videos, device, prefilter)
            if operands is not None:
                keys = inner_product_topk_keys(*operands, k, block_videos)  # (q, k)
                values, indices = unpack_keys(keys)
                out_scores.append(values)
                out_indices.append(indices)
                continue
            best = torch.empty(q1 - q0, 0, dtype=torch.int64, device=device)  # (q, <=k) running keys
            for v0 in video_starts:
                v1 = min(v0 + block_videos, n)
                video_block = encoded_to(slice_encoded(video, v0, v1), device)
                scores = _similarity_block(method, text_block, video_block)  # (q, v)
                best = best.to(scores.device)
                if scores.device.type == "cpu":
                    block_best = _candidate_keys(scores, best, v0, k)  # (q, w) padded
                else:
                    block_best = _block_topk_keys(scores, v0, k)  # (q, <=k)
                best = topk_keys(torch.cat([best, block_best], dim=1), k)  # (q, <=k)
            values, indices = unpack_keys(best.cpu())
            out_scores.append(values)
            out_indices.append(indices)
    return torch.cat(out_scores), torch.cat(out_indices)


def _device_topk(
    method: RetrievalMethod,
    text: Encoded,
    video: Encoded,
    k: int,
    block_queries: int,
    block_videos: int,
    device: Device,
) -> tuple[Tensor, Tensor]:
    """The device path of :func:`topk`: native-dtype scores, fixed-shape selection, one wait at the end."""
    q, n = encoded_len(text), encoded_len(video)
    nan_seen: Tensor | None = None  # bool scalar on the scores' device, OR-ed per block
    parts: list[Tensor] = []
    with torch.inference_mode():
        for q0 in _blocks(q, block_queries, "block_queries"):
            q1 = min(q0 + block_queries, q)
            text_block = encoded_to(slice_encoded(text, q0, q1), device)
            best: Tensor | None = None  # (q, <=k) running keys
            for v0 in _blocks(n, block_videos, "block_videos"):
                v1 = min(v0 + block_videos, n)
                video_block = encoded_to(slice_encoded(video, v0, v1), device)
                scores = _similarity_block(method, text_block, video_block, native=True)  # (q, v) native dtype
                if nan_seen is None:
                    nan_seen = torch.zeros((), dtype=torch.bool, device=scores.device)
                block_best = device_topk.block_topk_keys(scores, v0, k, nan_seen)  # (q, <=k)
                best = block_best if best is None else topk_keys(torch.cat([best, block_best], dim=1), k)
            parts.append(best)
        keys = torch.cat(parts).cpu()  # (Q, k): the one wait for the device
    if nan_seen is not None and bool(nan_seen.cpu()):
        raise ValueError("scores contain NaN; top-k would be undefined")
    return unpack_keys(keys)


def merge_topk(parts: Sequence[tuple[Tensor, Tensor]], k: int | None = None) -> tuple[Tensor, Tensor]:
    """Merge per-shard top-k results (scores (Q, k_i), GLOBAL indices (Q, k_i)) into the exact top-k.

    ``k`` defaults to the largest k_i. Same order and tie rule as :func:`topk`.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one (scores, indices) part")
    rows = {int(s.shape[0]) for s, _ in parts} | {int(i.shape[0]) for _, i in parts}
    if len(rows) != 1:
        raise ValueError(f"merge_topk: parts disagree on the number of queries: {sorted(rows)}")
    for i, (scores, indices) in enumerate(parts):
        if scores.shape != indices.shape:
            raise ValueError(f"merge_topk: part {i} has scores {tuple(scores.shape)}, indices {tuple(indices.shape)}")
    k = max(int(s.shape[1]) for s, _ in parts) if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if any(torch.isnan(s).any() for s, _ in parts):
        raise ValueError("merge_topk: scores contain NaN")
    keys = torch.cat([sort_keys(s.cpu(), i.cpu()) for s, i in parts], dim=1)  # (Q, sum k_i)
    return unpack_keys(topk_keys(keys, k))


class GalleryShard:
    """A gallery loader over a contiguous shard ``[offset, ...)``, re-indexed to start at 0 (as
    :func:`encode_gallery` expects)."""

    def __init__(self, loader: Any, offset: int) -> None:
        self.loader, self.offset = loader, offset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield {**batch, "index": torch.as_tensor(batch["index"]) - self.offset}
