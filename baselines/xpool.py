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
"algebraic minimum" of §5.4). ``similarity`` does the per-pair work in blocks of at most
``pairs_per_block`` (query, video) pairs, so temporaries stay bounded whatever Q and N are, and the
heavy step (W_l) is one large GEMM per block.

Beyond §5.4 (option ``fold_norms``, eval mode only, i.e. without dropout): the spec says W_l cannot
be folded because it follows LN2, but LN2 only subtracts a per-pair scalar mean and divides by a
per-pair scalar scale. Writing o = sum_j alpha_j x_j over the rows x_j = [W_o-folded values ; b_o]
(alpha_j = attention weights, 1 for b_o), every D-vector after LN2 and W_l is a per-pair affine
combination of per-video vectors, and the LN2/LN3 variances and the final norm are quadratic forms
of alpha with per-video K x K Gram matrices (K = H*F + 1). The score then costs O(FD + F^2) per
pair instead of O(D^2), exactly (see ``XPoolHead.norm_fold_cache`` and ``folded_scores``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from psbench.backbone.clip import frame_features
from psbench.backbone.flops import MAC_TO_FLOP, frame_passes_flops
from psbench.method import Encoded, RetrievalMethod, l2_normalize
from psbench.ops import linear as cpu_linear

NORM_EPS = 1e-6  # same eps as psbench.method.l2_normalize
#: the folded path's block: at most 256 queries x (16 * pairs_per_block / 256) videos, so that the
#: (Nb, 3HF + 6, Qb) temporaries stay in the CPU caches (measured fastest of 16..1000 x 16..4000)
FOLDED_QUERY_BLOCK = 256
FOLDED_BLOCK_FACTOR = 16


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

    def attention(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Attention weights over frames. query (Qb, D), keys (Nb, F, D), mask (Nb, F) -> (H, Qb, Nb, F)."""
        qb, nb, f = query.shape[0], keys.shape[0], keys.shape[1]
        h, dh = self.num_heads, self.head_dim
        q = query.view(qb, h, dh).transpose(0, 1)  # (H, Qb, dh)
        k = keys.reshape(nb * f, h, dh).permute(1, 2, 0)  # (H, dh, Nb*F)
        logits = torch.bmm(q, k).view(h, qb, nb, f) / math.sqrt(dh)  # (H, Qb, Nb, F)
        logits = logits.masked_fill(~mask[None, None], float("-inf"))  # (H, Qb, Nb, F)
        return logits.softmax(dim=-1)  # softmax over frames

    def norm_fold_cache(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Video-only tensors of the eval-mode fold of LN2, W_l, residual and LN3 (module doc).

        values: W_o-folded values (N, H, F, D). With K = H*F + 1 (the last row is b_o, weight 1)
        returns proj (N, K, D) = gamma3 * centred(M Gamma2 c_j) and stats (N, K, 3K + 3) =
        [C | G | G3 | g | g3 | h]: Gram matrices and vectors used by ``folded_scores``.
        """
        n, h, f, d = values.shape
        x = torch.cat([values.reshape(n, h * f, d), self.out_proj.bias.expand(n, 1, d)], dim=1)  # (N, K, D)
        c = x - x.mean(-1, keepdim=True)  # (N, K, D) centred rows
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        m = (eye + self.linear.weight) * self.ln2.weight  # (D, D) = (I + W_l) diag(gamma2)
        w = c @ m.t()  # (N, K, D)
        w = w - w.mean(-1, keepdim=True)  # (N, K, D) centred
        proj = w * self.ln3.weight  # (N, K, D)
        ec, g3ec = self._fold_constant()
        grams = torch.cat([c @ c.transpose(1, 2), w @ w.transpose(1, 2), proj @ proj.transpose(1, 2)], -1)
        vecs = torch.stack([w @ ec, proj @ g3ec, proj @ self.ln3.bias], dim=-1)  # (N, K, 3)
        return proj, torch.cat([grams, vecs], dim=-1)  # (N, K, D), (N, K, 3K + 3)

    def _fold_constant(self) -> tuple[Tensor, Tensor]:
        """Centred e = (I + W_l) beta2 + b_l, and gamma3 * e_c. (D,), (D,)."""
        e = self.ln2.bias + self.linear(self.ln2.bias)  # (D,)
        ec = e - e.mean()
        return ec, ec * self.ln3.weight

    def folded_scores(
        self, query: Tensor, text_unit: Tensor, keys: Tensor, mask: Tensor, proj: Tensor, stats: Tensor
    ) -> Tensor:
        """cos(t, psi(v|t)) without materialising psi (eval mode, no dropout). -> (Nb, Qb).

        query, text_unit (Qb, D); keys (Nb, F, D); mask (Nb, F); proj, stats from ``norm_fold_cache``.
        Laid out video-major with queries innermost ((Nb, ., Qb)): the softmax and every sum over frame
        slots then run over a middle axis, which torch vectorises (a softmax over a last axis of F = 12
        is about 20x slower on CPU), and the two D-wide products go through :func:`cpu_linear.linear`.
        """
        qb, nb, f, d = query.shape[0], keys.shape[0], keys.shape[1], self.dim
        h, dh = self.num_heads, self.head_dim
        k = proj.shape[1]
        n = k - 1  # H*F attention weights; slot K is b_o with weight 1
        scaled = query * (1.0 / math.sqrt(dh))  # (Qb, D)
        bias = torch.zeros(nb, f, dtype=query.dtype, device=query.device).masked_fill_(~mask, float("-inf"))
        if h == 1:
            logits = cpu_linear.linear(keys.reshape(nb * f, d), scaled).view(nb, f, qb)  # (Nb, F, Qb)
            alpha = logits.add_(bias[..., None]).softmax(1)  # (Nb, F, Qb), softmax over frames
        else:
            k_heads = keys.reshape(nb * f, h, dh).transpose(0, 1)  # (H, Nb*F, dh)
            q_heads = scaled.view(qb, h, dh).permute(1, 2, 0)  # (H, dh, Qb)
            logits = torch.baddbmm(bias.view(1, nb * f, 1), k_heads, q_heads).view(h, nb, f, qb)
            alpha = logits.softmax(2).transpose(0, 1).reshape(nb, n, qb)  # (Nb, H*F, Qb)
        rows, consts = _frame_slot_rows(stats, k)  # (Nb, 3n + 6, n), (Nb, 6)
        prod = torch.bmm(rows, alpha)  # (Nb, 3n + 6, Qb)
        quad = (prod[:, : 3 * n].view(nb, 3, n, qb) * alpha.unsqueeze(1)).sum(2)  # (Nb, 3, Qb)
        quad = quad + prod[:, 3 * n : 3 * n + 3] + consts[:, :3, None]  # a'Ca, a'Ga, a'G3a
        lin = prod[:, 3 * n + 3 :] + consts[:, 3:, None]  # (Nb, 3, Qb): a.g, a.g3, a.h
        tp = cpu_linear.linear(proj.reshape(nb * k, d), text_unit).view(nb, k, qb)  # (Nb, K, Qb)
        t_proj = (tp[:, :n] * alpha).sum(1) + tp[:, n]  # (Nb, Qb)
        ec, g3ec = self._fold_constant()
        beta3 = self.ln3.bias
        s_o = (quad[:, 0] / d + self.ln2.eps).sqrt()  # (Nb, Qb) LN2 scale
        var_z = (quad[:, 1] / s_o**2 + 2 * lin[:, 0] / s_o + ec @ ec) / d
        s_z = (var_z + self.ln3.eps).sqrt()  # (Nb, Qb) LN3 scale
        num = (t_proj / s_o + text_unit @ g3ec) / s_z + text_unit @ beta3  # (Nb, Qb)
        y_sq = (quad[:, 2] / s_o**2 + 2 * lin[:, 1] / s_o + g3ec @ g3ec) / s_z**2
        y_sq = y_sq + 2 * (lin[:, 2] / s_o + g3ec @ beta3) / s_z + beta3 @ beta3  # (Nb, Qb) |psi|^2
        return num / y_sq.clamp_min(0).sqrt().clamp_min(NORM_EPS)

    def pool(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor, folded: bool) -> Tensor:
        """psi(v|t) for every (video, text) pair of one block.

        query (Qb, D), keys (Nb, F, D), values as from ``keys_values``, mask (Nb, F) -> (Nb, Qb, D).
        """
        qb, nb, f = query.shape[0], keys.shape[0], keys.shape[1]
        h, dh = self.num_heads, self.head_dim
        attn = self.attention(query, keys, mask)  # (H, Qb, Nb, F)
        if folded:
            attn = attn.permute(2, 1, 0, 3).reshape(nb, qb, h * f)  # (Nb, Qb, H*F)
            o = torch.baddbmm(self.out_proj.bias, attn, values.reshape(nb, h * f, -1))  # (Nb, Qb, D)
        else:
            heads = torch.matmul(attn.permute(2, 0, 1, 3), values)  # (Nb, H, Qb, dh)
            o = self.out_proj(heads.transpose(1, 2).reshape(nb, qb, h * dh))  # (Nb, Qb, D)
        r = self.ln2(o)  # (Nb, Qb, D)
        if self.dropout.p > 0 and self.training:
            return self.ln3(r + self.dropout(self.linear(r)))  # (Nb, Qb, D)
        # no dropout: r + (W_l r + b_l) = (I + W_l) r + b_l, one GEMM instead of a GEMM and an add pass
        return self.ln3(cpu_linear.linear(r, self.residual_weight(), self.linear.bias))  # (Nb, Qb, D)

    def residual_weight(self) -> Tensor:
        """I + W_l (D, D): the residual folded into the last projection (used when dropout is off)."""
        w = self.linear.weight
        return w + torch.eye(w.shape[0], dtype=w.dtype, device=w.device)


def _frame_slot_rows(stats: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Split ``norm_fold_cache``'s stats at the b_o slot (weight 1), so that with a = [alpha ; 1]
    a'Xa = alpha' X_ff alpha + 2 X_Kf . alpha + X_KK and a.g = g_f . alpha + g_K.

    stats (Nb, K, 3K + 3) -> rows (Nb, 3n + 6, n) = [C_ff; G_ff; G3_ff; 2C_Kf; 2G_Kf; 2G3_Kf; g_f'; g3_f'; h_f']
    and consts (Nb, 6) = [C_KK, G_KK, G3_KK, g_K, g3_K, h_K], with n = K - 1 (Gram matrices are symmetric).
    """
    n = k - 1
    grams = [stats[..., i * k : (i + 1) * k] for i in range(3)]  # 3 x (Nb, K, K)
    vecs = stats[..., 3 * k :]  # (Nb, K, 3)
    rows = torch.cat(
        [*(g[:, :n, :n] for g in grams), *(2 * g[:, n : n + 1, :n] for g in grams), vecs[:, :n].transpose(1, 2)], 1
    )  # (Nb, 3n + 6, n)
    consts = torch.cat([torch.stack([g[:, n, n] for g in grams], -1), vecs[:, n]], -1)  # (Nb, 6)
    return rows, consts


def cosine_with(text_unit: Tensor, pooled: Tensor) -> Tensor:
    """cos(t, psi) from unit text vectors (Qb, D) and pooled (Nb, Qb, D) -> (Nb, Qb)."""
    dots = torch.linalg.vecdot(pooled, text_unit)  # (Nb, Qb), no (Nb, Qb, D) temporary
    return dots / torch.linalg.vector_norm(pooled, dim=-1).clamp_min(NORM_EPS)


class XPool(RetrievalMethod):
    """CLIP frame embeddings + X-Pool's text-conditioned pooling, scored per (text, video) pair.

    Options: ``num_heads`` (1), ``dropout`` (transformer_dropout, 0.3; 0.4 for MSR-VTT-7k and
    MSVD), ``pairs_per_block`` (pairs per similarity block; bounds temporaries to roughly
    ``5 * pairs_per_block * D * 4`` bytes), ``fold_out_proj`` (fold W_o into the cached values;
    exact, on by default; off reproduces the cost of the reference implementation),
    ``fold_norms`` (off by default; eval mode only: also fold LN2, W_l, the residual and LN3 through
    per-video Gram matrices, see ``XPoolHead.norm_fold_cache``; exact, O(FD + F^2) per pair).
    """

    def __init__(
        self,
        clip: nn.Module,
        num_heads: int = 1,
        dropout: float = 0.3,
        pairs_per_block: int = 2048,
        fold_out_proj: bool = True,
        fold_norms: bool = False,
    ) -> None:
        super().__init__(clip)
        if pairs_per_block < 1:
            raise ValueError(f"pairs_per_block must be >= 1, got {pairs_per_block}")
        if fold_norms and not fold_out_proj:
            raise ValueError("fold_norms=True needs fold_out_proj=True")
        dim = int(clip.visual.output_dim)
        self.pool_head = XPoolHead(dim, num_heads=num_heads, dropout=dropout)
        self.pairs_per_block = pairs_per_block
        self.fold_out_proj = fold_out_proj
        self.fold_norms = fold_norms

    def encode_text(self, tokens: Tensor) -> Encoded:
        """{"text": raw CLIP text embedding (Q, D), "query": W_q LN1(t) + b_q (Q, D)}."""
        text = self.clip.encode_text(tokens)  # (Q, D)
        return {"text": text, "query": self.pool_head.query(text)}

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        """{"frames" (N, F, D), "mask" (N, F), "keys" (N, F, D), "values" (N, H, F, D or D/H)},
        plus {"proj" (N, K, D), "stats" (N, K, 3K + 3)} with ``fold_norms`` outside training (K = H*F + 1)."""
        n, f = frames.shape[:2]
        mask = mask.to(torch.bool)
        if not bool(mask.any(dim=1).all()):
            empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
            raise ValueError(f"X-Pool needs at least one valid frame per video; none in batch rows {empty}")
        feats = frame_features(self.clip.visual, frames.flatten(0, 1)).view(n, f, -1)  # (N, F, D)
        keys, values = self.pool_head.keys_values(feats, self.fold_out_proj)
        out = {"frames": feats, "mask": mask, "keys": keys, "values": values}
        if self.uses_norm_fold():  # not while training with dropout: that path never reads them
            out["proj"], out["stats"] = self.pool_head.norm_fold_cache(values)
        return out

    def derive_cached(self, video: Encoded) -> Encoded:
        """The cache entries that are functions of others, recomputed from ``video``'s values: the
        folded form's proj/stats (empty otherwise). Used to keep random efficiency galleries consistent."""
        if "proj" not in video:
            return {}
        proj, stats = self.pool_head.norm_fold_cache(video["values"].to(self.pool_head.ln2.weight.dtype))
        return {"proj": proj, "stats": stats}

    def uses_norm_fold(self) -> bool:
        """The Gram-matrix path applies only when dropout is inactive (eval mode or p = 0)."""
        return self.fold_norms and not (self.training and self.pool_head.dropout.p > 0)

    def similarity_form(self) -> str:
        """Which exact form ``similarity`` takes now (recorded by ``psbench efficiency``)."""
        if self.uses_norm_fold():
            return "folded (fold_norms: LN2, W_l, residual and LN3 through per-video Gram matrices)"
        if self.fold_norms:
            return "reference (fold_norms is set, but dropout is active in training mode)"
        return "reference" + (" (W_o folded into the cached values)" if self.fold_out_proj else "")

    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        """(Q, N) scores cos(t, psi(v|t)), computed in blocks of at most ``pairs_per_block`` pairs."""
        query, text_unit = text["query"], l2_normalize(text["text"])  # (Q, D), (Q, D)
        num_q, num_v = query.shape[0], video["keys"].shape[0]
        if num_q == 0 or num_v == 0:
            return query.new_zeros(num_q, num_v)
        fold = self.uses_norm_fold()
        if fold and "proj" not in video:
            raise KeyError("fold_norms is on but the encoded videos lack 'proj'/'stats'; re-encode them")
        budget = self.pairs_per_block * (FOLDED_BLOCK_FACTOR if fold else 1)  # folded: ~4K floats per pair
        q_step = min(num_q, FOLDED_QUERY_BLOCK if fold else budget)
        v_step = max(1, budget // q_step)
        out = query.new_empty(num_q, num_v)  # (Q, N); filled block by block, no concatenation copies
        for q0 in range(0, num_q, q_step):
            q_sl = slice(q0, q0 + q_step)
            for v0 in range(0, num_v, v_step):
                v_sl = slice(v0, v0 + v_step)
                out[q_sl, v_sl] = self._score_block(query[q_sl], text_unit[q_sl], video, v_sl, fold)
        return out

    def _score_block(self, query: Tensor, text_unit: Tensor, video: Encoded, v_sl: slice, fold: bool) -> Tensor:
        """Scores of one block: query, text_unit (Qb, D), videos ``v_sl`` of ``video`` -> (Qb, Nb)."""
        keys, mask = video["keys"][v_sl], video["mask"][v_sl]
        if fold:
            proj, stats = video["proj"][v_sl], video["stats"][v_sl]
            return self.pool_head.folded_scores(query, text_unit, keys, mask, proj, stats).t()
        pooled = self.pool_head.pool(query, keys, video["values"][v_sl], mask, self.fold_out_proj)  # (Nb, Qb, D)
        return cosine_with(text_unit, pooled).t()

    def online_matmul_flops_per_pair(self, num_frames: int) -> int:
        """Exact FLOPs (multiply-add = 2) of the matrix products ``similarity`` runs per (text, video)
        pair in eval mode: what fvcore counts, less the per-query and per-block terms.

        fold_norms (K = H*F + 1, n = K - 1 = H*F): logits 2FD, text . folded rows 2KD, the Gram rows of
        the frame slots (3n + 6 of them, ``_frame_slot_rows``) @ alpha 2(3n + 6)n = 6n^2 + 12n.
        Otherwise: logits 2FD, the weighted sum of values (2HFD W_o-folded, else 2FD), W_l 2D^2
        (+ W_o 2D^2 when not folded).
        """
        d, h, f = self.pool_head.dim, self.pool_head.num_heads, num_frames
        logits = 2 * f * d
        if self.fold_norms:
            k = h * f + 1
            n = k - 1
            return logits + 2 * k * d + 6 * n * n + 12 * n
        weighted_sum = 2 * h * f * d if self.fold_out_proj else 2 * f * d
        proj = 2 * d * d * (1 if self.fold_out_proj else 2)  # W_l (+ W_o when not folded)
        return proj + logits + weighted_sum

    def online_flops_per_pair(self, num_frames: int, dim: int | None = None) -> float:
        """FLOPs of the per-pair work done by ``similarity`` in eval mode (multiply-add = 2): the one
        formula every FLOP figure of X-Pool uses; ``dim`` is ignored (the head's own width applies).

        :meth:`online_matmul_flops_per_pair` plus the element-wise work, approximate: 25 D for LN2,
        residual, LN3 and the cosine; with ``fold_norms`` 8K for the products with alpha summed over K
        (quadratic forms, text term) and 36 for the per-pair scalar LayerNorm/cosine algebra. The
        softmax (~3HF) is left out on both paths, as in spec §5.4.
        """
        d, h = self.pool_head.dim, self.pool_head.num_heads
        if self.fold_norms:
            k = h * num_frames + 1
            elementwise = 8 * k + 36
        else:
            elementwise = 25 * d
        return float(self.online_matmul_flops_per_pair(num_frames) + elementwise)

    def offline_flops_per_video(self, frames: int) -> int:
        """F frame passes + cached k, v projections (+ W_o folded into the values); with ``fold_norms``
        (eval mode) also ``norm_fold_cache``: K rows through (I + W_l) diag(gamma2) (K D^2), the three
        K x K Gram matrices (3 K^2 D) and the three vectors (3 K D), K = H*F + 1."""
        dim = self.pool_head.dim
        extra = frames * dim * dim * (3 if self.fold_out_proj else 2)
        if self.uses_norm_fold():
            k = self.pool_head.num_heads * frames + 1
            extra += k * dim * dim + 3 * k * k * dim + 3 * k * dim
        return frame_passes_flops(self.clip.visual, frames) + MAC_TO_FLOP * extra

    def text_flops_per_query(self) -> int:
        """The text tower + the query projection of the pooling head (D^2 MACs)."""
        return super().text_flops_per_query() + MAC_TO_FLOP * self.pool_head.dim * self.pool_head.dim

    def extra_state(self) -> dict[str, object]:
        head = self.pool_head
        return {
            "num_heads": head.num_heads,
            "dropout": head.dropout.p,
            "pairs_per_block": self.pairs_per_block,
            "fold_out_proj": self.fold_out_proj,
            "fold_norms": self.fold_norms,
        }
