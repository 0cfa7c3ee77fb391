"""FLOP counting: fvcore with our attention handles against the closed forms."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from psbench.backbone import flops as towers
from psbench.backbone.clip import create_clip
from psbench.catalog import create_method
from psbench.efficiency import flops

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vit_b32() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_clip("ViT-B-32-quickgelu").visual.eval()


def test_closed_form_vit_b32_is_4_41_gmac() -> None:
    macs = towers.vit_image_macs(towers.VIT_B_32)["total"]
    assert macs == pytest.approx(4.41e9, rel=2e-3)
    assert towers.MAC_TO_FLOP * macs == pytest.approx(8.8e9, rel=5e-3)


def test_shape_read_from_open_clip_vit(vit_b32: nn.Module) -> None:
    assert towers.ViTShape.from_visual(vit_b32) == towers.VIT_B_32


def test_fvcore_with_handles_matches_closed_form(vit_b32: nn.Module) -> None:
    count = flops.count_flops(vit_b32, [torch.randn(1, 3, 224, 224)])
    closed = towers.vit_image_macs(towers.VIT_B_32)["total"]
    assert count.unsupported == {}
    assert count.macs == pytest.approx(closed, rel=0.01)
    assert count.flops == 2 * count.macs


def test_raw_fvcore_misses_the_fused_attention(vit_b32: nn.Module) -> None:
    """Inference (no_grad) takes nn.MultiheadAttention's fused path: fvcore drops the whole attention layer."""
    raw = flops.count_flops(vit_b32, [torch.randn(1, 3, 224, 224)], with_handles=False)
    parts = towers.vit_image_macs(towers.VIT_B_32)
    attention_layer = sum(parts[k] for k in ("qkv", "attention_scores", "attention_values", "out_proj"))
    assert "aten::_native_multi_head_attention" in raw.unsupported
    assert parts["total"] - raw.macs == pytest.approx(attention_layer, rel=0.01)  # ~33% of the total


def test_raw_fvcore_misses_sdpa_with_grad(vit_b32: nn.Module) -> None:
    """With grad enabled MHA calls scaled_dot_product_attention: fvcore drops scores and weighted values."""
    analysis = FlopCountAnalysis(vit_b32, (torch.randn(1, 3, 224, 224),))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    parts = towers.vit_image_macs(towers.VIT_B_32)
    raw = analysis.total()
    assert "aten::scaled_dot_product_attention" in analysis.unsupported_ops()
    missing = parts["attention_scores"] + parts["attention_values"]
    assert parts["total"] - raw == pytest.approx(missing, rel=0.15)  # layer norms are counted


def test_sdpa_handle_on_grad_path() -> None:
    """The same grad-enabled path with our handles: the closed form of a tiny ViT within 1%."""
    visual = create_clip("psbench-tiny").visual
    analysis = FlopCountAnalysis(visual, (torch.randn(1, 3, 32, 32),))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.set_op_handle(**flops.attention_handles())
    closed = towers.vit_image_macs(towers.ViTShape.from_visual(visual))["total"]
    assert analysis.total() == pytest.approx(closed, rel=0.03)  # tiny widths: layer norms weigh more


def test_sdpa_handle_exact() -> None:
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    count = flops.count_flops(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), [q, k, v])
    assert count.macs == 2 * 3 * 5 * 7 * (8 + 4)


def test_text_tower_matches_closed_form() -> None:
    method = create_method("meanpool", create_clip("psbench-tiny")).eval()
    tokens = torch.randint(1, 100, (1, int(method.clip.context_length)))
    count = flops.count_encode_text_flops(method, tokens)
    assert count.unsupported == {}
    assert count.flops == pytest.approx(flops.closed_form_text_flops(method), rel=0.02)


@pytest.mark.parametrize("fold", [True, False])
def test_similarity_counts(fold: bool) -> None:
    """Dot product: exactly 2D per pair. X-Pool: fvcore's matmuls = closed form minus the element-wise term."""
    clip = create_clip("psbench-tiny")
    dim, frames, q, n = 64, 4, 3, 5
    meanpool = create_method("meanpool", clip).eval()
    text = {"text": torch.randn(q, dim)}
    count = flops.count_similarity_flops(meanpool, text, {"video": torch.randn(n, dim)})
    assert count.flops == q * n * flops.closed_form_pair_flops(meanpool, frames, dim)

    xpool = create_method("xpool", create_clip("psbench-tiny"), {"fold_out_proj": fold}).eval()
    with torch.no_grad():
        video = xpool.encode_video(torch.randn(n, frames, 3, 32, 32), torch.ones(n, frames, dtype=torch.bool))
        text = xpool.encode_text(torch.randint(1, 100, (q, 32)))
    count = flops.count_similarity_flops(xpool, text, video)
    assert count.unsupported == {}
    closed = flops.closed_form_pair_flops(xpool, frames, dim)
    matmul_only = closed - 25 * dim
    norms = count.by_operator.get("layer_norm", 0) * 2 / (q * n)
    assert count.flops / (q * n) - norms == pytest.approx(matmul_only, rel=0.01)


def test_offline_closed_form_per_method() -> None:
    """fvcore on encode_video vs the per-method closed forms (tiny backbone, 6 frames)."""
    from psbench.catalog import METHOD_TABLE

    for name in METHOD_TABLE:  # every catalogued method, ablation, form and floor
        method = create_method(name, create_clip("psbench-tiny")).eval()
        frames, mask = torch.randn(1, 6, 3, 32, 32), torch.ones(1, 6, dtype=torch.bool)
        count = flops.count_encode_video_flops(method, frames, mask)
        closed = flops.closed_form_video_flops(method, 6)
        assert count.flops == pytest.approx(closed, rel=0.03), name


@pytest.mark.parametrize(
    "opts", [{"fold_norms": True}, {"fold_norms": True, "num_heads": 2}, {}, {"fold_out_proj": False}]
)
def test_xpool_pair_flops_have_one_source(opts: dict) -> None:
    """flops.py's X-Pool per-pair figure is the method's; its matmul part equals a hand count and fvcore."""
    q, n, frames = 3, 5, 4
    xpool = create_method("xpool", create_clip("psbench-tiny"), opts).eval()
    d, h = xpool.pool_head.dim, xpool.pool_head.num_heads
    assert flops.closed_form_pair_flops(xpool, frames, d) == xpool.online_flops_per_pair(frames)

    k = h * frames + 1
    if xpool.fold_norms:  # MACs per pair: logits FD, text . rows KD, (3(K-1) + 6) frame-slot rows @ alpha (K-1)
        hand_macs = frames * d + k * d + (3 * (k - 1) + 6) * (k - 1)
        hand_elementwise = 8 * k + 36
    elif xpool.fold_out_proj:  # logits FD, W_o-folded weighted sum HFD, W_l D^2
        hand_macs, hand_elementwise = frames * d + h * frames * d + d * d, 25 * d
    else:  # logits FD, weighted sum FD, W_o and W_l 2D^2
        hand_macs, hand_elementwise = 2 * frames * d + 2 * d * d, 25 * d
    assert xpool.online_matmul_flops_per_pair(frames) == 2 * hand_macs
    assert xpool.online_flops_per_pair(frames) == 2 * hand_macs + hand_elementwise

    with torch.no_grad():
        video = xpool.encode_video(torch.randn(n, frames, 3, 32, 32), torch.ones(n, frames, dtype=torch.bool))
        text = xpool.encode_text(torch.randint(1, 100, (q, 32)))
    count = flops.count_similarity_flops(xpool, text, video)  # one block: q x n pairs
    assert count.unsupported == {}
    # fold_norms' per-query / per-block terms: t . gamma3 e_c and t . beta3 (2D per query), four D-dots
    # of constants and the linear applied to beta2 (D^2) in _fold_constant
    overhead = 2 * q * d + 4 * d + d * d if xpool.fold_norms else 0
    matmuls = count.macs - count.by_operator.get("layer_norm", 0) - overhead
    assert matmuls == q * n * hand_macs
