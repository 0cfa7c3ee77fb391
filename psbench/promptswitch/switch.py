"""The prompt switch (spec §6.3): a vision block whose attention input has its prompt block transposed.

Every frame carries ``T`` CLIP tokens followed by ``np`` prompt tokens, and frames are grouped into
consecutive chunks of ``np`` frames. Inside a block only the layer-normed attention input is switched:
within each chunk, prompt slot (frame j, prompt p) receives the normalised token of slot (frame p,
prompt j). Attention still runs within each frame's own ``T + np`` tokens; the residual stream and
the MLP keep the original slots (spec §10.7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from psbench.backbone.clip import BackboneError


def switch_prompts(h: Tensor, num_tokens: int, num_prompts: int) -> Tensor:
    """Transpose the frame and prompt axes of the prompt block within each chunk of ``num_prompts`` frames.

    h: (C * np, T + np, W) with frames of a chunk consecutive. The first ``num_tokens`` tokens of each
    frame are returned untouched. The operation is an involution.
    """
    n, s, w = h.shape
    if s != num_tokens + num_prompts or n % num_prompts:
        raise ValueError(
            f"switch_prompts: got {n} frames x {s} tokens; expected a multiple of {num_prompts} frames "
            f"of {num_tokens} + {num_prompts} tokens"
        )
    prompts = h[:, num_tokens:].reshape(n // num_prompts, num_prompts, num_prompts, w)  # (C, f, p, W)
    prompts = prompts.transpose(1, 2).reshape(n, num_prompts, w)  # (C*np, np, W), slot (j, p) <- (p, j)
    return torch.cat([h[:, :num_tokens], prompts], dim=1)  # (C*np, T + np, W)


def check_block(block: nn.Module) -> None:
    """Refuse blocks whose forward this module cannot reproduce from their submodules."""
    needed = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
    missing = [name for name in needed if not hasattr(block, name)]
    if missing or hasattr(block, "ln_1_kv") or not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise BackboneError(
            f"Prompt Switch needs open_clip ResidualAttentionBlock vision blocks (self-attention, "
            f"nn.MultiheadAttention); got {type(block).__name__} (missing: {', '.join(missing) or 'none'})"
        )
    if not block.attn.batch_first:
        raise BackboneError("Prompt Switch expects batch-first attention in the vision blocks")


def block_forward(block: nn.Module, x: Tensor, num_tokens: int, num_prompts: int, switch: bool) -> Tensor:
    """One open_clip pre-LN block with the switch applied to the attention input only.

    x: (C * np, T + np, W) -> same shape. ``switch=False`` gives the plain block (prompts per frame).
    """
    h = block.ln_1(x)  # (N, S, W)
    if switch:
        h = switch_prompts(h, num_tokens, num_prompts)  # (N, S, W)
    x = x + block.ls_1(block.attn(h, h, h, need_weights=False)[0])  # (N, S, W)
    return x + block.ls_2(block.mlp(block.ln_2(x)))  # (N, S, W)
