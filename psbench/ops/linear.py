"""Exact float32 ``x @ weight.T + bias`` on CPU through oneDNN, for inference.

torch computes a float32 CPU matmul with MKL's sgemm. On some CPUs that is far from the machine's
float32 peak: on the 2-core AMD EPYC development machine MKL reaches about 211 GFLOP/s while the
oneDNN library that torch also ships reaches about 451 GFLOP/s on the same 4096^3 product, in plain
IEEE float32 (no reduced-precision mode; only the summation order differs). ``linear`` calls
oneDNN's linear operator directly when that is safe:

- every tensor is a float32 CPU tensor and oneDNN is available;
- no gradient is needed (the operator has no autograd formula), so training is unaffected;
- not under ``torch.jit.trace`` (fvcore's FLOP counting), which cannot record the operator;
- oneDNN's float32 math mode is IEEE (``torch.backends.mkldnn.matmul.fp32_precision`` is
  ``"none"``/``"ieee"``), so a global bf16/tf32 setting never leaks reduced precision in here.

Otherwise it is ``torch.nn.functional.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_IEEE_MODES = ("none", "ieee")


def onednn_fp32_available() -> bool:
    """oneDNN's linear operator is present and its float32 math mode is IEEE."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    matmul_settings = getattr(torch.backends.mkldnn, "matmul", None)
    mode = getattr(matmul_settings, "fp32_precision", "none")
    return mode in _IEEE_MODES


def _use_onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    if torch.jit.is_tracing():  # the tracer cannot record the operator's empty Scalar?[] argument
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return False
    if weight.dim() != 2 or x.dim() < 2 or x.numel() == 0 or weight.numel() == 0:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return onednn_fp32_available()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., K), weight (M, K), bias (M,) or None -> (..., M); oneDNN where safe (see module doc)."""
    if _use_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "none", [], "")
    return F.linear(x, weight, bias)
