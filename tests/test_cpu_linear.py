"""cpu_linear: oneDNN float32 linear at inference equals F.linear; training, tracing and non-IEEE modes fall back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from psbench.ops import linear as cpu_linear


def test_equals_functional_linear_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 70, 96, generator=gen)  # (B, L, K)
    weight, bias = torch.randn(130, 96, generator=gen), torch.randn(130, generator=gen)  # (M, K), (M,)
    cases = [
        (x, weight, bias),  # 3-D input with bias
        (x[:, ::2], weight, None),  # non-contiguous input
        (x[0], weight.t().contiguous().t(), bias),  # non-contiguous weight
    ]
    with torch.inference_mode():
        for args in cases:
            x_, w_, b_ = args
            # oneDNN and MKL sum the K products in different orders (per kernel, per CPU): each is within
            # gamma_{K+1} (|x| @ |w|.T + |b|) of the exact value, so they differ by at most twice that
            k = x_.shape[-1] + 1
            magnitude = x_.double().abs() @ w_.double().abs().t() + (0 if b_ is None else b_.double().abs())
            bound = 2 * k * 2.0**-24 / (1 - k * 2.0**-24) * magnitude
            got, expected = cpu_linear.linear(*args), F.linear(*args)
            assert got.shape == expected.shape and got.dtype == torch.float32
            assert ((got.double() - expected.double()).abs() <= bound).all()


def test_dispatch_rules() -> None:
    x, weight = torch.randn(8, 16), torch.randn(4, 16)
    available = cpu_linear.onednn_fp32_available()
    with torch.no_grad():
        assert cpu_linear._use_onednn(x, weight, None) is available
        assert not cpu_linear._use_onednn(x.double(), weight.double(), None)  # float32 only
        assert not cpu_linear._use_onednn(x[0], weight, None)  # a vector input goes to F.linear
    trainable = weight.clone().requires_grad_()
    assert not cpu_linear._use_onednn(x, trainable, None)  # needs autograd: F.linear
    out = cpu_linear.linear(x, trainable)
    out.sum().backward()
    torch.testing.assert_close(trainable.grad, x.sum(0).expand(4, 16))


def test_tracing_falls_back_so_fvcore_can_count() -> None:
    weight = torch.randn(4, 16)
    traced = torch.jit.trace(lambda x: cpu_linear.linear(x, weight), torch.randn(8, 16))
    assert "_linear_pointwise" not in str(traced.graph)


def test_reduced_precision_mode_disables_onednn() -> None:
    settings = getattr(torch.backends.mkldnn, "matmul", None)
    if settings is None or not hasattr(settings, "fp32_precision"):
        pytest.skip("this torch has no oneDNN float32 precision setting")
    before = settings.fp32_precision
    try:
        settings.fp32_precision = "bf16"
        assert not cpu_linear.onednn_fp32_available()
    finally:
        settings.fp32_precision = before
    assert cpu_linear.onednn_fp32_available() is (torch.backends.mkldnn.is_available())
