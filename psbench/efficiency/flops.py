"""FLOP counts: fvcore on the real modules, and the methods' closed forms they are checked against.

The generic tower formulas live in :mod:`psbench.backbone.flops`; each method states its own closed
forms (``offline_flops_per_video``, ``online_flops_per_pair``, ``text_flops_per_query``).

Convention: **FLOPs = 2 x multiply-adds (MACs)**. fvcore counts one multiply-add as one "flop";
:func:`count_flops` converts explicitly (``FlopCount.flops = 2 * macs``). Only matrix products,
convolutions and normalisations are counted by fvcore; element-wise work (activations, softmax,
residual adds) is ignored by convention and listed in ``FlopCount.ignored``. The closed forms
follow the same rule unless they say otherwise (X-Pool's ``~25 D`` element-wise term, spec §5.4).

fvcore does not know the fused attention operators that ``nn.MultiheadAttention`` and open_clip
use; :func:`attention_handles` adds them:

* ``aten::scaled_dot_product_attention`` (grad-enabled MHA path, custom attention): scores + weighted
  values, ``B L S E + B L S Ev`` MACs, dense (a causal or boolean mask does not reduce the count);
* ``aten::_native_multi_head_attention`` (the inference fast path of ``nn.MultiheadAttention``):
  in-projections, scores, weighted values and output projection;
* ``aten::baddbmm`` / ``aten::addbmm`` (batched GEMMs with an added bias);
* ``aten::matmul`` with a 1-D operand (a vector product, which fvcore's handle rejects).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import Tensor, nn

from psbench.backbone.flops import MAC_TO_FLOP
from psbench.method import Encoded, RetrievalMethod

#: element-wise / data-movement operators not counted by convention (fvcore ignores them silently
#: only if told; listing them keeps ``unsupported`` for operators that would really be missed)
ELEMENTWISE_OPS: tuple[str, ...] = (
    "aten::add",
    "aten::add_",
    "aten::sub",
    "aten::rsub",
    "aten::mul",
    "aten::mul_",
    "aten::div",
    "aten::div_",
    "aten::sigmoid",
    "aten::gelu",
    "aten::relu",
    "aten::softmax",
    "aten::exp",
    "aten::sum",
    "aten::mean",
    "aten::norm",
    "aten::linalg_vector_norm",
    "aten::clamp_min",
    "aten::sqrt",
    "aten::rsqrt",
    "aten::pow",
    "aten::neg",
    "aten::abs",
    "aten::unflatten",
    "aten::embedding",
    "aten::argmax",
    "aten::topk",
    "aten::scatter",
    "aten::masked_fill_",
    "aten::where",
    "aten::any",
    "aten::all",
    "aten::repeat",
    "aten::roll",
    "aten::index_select",
    "aten::new_zeros",
    "aten::zeros",
    "aten::ones",
    "aten::fill_",
    "aten::lt",
    "aten::le",
    "aten::ne",
    "aten::logical_not",
    "aten::bitwise_and",
    "aten::bitwise_or",
    "aten::to",
    "aten::type_as",
    "aten::zeros_like",
    "aten::ones_like",
    "aten::expand_as",
    "aten::clone",
    "aten::__or__",
    "aten::repeat_interleave",
    "aten::upsample_linear1d",  # Video Proxy's temporal-embedding resize: O(F W), negligible
    "aten::eye",  # X-Pool's I + W_l (residual folded into the last projection): D^2 adds per block
    "aten::new_ones",  # X-Pool fold_norms: alpha's weight-1 column for b_o
    "aten::linalg_vecdot",  # X-Pool's cosine numerator: an element-wise product + sum, like mul + sum
)

Handle = Callable[[list[Any], list[Any]], int]


# -- fvcore handles --------------------------------------------------------------------------------
def _shape(value: Any) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise ValueError("fvcore handle: an attention input has no complete shape in the traced graph")
    return list(shape)


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::scaled_dot_product_attention``: q (..., L, E), k (..., S, E), v (..., S, Ev)."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    length, src, e, ev = q[-2], k[-2], q[-1], v[-1]
    return batch * length * src * (e + ev)


def native_mha_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::_native_multi_head_attention``: q (B, L, E), k/v (B, S, E) -> projections + attention."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    e = q[-1]
    batch, length, src = math.prod(q[:-2]) if len(q) > 2 else 1, q[-2], k[-2]
    projections = batch * length * e * e + 2 * batch * src * e * e + batch * length * e * e  # q, k, v, out
    attention = 2 * batch * length * src * e  # scores + weighted values, summed over heads
    return projections + attention


def baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::baddbmm`` / ``aten::addbmm``: bias + (B, n, m) @ (B, m, p)."""
    a, b = _shape(inputs[1]), _shape(inputs[2])
    return a[0] * a[1] * a[2] * b[2]


def matmul_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """``aten::matmul`` with torch's full rules: 1-D operands (vector products) and broadcast batches."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(torch.Size(a[:-2]), torch.Size(b[:-2]))
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def attention_handles() -> dict[str, Handle]:
    """Handles for the operators fvcore's defaults miss on open_clip ViTs and our methods."""
    return {
        "aten::matmul": matmul_macs,
        "aten::scaled_dot_product_attention": sdpa_macs,
        "aten::_native_multi_head_attention": native_mha_macs,
        "aten::baddbmm": baddbmm_macs,
        "aten::addbmm": baddbmm_macs,
    }


# -- counting --------------------------------------------------------------------------------------
@dataclass
class FlopCount:
    """An fvcore count. ``macs`` as fvcore reports them; ``flops`` = 2 x ``macs``."""

    macs: int
    by_operator: dict[str, int]
    unsupported: dict[str, int]
    ignored: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return MAC_TO_FLOP * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "macs": self.macs,
            "by_operator_macs": self.by_operator,
            "unsupported_ops": self.unsupported,
        }


class _Call(nn.Module):
    """Wrap a callable on flat tensors as a module for tracing; ``owner`` registers its parameters."""

    def __init__(self, fn: Callable[..., Tensor], owner: nn.Module | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.owner = owner

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


def count_flops(
    fn: nn.Module | Callable[..., Tensor],
    inputs: Sequence[Tensor],
    owner: nn.Module | None = None,
    with_handles: bool = True,
) -> FlopCount:
    """Trace ``fn(*inputs)`` once with fvcore and count it.

    Runs under ``torch.no_grad``, as inference does, so ``nn.MultiheadAttention`` takes its fused
    fast path (``aten::_native_multi_head_attention``) exactly as in the timed code.

    ``with_handles=False`` gives fvcore's raw count (what it misses shows in ``unsupported``).
    """
    module = fn if isinstance(fn, nn.Module) else _Call(fn, owner)
    with torch.no_grad():
        analysis = FlopCountAnalysis(module, tuple(inputs))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        if with_handles:
            analysis.set_op_handle(**attention_handles())
            analysis.set_op_handle(**dict.fromkeys(ELEMENTWISE_OPS))
        total = int(analysis.total())
        by_op = {k: int(v) for k, v in analysis.by_operator().items()}
        unsupported = dict(Counter(analysis.unsupported_ops()))
    return FlopCount(total, by_op, unsupported, list(ELEMENTWISE_OPS) if with_handles else [])


def _flatten_encoded(enc: Encoded) -> tuple[list[str], list[Tensor]]:
    keys = sorted(enc)
    return keys, [enc[k] for k in keys]


def count_similarity_flops(method: RetrievalMethod, text: Encoded, video: Encoded) -> FlopCount:
    """fvcore count of ``method.similarity(text, video)`` on these (small) encodings."""
    text_keys, text_values = _flatten_encoded(text)
    video_keys, video_values = _flatten_encoded(video)
    split = len(text_keys)

    def call(*tensors: Tensor) -> Tensor:
        t = dict(zip(text_keys, tensors[:split], strict=True))
        v = dict(zip(video_keys, tensors[split:], strict=True))
        return method.similarity(t, v)

    return count_flops(call, [*text_values, *video_values], owner=method)


def count_encode_video_flops(method: RetrievalMethod, frames: Tensor, mask: Tensor) -> FlopCount:
    """fvcore count of ``method.encode_video(frames, mask)`` (offline stage)."""

    def call(f: Tensor, m: Tensor) -> tuple[Tensor, ...]:
        enc = method.encode_video(f, m)
        return tuple(enc[k] for k in sorted(enc))

    return count_flops(call, [frames, mask], owner=method)


def count_encode_text_flops(method: RetrievalMethod, tokens: Tensor) -> FlopCount:
    """fvcore count of ``method.encode_text(tokens)`` (online, per query batch)."""

    def call(t: Tensor) -> tuple[Tensor, ...]:
        enc = method.encode_text(t)
        return tuple(enc[k] for k in sorted(enc))

    return count_flops(call, [tokens], owner=method)


# -- closed forms: the methods' own hooks ------------------------------------------------------------
def closed_form_pair_flops(method: RetrievalMethod, frames: int, dim: int) -> float | None:
    """Closed-form online FLOPs per (query, video) pair (the method's hook), or None if it has none."""
    return method.online_flops_per_pair(frames, dim)


def closed_form_video_flops(method: RetrievalMethod, frames: int) -> int | None:
    """Closed-form offline FLOPs per video (the method's hook), or None if it has none."""
    return method.offline_flops_per_video(frames)


def closed_form_text_flops(method: RetrievalMethod) -> int:
    """Closed-form FLOPs per query of ``encode_text`` (the method's hook: the text tower and any head)."""
    return method.text_flops_per_query()


def similarity_flops_table(q: int, n: int, frames: int = 12, dim: int = 512) -> dict[str, float]:
    """Spec §7 online FLOPs for Q queries x N videos (text tower excluded), for quick reference."""
    pair_dot = 2.0 * dim
    xpool_impl = 4 * dim * dim + 4 * frames * dim + 25 * dim
    xpool_min = 2 * dim * dim + 4 * frames * dim + 25 * dim
    return {
        "dot_product": q * n * pair_dot,
        "xpool_as_implemented": q * n * xpool_impl + 2 * q * dim * dim,
        "xpool_folded_w_o": q * n * xpool_min + 2 * q * dim * dim,
    }
