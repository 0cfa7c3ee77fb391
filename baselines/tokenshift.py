"""Token Shift + mean-pool (TS2-Net style, Zhao et al. 2022), spec §3.1 and §10.24-25.

In the chosen vision blocks (default: the last two, i.e. blocks 10 and 11 of ViT-B/32) the
LayerNorm-ed input of self-attention is rearranged per video before it serves as Q, K and V:
at some token positions every frame receives the token of the previous frame ("forward"), at
others the token of the next frame ("backward"). All channels of a moved token move; the class
token never moves; the residual and the MLP path are not shifted. The video embedding is meanP
over the resulting frame features. No new parameters.

Token positions, as released: with ``T`` tokens per frame (class + patches) and
``fold = T // n_div``, forward positions are ``1, 1 + fold, 1 + 2 fold, ... < T`` and backward
positions ``4, 4 + fold, ... < T`` (for ViT-B/32, T = 50, fold = 7: 1, 8, ..., 43 and 4, 11, ..., 46).
The output starts as a copy of the input, so frame 0 keeps its own forward tokens and the last frame
keeps its own backward tokens. If the two position sets overlap (small ``fold``), the backward
assignment is written second and wins, except on the last frame, which the backward move skips.
All F frames take part, padded ones included (the released code shifts zero-padded frames too).
"""

from __future__ import annotations

from torch import Tensor, nn

from psbench.backbone.clip import blocks, embed_frames, head
from psbench.backbone.flops import frame_passes_flops
from psbench.method import Encoded, RetrievalMethod, masked_mean_of_normalized

#: offset of the first backward-shifted token relative to the first forward one (released value)
BACKWARD_OFFSET = 3


def shift_positions(num_tokens: int, n_div: int) -> tuple[list[int], list[int]]:
    """Token indices shifted forward (from frame t-1) and backward (from frame t+1)."""
    fold = num_tokens // n_div
    if fold < 1:
        raise ValueError(f"token shift needs at least n_div={n_div} tokens per frame, got {num_tokens}")
    forward = list(range(1, num_tokens, fold))
    backward = list(range(1 + BACKWARD_OFFSET, num_tokens, fold))
    return forward, backward


def token_shift(x: Tensor, num_frames: int, n_div: int) -> Tensor:
    """Shift whole tokens across neighbouring frames of each video.

    x: (V*F, T, W) with the F frames of a video contiguous -> (V*F, T, W).
    """
    vf, t, w = x.shape
    if vf % num_frames:
        raise ValueError(f"{vf} frame rows are not a multiple of {num_frames} frames per video")
    forward, backward = shift_positions(t, n_div)
    x = x.reshape(vf // num_frames, num_frames, t, w)  # (V, F, T, W)
    out = x.clone()  # (V, F, T, W); boundaries keep their own tokens
    out[:, 1:, forward] = x[:, :-1, forward]  # frame f <- frame f-1
    out[:, :-1, backward] = x[:, 1:, backward]  # frame f <- frame f+1
    return out.reshape(vf, t, w)  # (V*F, T, W)


def shifted_block_forward(block: nn.Module, x: Tensor, num_frames: int, n_div: int) -> Tensor:
    """An open_clip ResidualAttentionBlock with the token shift on LN1's output. (V*F, T, W)."""
    s = token_shift(block.ln_1(x), num_frames, n_div)  # (V*F, T, W)
    x = x + block.ls_1(block.attn(s, s, s, need_weights=False)[0])  # (V*F, T, W)
    return x + block.ls_2(block.mlp(block.ln_2(x)))  # (V*F, T, W)


class TokenShift(RetrievalMethod):
    """CLIP with whole-token temporal shift in the last vision blocks, then mean pooling.

    Options: ``shift_layers`` (block indices, negative allowed; ``None`` = the last two; ``()``
    disables the shift and gives meanP), ``n_div`` (7 as released).
    """

    def __init__(self, clip: nn.Module, shift_layers: tuple[int, ...] | None = None, n_div: int = 7) -> None:
        super().__init__(clip)
        depth = len(blocks(clip.visual))
        requested = (depth - 2, depth - 1) if shift_layers is None else tuple(shift_layers)
        for i in requested:
            if not -depth <= i < depth:
                raise ValueError(f"shift layer {i} out of range for a {depth}-block vision transformer")
        if n_div < 1:
            raise ValueError(f"n_div must be >= 1, got {n_div}")
        self.shift_layers = tuple(sorted({i % depth for i in requested}))
        self.n_div = n_div

    def frame_features(self, frames: Tensor) -> Tensor:
        """Per-frame CLIP features with the shift. frames (N, F, 3, H, W) -> (N, F, D)."""
        n, f = frames.shape[:2]
        visual = self.clip.visual
        x = embed_frames(visual, frames.flatten(0, 1))  # (N*F, T, W)
        for i, block in enumerate(blocks(visual)):
            x = shifted_block_forward(block, x, f, self.n_div) if i in self.shift_layers else block(x)
        return head(visual, x[:, 0]).view(n, f, -1)  # (N, F, D)

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        return {"video": masked_mean_of_normalized(self.frame_features(frames), mask)}  # (N, D)

    def offline_flops_per_video(self, frames: int) -> int:
        """F CLIP frame passes: the shift moves tokens and costs no FLOPs."""
        return frame_passes_flops(self.clip.visual, frames)

    def extra_state(self) -> dict[str, object]:
        return {"shift_layers": list(self.shift_layers), "n_div": self.n_div, "padded_frames_shifted": True}
