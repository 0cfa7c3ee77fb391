"""Prompt aggregation (spec §6.4): each frame's class token attends to the final prompts of its chunk.

``pooled = cls + MHA(cls, prompts, prompts)`` on the final hidden states, before ``ln_post``; neither
the query nor the keys are layer-normed. ``out_proj`` starts at zero, so at initialisation the frame
feature is CLIP's class-token feature (with the prompts present in the sequence).
"""

from __future__ import annotations

from torch import Tensor, nn


def aggregation_heads(width: int) -> int:
    """Heads of the aggregation MHA: one per 64 channels (12 for ViT-B/32), at least one."""
    return max(1, width // 64)


class PromptAggregation(nn.Module):
    """Residual multi-head attention from class tokens (queries) to prompt tokens (keys and values)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, aggregation_heads(width), batch_first=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """xavier-uniform in-projection, zero in-projection bias, zero out_proj weight and bias.

        Set explicitly: the official code relies on PyTorch's defaults for the in-projection, which
        some ``from_pretrained`` paths suppress (spec §6.4).
        """
        nn.init.xavier_uniform_(self.attn.in_proj_weight)
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, cls: Tensor, prompts: Tensor) -> Tensor:
        """cls (C, Fc, W) queries; prompts (C, K, W) keys/values -> (C, Fc, W) pooled tokens."""
        return cls + self.attn(cls, prompts, prompts, need_weights=False)[0]  # (C, Fc, W)
