"""Order-preserving int64 sort keys for exact, deterministic top-k.

Each (float32 score, gallery index) pair is packed into one int64: order-preserving float bits in the
high word, the complemented index in the low word. Keys are unique, and sorting them descending
orders by score descending, then by lower index; -0.0 counts as (and is returned as) 0.0.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_BITS = 32
LOW_MASK = (1 << LOW_BITS) - 1
MAX_INDEX = LOW_MASK  # gallery indices must fit in the low word
PADDING_KEY = torch.iinfo(torch.int64).min  # below the key of every non-NaN score


def sort_keys(scores: Tensor, indices: Tensor) -> Tensor:
    """Pack float32 scores and gallery indices into unique int64 keys ordered by (score desc, index asc)."""
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64)  # +0.0 maps -0.0 to 0.0
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # monotone in the float value
    return (ordered << LOW_BITS) | (LOW_MASK - indices.to(torch.int64))


def unpack_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`sort_keys`: (scores float32, indices int64)."""
    ordered = keys >> LOW_BITS  # arithmetic shift: the low word is non-negative
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF).to(torch.int32)
    return bits.view(torch.float32), LOW_MASK - (keys & LOW_MASK)


def topk_keys(keys: Tensor, k: int) -> Tensor:
    """The k largest keys of each row (fewer if the row is shorter), sorted descending."""
    return torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=True).values
