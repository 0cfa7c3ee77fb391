"""Video Proxy (CLIP-ViP style, Xue et al. 2023), spec §4 and §10.30-32.

One sequence per video: ``M`` proxy tokens (CLIP's class embedding plus ``num_proxies - 1`` added
ones, randn-initialised with std 1) followed by the patch tokens of every frame. All proxies get
positional embedding 0; patches get their spatial positional embedding plus a zero-initialised
temporal embedding (linearly interpolated along time when F differs from ``temporal_size``).
After ``ln_pre``, every block uses proxy-guided attention: patches of frame n attend to the M
proxies and their own frame's patches; proxies attend to everything. The first proxy goes through
``ln_post`` and the projection. The per-video embedding is stored offline; scoring is a dot product.

VIP has no padding mask (its sampler always yields F frames), so every frame takes part here too;
the ``mask`` argument of ``encode_video`` is accepted but not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psbench.backbone.clip import blocks, head
from psbench.backbone.flops import MAC_TO_FLOP, ViTShape, block_macs
from psbench.method import Encoded, RetrievalMethod, l2_normalize

VIP_LOGIT_SCALE_MAX = math.log(200.0)
VIP_LOGIT_SCALE_INIT = 4.60


def proxy_attention_mask(num_proxies: int, num_frames: int, patches: int, device: torch.device | None = None) -> Tensor:
    """Boolean (L, L) mask, L = M + F*P, True where attention is NOT allowed (nn.MultiheadAttention).

    Rows are queries. Proxy rows see every key; a patch row of frame n sees the M proxies and the
    P patches of frame n only.
    """
    length = num_proxies + num_frames * patches
    frame_of = torch.full((length,), -1, dtype=torch.long, device=device)  # -1 marks proxies
    frame_of[num_proxies:] = torch.arange(num_frames, device=device).repeat_interleave(patches)
    same_frame = frame_of[:, None] == frame_of[None, :]  # (L, L)
    allowed = same_frame | (frame_of[:, None] < 0) | (frame_of[None, :] < 0)  # (L, L)
    return ~allowed


def temporal_embedding_for(temporal: Tensor, num_frames: int) -> Tensor:
    """(1, T0, W) -> (1, F, W), linear interpolation along time (align_corners=False) if F != T0."""
    if temporal.shape[1] == num_frames:
        return temporal
    resized = F.interpolate(temporal.transpose(1, 2), size=num_frames, mode="linear")  # (1, W, F)
    return resized.transpose(1, 2)  # (1, F, W)


def masked_block_forward(block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
    """An open_clip ResidualAttentionBlock with a boolean attention mask. (V, L, W) -> (V, L, W)."""
    y = block.ln_1(x)  # (V, L, W)
    x = x + block.ls_1(block.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0])  # (V, L, W)
    return x + block.ls_2(block.mlp(block.ln_2(x)))  # (V, L, W)


class VideoProxy(RetrievalMethod):
    """CLIP-ViP's video proxy tokens with proxy-guided attention in every vision block.

    Options: ``num_proxies`` (M = 4: the class token + 3 added), ``temporal_size`` (12),
    ``clamp_logit_scale_to_ln200`` (VIP clamps the temperature to [0, ln 200]; off by default so
    all methods share the harness clamp [0, ln 100]).
    """

    def __init__(
        self,
        clip: nn.Module,
        num_proxies: int = 4,
        temporal_size: int = 12,
        clamp_logit_scale_to_ln200: bool = False,
    ) -> None:
        super().__init__(clip)
        if num_proxies < 1 or temporal_size < 1:
            raise ValueError(f"num_proxies and temporal_size must be >= 1, got {num_proxies}, {temporal_size}")
        visual = clip.visual
        width = visual.class_embedding.shape[-1]
        self.num_proxies = num_proxies
        self.clamp_logit_scale_to_ln200 = clamp_logit_scale_to_ln200
        self.added_cls = nn.Parameter(torch.randn(num_proxies - 1, width))  # std 1, as released
        self.temporal_embedding = nn.Parameter(torch.zeros(1, temporal_size, width))
        self._mask_cache: dict[tuple[int, int, str], Tensor] = {}

    def tokens(self, frames: Tensor) -> Tensor:
        """Sequence entering the first block (after ln_pre). (N, F, 3, H, W) -> (N, M + F*P, W)."""
        n, f = frames.shape[:2]
        visual = self.clip.visual
        x = visual.conv1(frames.flatten(0, 1))  # (N*F, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N*F, P, W)
        pos = visual.positional_embedding.to(x.dtype)  # (1 + P, W)
        x = x + pos[1:]  # (N*F, P, W)
        x = x.view(n, f, -1, x.shape[-1])  # (N, F, P, W)
        x = x + temporal_embedding_for(self.temporal_embedding, f).to(x.dtype).unsqueeze(2)  # (N, F, P, W)
        proxies = torch.cat([visual.class_embedding[None], self.added_cls], 0).to(x.dtype)  # (M, W)
        proxies = (proxies + pos[0]).expand(n, -1, -1)  # (N, M, W)
        x = torch.cat([proxies, x.flatten(1, 2)], dim=1)  # (N, M + F*P, W)
        return visual.ln_pre(x)

    def attention_mask(self, num_frames: int, patches: int, device: torch.device) -> Tensor:
        num_frames, patches = int(num_frames), int(patches)  # plain ints: tracing (fvcore) may hand us tensors
        key = (num_frames, patches, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = proxy_attention_mask(self.num_proxies, num_frames, patches, device)
        return self._mask_cache[key]

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        n, f = frames.shape[:2]
        visual = self.clip.visual
        x = self.tokens(frames)  # (N, L, W)
        attn_mask = self.attention_mask(f, (x.shape[1] - self.num_proxies) // f, x.device)  # (L, L)
        for block in blocks(visual):
            x = masked_block_forward(block, x, attn_mask)  # (N, L, W)
        return {"video": l2_normalize(head(visual, x[:, 0]))}  # (N, D)

    def offline_flops_per_video(self, frames: int) -> int:
        """One sequence of M proxies + F*P patches through every block, dense masked attention."""
        shape = ViTShape.from_visual(self.clip.visual)
        seq = self.num_proxies + frames * shape.patches
        patch = frames * shape.patches * shape.width * shape.in_channels * shape.patch_size**2
        layers = shape.layers * sum(block_macs(seq, shape.width, shape.mlp_width).values())
        proj = shape.width * shape.output_dim if shape.projection else 0
        return MAC_TO_FLOP * (patch + layers + proj)

    def clamp_logit_scale(self) -> None:
        if not self.clamp_logit_scale_to_ln200:
            super().clamp_logit_scale()
            return
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0.0, VIP_LOGIT_SCALE_MAX)

    def extra_state(self) -> dict[str, object]:
        return {
            "num_proxies": self.num_proxies,
            "temporal_size": int(self.temporal_embedding.shape[1]),
            "logit_scale_max": VIP_LOGIT_SCALE_MAX if self.clamp_logit_scale_to_ln200 else math.log(100.0),
            "vip_logit_scale_max": VIP_LOGIT_SCALE_MAX,
            "vip_logit_scale_init_not_applied": VIP_LOGIT_SCALE_INIT,
            "padding_mask_used": False,
        }
