"""Token Shift (TS2-Net style): exact token moves, block wiring, and equivalence to meanP when off."""

from __future__ import annotations

import pytest
import torch

from baselines.tokenshift import shift_positions, shifted_block_forward, token_shift
from psbench.backbone.clip import blocks, create_clip, embed_frames
from psbench.catalog import create_method


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_clip("psbench-tiny").eval()


def test_positions_match_released_vit_b32_list():
    forward, backward = shift_positions(50, 7)
    assert forward == [1, 8, 15, 22, 29, 36, 43]
    assert backward == [4, 11, 18, 25, 32, 39, 46]
    with pytest.raises(ValueError, match="n_div"):
        shift_positions(5, 7)


def test_positions_for_vit_b16_follow_the_released_rule():
    """TS2-Net computes ``fold = T // n_div`` at run time and shifts ``arange(1, T, fold)`` forward and
    ``arange(4, T, fold)`` backward (until_module.py, PatchShiftModule.forward): for 197 tokens fold is 28."""
    forward, backward = shift_positions(197, 7)
    assert forward == [1, 29, 57, 85, 113, 141, 169]
    assert backward == [4, 32, 60, 88, 116, 144, 172]


def _coded_tokens(
    videos: int, frames: int, tokens: int, channels: int = 3, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """value = video*10000 + frame*100 + token + channel/1024, so every entry names its origin."""
    v = torch.arange(videos, dtype=dtype).view(-1, 1, 1, 1) * 10000.0
    f = torch.arange(frames, dtype=dtype).view(1, -1, 1, 1) * 100.0
    t = torch.arange(tokens, dtype=dtype).view(1, 1, -1, 1)
    c = torch.arange(channels, dtype=dtype).view(1, 1, 1, -1) / 1024.0  # exact in binary
    return (v + f + t + c).reshape(videos * frames, tokens, channels)


def test_shift_moves_exactly_the_released_tokens():
    videos, frames, tokens = 2, 12, 50
    x = _coded_tokens(videos, frames, tokens)
    out = token_shift(x, frames, 7).view(videos, frames, tokens, -1)
    # origin frame of every output token, read back from the code
    origin = ((out[..., 0] % 10000) // 100).long()  # (V, F, T)
    video_of = (out[..., 0] // 10000).long()
    assert torch.equal(video_of, torch.arange(videos).view(-1, 1, 1).expand_as(video_of))  # no leak
    assert torch.equal((out[..., 0] % 100).long(), torch.arange(tokens).expand(videos, frames, -1))
    # naive oracle: which frame each (frame, token) must come from
    fwd, bwd = set(range(1, 50, 7)), set(range(4, 50, 7))
    for f in range(frames):
        for t in range(tokens):
            src = f - 1 if (t in fwd and f > 0) else f + 1 if (t in bwd and f < frames - 1) else f
            assert int(origin[0, f, t]) == src, (f, t)
    # hand-picked cases: class token fixed, boundaries keep their own tokens
    assert out[0, 5, 0, 0] == 500.0
    assert out[0, 3, 1, 0] == 201.0 and out[0, 3, 4, 0] == 404.0
    assert out[0, 0, 1, 0] == 1.0 and out[0, 11, 4, 0] == 1104.0
    assert out[0, 0, 4, 0] == 104.0 and out[0, 11, 1, 0] == 1001.0
    # all channels of a moved token move together
    for ch in range(1, out.shape[-1]):
        assert torch.equal(out[..., ch] - ch / 1024.0, out[..., 0])
    moved = (origin[0] != torch.arange(frames).view(-1, 1)).sum(1)
    assert moved.tolist() == [7] + [14] * 10 + [7]


def test_shifted_block_equals_open_clip_block_with_shift_after_ln1(clip):
    block = blocks(clip.visual)[0]
    x = torch.randn(2 * 4, 17, 64)
    expected_ln1 = block.ln_1

    class ShiftedLN(torch.nn.Module):
        def forward(self, y):
            return token_shift(expected_ln1(y), 4, 7)

    with torch.no_grad():
        ours = shifted_block_forward(block, x, 4, 7)
        block.ln_1 = ShiftedLN()  # open_clip then uses the shifted tensor as Q, K and V
        try:
            reference = block(x)
        finally:
            block.ln_1 = expected_ln1
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_residual_path_is_not_shifted(clip):
    block = blocks(clip.visual)[1]
    saved = {k: v.clone() for k, v in block.state_dict().items()}
    with torch.no_grad():
        block.attn.out_proj.weight.zero_()
        block.attn.out_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()
        x = _coded_tokens(1, 4, 17, 64, dtype=torch.float32) / 100.0
        out = shifted_block_forward(block, x, 4, 7)
    block.load_state_dict(saved)
    assert torch.equal(out, x)


def test_shift_disabled_equals_meanpool(clip):
    frames = torch.randn(2, 5, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        off = create_method("tokenshift", clip, {"shift_layers": ()}).encode_video(frames, mask)["video"]
        mean = create_method("meanpool", clip).encode_video(frames, mask)["video"]
        on = create_method("tokenshift", clip).encode_video(frames, mask)["video"]
    torch.testing.assert_close(off, mean, rtol=0, atol=1e-6)
    assert not torch.allclose(on, mean, atol=1e-4)


def test_default_layers_are_the_last_two(clip):
    method = create_method("tokenshift", clip)
    assert method.shift_layers == (0, 1)  # the tiny ViT has 2 blocks
    assert create_method("tokenshift", clip, {"shift_layers": [-1]}).shift_layers == (1,)
    with pytest.raises(ValueError, match="out of range"):
        create_method("tokenshift", clip, {"shift_layers": (2,)})
    assert sum(p.numel() for n, p in method.named_parameters() if not n.startswith("clip.")) == 0


def _frame_changes(method, frames: torch.Tensor, k: int) -> list[bool]:
    perturbed = frames.clone()
    perturbed[:, k] += torch.randn_like(perturbed[:, k])
    with torch.no_grad():
        a = method.frame_features(frames)[0]
        b = method.frame_features(perturbed)[0]
    return [not torch.allclose(a[f], b[f], rtol=0, atol=1e-6) for f in range(frames.shape[1])]


def test_information_crosses_frames_only_through_shifted_layers(clip):
    torch.manual_seed(1)
    frames = torch.randn(1, 8, 3, 32, 32)
    k = 3
    assert _frame_changes(create_method("tokenshift", clip, {"shift_layers": ()}), frames, k) == [
        f == k for f in range(8)
    ]
    one = _frame_changes(create_method("tokenshift", clip, {"shift_layers": (1,)}), frames, k)
    assert one == [abs(f - k) <= 1 for f in range(8)]
    two = _frame_changes(create_method("tokenshift", clip), frames, k)  # layers 0 and 1: two hops
    assert two == [abs(f - k) <= 2 for f in range(8)]


def test_single_frame_videos_are_unaffected(clip):
    x = embed_frames(clip.visual, torch.randn(3, 3, 32, 32))
    block = blocks(clip.visual)[0]
    with torch.no_grad():
        torch.testing.assert_close(shifted_block_forward(block, x, 1, 7), block(x), rtol=0, atol=1e-6)
