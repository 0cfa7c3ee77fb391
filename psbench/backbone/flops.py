"""Closed-form cost of the CLIP towers: multiply-adds of ViT blocks, of a frame pass, of the text tower.

Convention: **FLOPs = 2 x multiply-adds (MACs)**; only matrix products count (element-wise work is
left out, as fvcore does). Methods build their own closed forms from these (``offline_flops_per_video``,
``online_flops_per_pair``); ``psbench.efficiency.flops`` checks every one against fvcore.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

MAC_TO_FLOP = 2


def block_macs(tokens: int, width: int, mlp_width: int, keys: int | None = None) -> dict[str, int]:
    """MACs of one pre-LN transformer block on ``tokens`` queries attending to ``keys`` (dense)."""
    s = tokens if keys is None else keys
    return {
        "qkv": 3 * tokens * width * width,
        "attention_scores": tokens * s * width,
        "attention_values": tokens * s * width,
        "out_proj": tokens * width * width,
        "mlp": 2 * tokens * width * mlp_width,
    }


@dataclass(frozen=True)
class ViTShape:
    """The shapes that set a ViT image encoder's cost."""

    image_size: int
    patch_size: int
    in_channels: int
    width: int
    layers: int
    mlp_width: int
    output_dim: int
    projection: bool = True

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        return self.patches + 1

    @classmethod
    def from_visual(cls, visual: nn.Module) -> ViTShape:
        """Read the shapes off an open_clip ``VisionTransformer``."""
        conv = visual.conv1
        resblocks = visual.transformer.resblocks
        grid = visual.grid_size[0] if isinstance(visual.grid_size, tuple) else int(visual.grid_size)
        proj = getattr(visual, "proj", None)
        width = int(conv.out_channels)
        return cls(
            image_size=grid * int(conv.kernel_size[0]),
            patch_size=int(conv.kernel_size[0]),
            in_channels=int(conv.in_channels),
            width=width,
            layers=len(resblocks),
            mlp_width=int(resblocks[0].mlp.c_fc.out_features),
            output_dim=int(proj.shape[1]) if proj is not None else width,
            projection=proj is not None,
        )


#: OpenAI ViT-B/32 at 224 px (spec §1)
VIT_B_32 = ViTShape(image_size=224, patch_size=32, in_channels=3, width=768, layers=12, mlp_width=3072, output_dim=512)


def vit_image_macs(shape: ViTShape, extra_tokens: int = 0) -> dict[str, int]:
    """MACs of one image through the ViT: patch conv, every block, final projection.

    ``extra_tokens`` appended to every frame's sequence (Prompt Switch's prompts) join every block.
    """
    patch = shape.patches * shape.width * shape.in_channels * shape.patch_size**2
    per_block = block_macs(shape.tokens + extra_tokens, shape.width, shape.mlp_width)
    parts = {"patch_embed": patch}
    for key, value in per_block.items():
        parts[key] = shape.layers * value
    parts["proj"] = shape.width * shape.output_dim if shape.projection else 0
    parts["total"] = sum(parts.values())
    return parts


@dataclass(frozen=True)
class TextShape:
    context_length: int
    width: int
    layers: int
    mlp_width: int
    output_dim: int

    @classmethod
    def from_clip(cls, clip: nn.Module) -> TextShape:
        resblocks = clip.transformer.resblocks
        proj = clip.text_projection
        width = int(clip.transformer.width)
        out = int(proj.shape[1]) if isinstance(proj, Tensor) else int(proj.out_features)
        return cls(int(clip.context_length), width, len(resblocks), int(resblocks[0].mlp.c_fc.out_features), out)


def text_macs(shape: TextShape) -> int:
    """MACs of one query through the text tower (all context positions; projection of EOT only)."""
    per_block = sum(block_macs(shape.context_length, shape.width, shape.mlp_width).values())
    return shape.layers * per_block + shape.width * shape.output_dim


def frame_passes_flops(visual: nn.Module, frames: int, extra_tokens: int = 0) -> int:
    """FLOPs of ``frames`` independent image-tower passes (``extra_tokens`` more tokens per frame)."""
    return MAC_TO_FLOP * frames * vit_image_macs(ViTShape.from_visual(visual), extra_tokens)["total"]


def text_tower_flops(clip: nn.Module) -> int:
    """FLOPs of one query through the text tower."""
    return MAC_TO_FLOP * text_macs(TextShape.from_clip(clip))
