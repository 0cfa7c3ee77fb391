"""Exact per-block top-k for accelerators: no host synchronisation, selection in the scores' own dtype.

``block_topk_keys`` finds the exact top-k of one (q, v) score block with work that has fixed shapes
(so nothing waits for the device until the final result is read):

1. Group maxima: the columns are cut into groups of g consecutive videos and each group's maximum
   is taken in the scores' own dtype (one read of the block; no float32 copy of it).
2. The k best groups of each row are chosen by the key (group maximum, group index), packed like
   ``psbench.ops.sortkeys`` keys, so ties between group maxima go to the lower group index.
3. The k x g members of those groups are gathered, packed into float32 sort keys and the k best
   kept: the answer.

Proof that step 3 sees the whole top-k. Order the scores of a row by the engine's rule (value
descending, then lower index): a strict total order. A group's key is then its best member, because
groups are contiguous and in index order (for equal maxima the lower group holds the lower index).
If a top-k score x lay in a group G outside the k best groups, each of those k groups would contain
a member ranked above G's best, hence above x: k scores above x, so x is not in the top k.

Casting fp16, bf16 (or float64) to float32 is monotone and, for fp16/bf16, exact, so the order of the
native values equals the order of their float32 casts: equal native values stay equal (and fall to
the lower index), nothing is reordered, and the result equals the float32 path bit for bit. The
scores ranked are the method's own output, as in ``engine.score_matrix``.

NaN: group maxima propagate NaN. The caller passes a device flag that is OR-ed on the device and read
once, after the last block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from psbench.ops.sortkeys import LOW_MASK, PADDING_KEY, sort_keys, topk_keys

#: bytes one score block may take on an accelerator, at most (and at most 1/8 of the free memory)
SCORE_BLOCK_BUDGET = 1 << 30
#: queries per block at most: a GEMM is efficient long before this
MAX_BLOCK_QUERIES = 4096
#: free memory assumed for devices that cannot report it (the CPU emulation of the device path)
FALLBACK_FREE_BYTES = 2 << 30


def group_size(v: int, k: int) -> int:
    """Columns per group: a power of two near sqrt(v / k), so that k x g candidates and v / g groups
    are both small; at most v // k (so there are at least k groups) and at most 256."""
    if v <= k:
        return 1
    target = math.sqrt(v / k)
    size = 1 << max(0, round(math.log2(target)))
    return max(1, min(size, 256, v // k))


def group_maxima(scores: Tensor, size: int) -> Tensor:
    """(q, G) maximum of each group of ``size`` consecutive columns of ``scores`` (q, v), G = ceil(v / size).

    No copy of the block: the full groups are a view, the last partial group is reduced separately.
    """
    q, v = scores.shape
    full = (v // size) * size
    parts = []
    if full:
        parts.append(scores[:, :full].reshape(q, full // size, size).amax(dim=2))  # (q, v // g)
    if full < v:
        parts.append(scores[:, full:].amax(dim=1, keepdim=True))  # (q, 1)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def block_topk_keys(scores: Tensor, offset: int, k: int, nan_seen: Tensor | None = None) -> Tensor:
    """Exact top-k keys (q, min(k, v)) of one (q, v) score block whose first column is gallery index ``offset``.

    Sorted by (score desc, index asc), as ``psbench.ops.sortkeys.topk_keys``. ``scores`` may be any
    floating dtype and is never copied to float32; only the k x g candidates are. ``nan_seen``: a bool
    scalar on the scores' device, OR-ed with "this block holds a NaN" without synchronising; if None,
    a NaN raises ValueError here (which synchronises).
    """
    q, v = scores.shape
    size = group_size(v, k)
    maxima = group_maxima(scores, size)  # (q, G)
    has_nan = torch.isnan(maxima).any()
    if nan_seen is None:
        if bool(has_nan):
            raise ValueError("scores contain NaN; top-k would be undefined")
    else:
        nan_seen |= has_nan
    groups = maxima.shape[1]
    group_ids = torch.arange(groups, device=scores.device)  # (G,)
    group_keys = sort_keys(maxima, group_ids.expand(q, groups))  # (q, G) ties -> lower group
    chosen = LOW_MASK - (topk_keys(group_keys, k) & LOW_MASK)  # (q, min(k, G)) group ids
    members = torch.arange(size, device=scores.device)  # (g,)
    cols = (chosen[:, :, None] * size + members).flatten(1)  # (q, min(k, G) * g)
    valid = cols < v  # the last group may be partial
    values = scores.gather(1, cols.clamp_max(v - 1))  # (q, c) native dtype
    keys = torch.where(valid, sort_keys(values, cols + offset), PADDING_KEY)  # (q, c)
    return topk_keys(keys, k)  # (q, min(k, v)): every block has >= min(k, v) real candidates


def device_block_sizes(
    q: int, n: int, query_bytes: int, video_bytes: int, score_bytes: int, free_bytes: int
) -> tuple[int, int]:
    """(block_queries, block_videos) for the device path.

    All queries in one block up to ``MAX_BLOCK_QUERIES``; then as many videos as let one block's
    scores (bq x bv x score_bytes) plus its video slice (bv x video_bytes, in case the gallery is
    moved per block) fit in min(``SCORE_BLOCK_BUDGET``, free_bytes / 8). The eighth leaves room for the
    method's own temporaries and the allocator. Video blocks below the whole gallery are rounded down
    to a multiple of 256 (GEMM tiles, full groups).
    """
    for name, value in (("q", q), ("n", n), ("score_bytes", score_bytes)):
        if value < 1:
            raise ValueError(f"device_block_sizes: {name} must be >= 1, got {value}")
    budget = max(1, min(SCORE_BLOCK_BUDGET, free_bytes // 8))
    bq = min(q, MAX_BLOCK_QUERIES, max(1, budget // max(1, score_bytes + query_bytes)))
    bv = max(1, budget // (bq * score_bytes + max(0, video_bytes)))
    if bv >= n:
        return bq, n
    return bq, (bv // 256) * 256 if bv >= 256 else bv


def free_device_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device (no synchronisation); ``FALLBACK_FREE_BYTES`` elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return FALLBACK_FREE_BYTES
