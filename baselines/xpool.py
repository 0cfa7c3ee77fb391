"""X-Pool (Gorti et al. 2022): text-conditioned pooling of frame embeddings, spec §5 and §10.17.

For a text t and the frames f_1..F of a video (raw, un-normalised CLIP embeddings):

1. ``t~ = LN1(t)``, ``f~ = LN1(f)`` (one LayerNorm shared by text and frames);
2. cross-attention, q from text, k and v from frames, softmax over frames (padded frames -inf),
   ``o = W_o (sum_f a_f v_f) + b_o``;
3. ``r = LN2(o)``; 4. ``psi(v|t) = LN3(r + Dropout(W_l r + b_l))``;
5. score ``cos(t, psi(v|t))`` with the *raw* text embedding.

All linear weights start as identity, biases as zero. Offline (``encode_video``) we cache LN1 and
the k and v projections of the frames. Because the attention weights of each head sum to 1 and
``W_o`` is linear, ``W_o`` is folded into the cached values (``u_f = W_o v_f`` per head) and ``b_o``
added after pooling: the same function, and the per-pair ``2 D^2`` of ``W_o`` disappears (the
"algebraic minimum" of §5.4). ``W_l`` follows LN2 and cannot be folded. ``similarity`` does the
per-pair work in blocks of at most ``pairs_per_block`` (query, video) pairs, so temporaries stay
bounded whatever Q and N are, and the heavy step is one large GEMM per block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from psbench.backbone import frame_features
from psbench.method import METHODS, Encoded, RetrievalMethod, l2_normalize

NORM_EPS = 1e-6  # same eps as psbench.method.l2_normalize


class XPoolHead(nn.Module):
    """The pooling module's parameters and its text-only and video-only stages."""

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the embedding width {dim}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.ln1 = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.ln3 = nn.LayerNorm(dim)
        for name, param in self.named_parameters():  # X-Pool `_init_parameters`
            if "linear" in name or "proj" in name:
                if "weight" in name:
                    nn.init.eye_(param)
                else:
                    nn.init.zeros_(param)

    def query(self, text: Tensor) -> Tensor:
        """Text-only stage: q = W_q LN1(t) + b_q. (Q, D) -> (Q, D)."""
        return self.q_proj(self.ln1(text))

    def keys_values(self, frames: Tensor, fold_out_proj: bool) -> tuple[Tensor, Tensor]:
        """Video-only stage. frames (N, F, D) -> keys (N, F, D), values (N, H, F, D or D/H).

        With ``fold_out_proj`` the values are ``W_o`` applied per head (``(N, H, F, D)``);
        otherwise the plain head-split values ``(N, H, F, D/H)``.
        """
        n, f, d = frames.shape
        h, dh = self.num_heads, self.head_dim
        x = self.ln1(frames)  # (N, F, D)
        keys = self.k_proj(x)  # (N, F, D)
        values = self.v_proj(x).view(n, f, h, dh)  # (N, F, H, dh)
        if not fold_out_proj:
            return keys, values.permute(0, 2, 1, 3).contiguous()  # (N, H, F, dh)
        w_o = self.out_proj.weight.view(d, h, dh)  # (D_out, H, dh)
        folded = torch.einsum("nfhk,ehk->nhfe", values, w_o)  # (N, H, F, D)
        return keys, folded.contiguous()

    def pool(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor, folded: bool) -> Tensor:
        """psi(v|t) for every (video, text) pair of one block.

        query (Qb, D), keys (Nb, F, D), values as from ``keys_values``, mask (Nb, F) -> (Nb, Qb, D).
        """
        qb, nb, f = query.shape[0], keys.shape[0], keys.shape[1]
        h, dh = self.num_heads, self.head_dim
        q = query.view(qb, h, dh).transpose(0, 1)  # (H, Qb, dh)
        k = keys.reshape(nb * f, h, dh).permute(1, 2, 0)  # (H, dh, Nb*F)
        logits = torch.bmm(q, k).view(h, qb, nb, f) / math.sqrt(dh)  # (H, Qb, Nb, F)
        logits = logits.masked_fill(~mask[None, None], float("-inf"))  # (H, Qb, Nb, F)
        attn = logits.softmax(dim=-1)  # (H, Qb, Nb, F); softmax over frames
        if folded:
            attn = attn.permute(2, 1, 0, 3).reshape(nb, qb, h * f)  # (Nb, Qb, H*F)
            o = torch.baddbmm(self.out_proj.bias, attn, values.reshape(nb, h * f, -1))  # (Nb, Qb, D)
        else:
            heads = torch.matmul(attn.permute(2, 0, 1, 3), values)  # (Nb, H, Qb, dh)
            o = self.out_proj(heads.transpose(1, 2).reshape(nb, qb, h * dh))  # (Nb, Qb, D)
        r = self.ln2(o)  # (Nb, Qb, D)
        return self.ln3(r + self.dropout(self.linear(r)))  # (Nb, Qb, D)


def cosine_with(text_unit: Tensor, pooled: Tensor) -> Tensor:
    """cos(t, psi) from unit text vectors (Qb, D) and pooled (Nb, Qb, D) -> (Nb, Qb)."""
    dots = (pooled * text_unit).sum(-1)  # (Nb, Qb)
    return dots / pooled.norm(dim=-1).clamp_min(NORM_EPS)


@METHODS.register("xpool")
class XPool(RetrievalMethod):
    """CLIP frame embeddings + X-Pool's text-conditioned pooling, scored per (text, video) pair.

    Options: ``num_heads`` (1), ``dropout`` (transformer_dropout, 0.3; 0.4 for MSR-VTT-7k and
    MSVD), ``pairs_per_block`` (pairs per similarity block; bounds temporaries to roughly
    ``5 * pairs_per_block * D * 4`` bytes), ``fold_out_proj`` (fold W_o into the cached values;
    exact, on by default; off reproduces the cost of the reference implementation).
    """

    offline_embedding = False

    def __init__(
        self,
        clip: nn.Module,
        num_heads: int = 1,
        dropout: float = 0.3,
        pairs_per_block: int = 16384,
        fold_out_proj: bool = True,
    ) -> None:
        super().__init__(clip)
        if pairs_per_block < 1:
            raise ValueError(f"pairs_per_block must be >= 1, got {pairs_per_block}")
        dim = int(clip.visual.output_dim)
        self.pool_head = XPoolHead(dim, num_heads=num_heads, dropout=dropout)
        self.pairs_per_block = pairs_per_block
        self.fold_out_proj = fold_out_proj

    def encode_text(self, tokens: Tensor) -> Encoded:
        """{"text": raw CLIP text embedding (Q, D), "query": W_q LN1(t) + b_q (Q, D)}."""
        text = self.clip.encode_text(tokens)  # (Q, D)
        return {"text": text, "query": self.pool_head.query(text)}

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        """{"frames" (N, F, D), "mask" (N, F), "keys" (N, F, D), "values" (N, H, F, D or D/H)}."""
        n, f = frames.shape[:2]
        mask = mask.to(torch.bool)
        if not bool(mask.any(dim=1).all()):
            empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
            raise ValueError(f"X-Pool needs at least one valid frame per video; none in batch rows {empty}")
        feats = frame_features(self.clip.visual, frames.flatten(0, 1)).view(n, f, -1)  # (N, F, D)
        keys, values = self.pool_head.keys_values(feats, self.fold_out_proj)
        return {"frames": feats, "mask": mask, "keys": keys, "values": values}

    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        """(Q, N) scores cos(t, psi(v|t)), computed in blocks of at most ``pairs_per_block`` pairs."""
        query, text_unit = text["query"], l2_normalize(text["text"])  # (Q, D), (Q, D)
        keys, values, mask = video["keys"], video["values"], video["mask"]
        num_q, num_v = query.shape[0], keys.shape[0]
        if num_q == 0 or num_v == 0:
            return query.new_zeros(num_q, num_v)
        q_step = min(num_q, self.pairs_per_block)
        v_step = max(1, self.pairs_per_block // q_step)
        rows = []
        for q0 in range(0, num_q, q_step):
            q_sl = slice(q0, q0 + q_step)
            cols = []
            for v0 in range(0, num_v, v_step):
                v_sl = slice(v0, v0 + v_step)
                pooled = self.pool_head.pool(
                    query[q_sl], keys[v_sl], values[v_sl], mask[v_sl], self.fold_out_proj
                )  # (Nb, Qb, D)
                cols.append(cosine_with(text_unit[q_sl], pooled).t())  # (Qb, Nb)
                del pooled
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)  # (Q, N)

    def online_flops_per_pair(self, num_frames: int) -> int:
        """FLOPs of the per-pair work done by ``similarity`` (multiply-add = 2), excluding O(F)."""
        d = self.pool_head.dim
        proj = 2 * d * d * (1 if self.fold_out_proj else 2)  # W_l (+ W_o when not folded)
        return proj + 4 * num_frames * d + 25 * d

    def extra_state(self) -> dict[str, object]:
        head = self.pool_head
        return {
            "num_heads": head.num_heads,
            "dropout": head.dropout.p,
            "pairs_per_block": self.pairs_per_block,
            "fold_out_proj": self.fold_out_proj,
        }
