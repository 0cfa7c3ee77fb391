"""Video Proxy (CLIP-ViP style): token layout, proxy-guided attention mask, and information flow."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.videoproxy import masked_block_forward, proxy_attention_mask, temporal_embedding_for
from psbench.backbone.clip import blocks, create_clip
from psbench.catalog import create_method

PATCHES = 16  # psbench-tiny: 32 px frames, 8 px patches


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_clip("psbench-tiny").eval()


@pytest.fixture()
def method(clip):
    torch.manual_seed(1)
    m = create_method("videoproxy", clip).eval()
    with torch.no_grad():
        m.temporal_embedding.normal_()  # non-zero so that tests see it
    return m


def test_mask_pattern_by_hand():
    # M = 2 proxies, F = 3 frames, P = 2 patches: L = 8
    allowed = ~proxy_attention_mask(2, 3, 2)
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],  # proxy 0
            [1, 1, 1, 1, 1, 1, 1, 1],  # proxy 1
            [1, 1, 1, 1, 0, 0, 0, 0],  # frame 0
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 1, 0, 0],  # frame 1
            [1, 1, 0, 0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0, 1, 1],  # frame 2
            [1, 1, 0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    assert proxy_attention_mask(4, 12, 49).shape == (592, 592)


def test_mask_for_vit_b16_patches():
    """196 patches per frame (ViT-B/16): each patch sees the proxies and its own frame only; proxies see all."""
    m, f, p = 4, 3, 196
    allowed = ~proxy_attention_mask(m, f, p)  # (L, L), L = M + F*P
    assert allowed.shape == (m + f * p, m + f * p)
    assert allowed[:m].all()  # proxies attend to every token
    frame_of = torch.arange(f).repeat_interleave(p)  # (F*P,)
    patches = allowed[m:]  # (F*P, L)
    assert patches[:, :m].all()
    assert torch.equal(patches[:, m:], frame_of[:, None] == frame_of[None, :])


def test_new_parameters_and_init(clip):
    torch.manual_seed(3)
    m = create_method("videoproxy", clip, {"num_proxies": 4, "temporal_size": 12})
    names = {n: p.shape for n, p in m.named_parameters() if not n.startswith("clip.")}
    assert names == {"added_cls": (3, 64), "temporal_embedding": (1, 12, 64)}
    assert torch.count_nonzero(m.temporal_embedding) == 0
    assert 0.7 < float(m.added_cls.detach().std()) < 1.3  # randn, std 1 (192 samples)


def test_temporal_interpolation_is_linear():
    t = torch.tensor([[[0.0], [4.0]]])  # (1, T0=2, W=1)
    out = temporal_embedding_for(t, 4)  # align_corners=False: sample points -0.25, 0.25, 0.75, 1.25 (clamped)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 1.0, 3.0, 4.0]))
    assert temporal_embedding_for(t, 2) is t


def test_token_layout(method, clip):
    torch.manual_seed(2)
    frames = torch.randn(2, 6, 3, 32, 32)
    visual = clip.visual
    saved = visual.ln_pre
    visual.ln_pre = torch.nn.Identity()
    try:
        with torch.no_grad():
            x = method.tokens(frames)
    finally:
        visual.ln_pre = saved
    m = method.num_proxies
    assert x.shape == (2, m + 6 * PATCHES, 64)
    pos = visual.positional_embedding
    with torch.no_grad():
        proxies = torch.cat([visual.class_embedding[None], method.added_cls]) + pos[0]
        temporal = temporal_embedding_for(method.temporal_embedding, 6)[0]  # (6, W)
        for v in range(2):
            torch.testing.assert_close(x[v, :m], proxies)
            for f in range(6):
                conv = visual.conv1(frames[v, f][None]).flatten(2)[0].t()  # (P, W)
                expected = conv + pos[1:] + temporal[f]
                torch.testing.assert_close(x[v, m + f * PATCHES : m + (f + 1) * PATCHES], expected)


def _naive_split_attention(block, x: torch.Tensor, m: int, frames: int, patches: int) -> torch.Tensor:
    """VIP's split computation, literally: proxies attend to all, frame-n patches to [proxies; frame n]."""
    attn = block.attn
    heads, width = attn.num_heads, x.shape[-1]
    dh = width // heads
    q, k, v = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def attend(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        outs = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            w = (q[rows, sl] @ k[cols, sl].t() / math.sqrt(dh)).softmax(-1)
            outs.append(w @ v[cols, sl])
        return torch.cat(outs, -1)

    out = torch.empty_like(x)
    everything = torch.arange(x.shape[0])
    out[:m] = attend(torch.arange(m), everything)
    for n in range(frames):
        own = torch.arange(m + n * patches, m + (n + 1) * patches)
        out[own] = attend(own, torch.cat([torch.arange(m), own]))
    return attn.out_proj(out)


def test_masked_attention_equals_split_computation(method, clip):
    torch.manual_seed(4)
    frames = torch.randn(1, 3, 3, 32, 32)
    block = blocks(clip.visual)[0]
    m = method.num_proxies
    with torch.no_grad():
        x = method.tokens(frames)  # (1, L, W)
        ours = masked_block_forward(block, x, method.attention_mask(3, PATCHES, x.device))
        y = _naive_split_attention(block, block.ln_1(x[0]), m, 3, PATCHES)
        h = x[0] + y
        expected = h + block.mlp(block.ln_2(h))
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-5)


def test_one_layer_isolates_frames_but_not_proxies(method, clip):
    torch.manual_seed(5)
    frames = torch.randn(1, 4, 3, 32, 32)
    perturbed = frames.clone()
    k = 2
    perturbed[:, k] += torch.randn_like(perturbed[:, k])
    block = blocks(clip.visual)[0]
    m = method.num_proxies
    with torch.no_grad():
        outs = []
        for fr in (frames, perturbed):
            x = method.tokens(fr)
            outs.append(masked_block_forward(block, x, method.attention_mask(4, PATCHES, x.device))[0])
    a, b = outs
    assert not torch.allclose(a[:m], b[:m], atol=1e-6)  # every proxy sees frame k
    for f in range(4):
        sl = slice(m + f * PATCHES, m + (f + 1) * PATCHES)
        assert torch.allclose(a[sl], b[sl], rtol=0, atol=0) == (f != k), f
    # after two layers, information reaches other frames through the proxies
    with torch.no_grad():
        two = [masked_block_forward(block, o[None], method.attention_mask(4, PATCHES, o.device))[0] for o in outs]
    assert not torch.allclose(two[0][m : m + PATCHES], two[1][m : m + PATCHES], atol=1e-6)


def test_readout_is_the_first_proxy(method, clip):
    torch.manual_seed(6)
    frames = torch.randn(2, 6, 3, 32, 32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        video = method.encode_video(frames, mask)["video"]
        x = method.tokens(frames)
        for block in blocks(clip.visual):
            x = masked_block_forward(block, x, method.attention_mask(6, PATCHES, x.device))
        first = clip.visual.ln_post(x[:, 0]) @ clip.visual.proj
    torch.testing.assert_close(video, first / first.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(video.norm(dim=-1), torch.ones(2))


def test_logit_scale_clamp_option(clip):
    m = create_method("videoproxy", clip, {"clamp_logit_scale_to_ln200": True})
    saved = clip.logit_scale.detach().clone()
    try:
        with torch.no_grad():
            clip.logit_scale.fill_(10.0)
        m.clamp_logit_scale()
        assert math.isclose(float(clip.logit_scale.detach()), math.log(200.0), rel_tol=1e-6)
        create_method("videoproxy", clip).clamp_logit_scale()
        assert math.isclose(float(clip.logit_scale.detach()), math.log(100.0), rel_tol=1e-6)
    finally:
        with torch.no_grad():
            clip.logit_scale.copy_(saved)
