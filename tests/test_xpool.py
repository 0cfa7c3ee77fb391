"""X-Pool: blocked similarity against a literal per-pair loop, the closed form at init, invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.xpool import XPool, XPoolHead, cosine_with
from psbench.backbone.clip import create_clip, tokenizer_for
from psbench.catalog import create_method
from psbench.method import Batch

D = 64  # psbench-tiny embedding width

# Tolerances. The compared paths compute the same cosine (|score| <= 1) in other orders and shapes
# (blocked against per pair, Gram-matrix fold against explicit pooling), so they agree only up to
# float32 rounding through the LayerNorms and D-term products, which the BLAS kernel of each shape
# and CPU orders differently: about 1e-7 here, at most 1/9 of each tolerance under every kernel
# selection of `make test-kernels`. A wrong mask, head split or fold moves scores by 1e-2 or more.
# Bit equality only where the arithmetic is the same (a second eval call); the masked-frame check stays
# at 1e-6, as a masked frame's weight is exactly 0 and its row enters no other row's products.


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_clip("psbench-tiny").eval()


def _method(clip, **options) -> XPool:
    torch.manual_seed(11)
    return create_method("xpool", clip, options).eval()


def _randomise(head: XPoolHead) -> None:
    """Move every parameter away from its identity/zero/one init so the oracle test means something."""
    torch.manual_seed(12)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))


def _encode(method: XPool, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor):
    """The method's own text and video stages, from given CLIP embeddings (no CLIP towers needed)."""
    keys, values = method.pool_head.keys_values(frames, method.fold_out_proj)
    video = {"frames": frames, "mask": mask, "keys": keys, "values": values}
    if method.fold_norms:
        video["proj"], video["stats"] = method.pool_head.norm_fold_cache(values)
    return {"text": text, "query": method.pool_head.query(text)}, video


def _naive_scores(head: XPoolHead, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor):
    """Spec §5.1, step by step, one (text, video) pair at a time."""
    h, dh = head.num_heads, head.dim // head.num_heads
    scores = torch.empty(text.shape[0], frames.shape[0])
    for i in range(text.shape[0]):
        t = text[i]
        q = head.q_proj(head.ln1(t))  # (D,)
        for j in range(frames.shape[0]):
            valid = frames[j][mask[j]]  # (F', D)
            f = head.ln1(valid)
            k, v = head.k_proj(f), head.v_proj(f)  # (F', D)
            pooled = []
            for hh in range(h):
                sl = slice(hh * dh, (hh + 1) * dh)
                a = torch.softmax(k[:, sl] @ q[sl] / math.sqrt(dh), dim=0)  # over frames
                pooled.append((a[:, None] * v[:, sl]).sum(0))
            o = head.out_proj(torch.cat(pooled))
            r = head.ln2(o)
            psi = head.ln3(r + head.linear(r))  # eval: dropout off
            scores[i, j] = torch.dot(t, psi) / (t.norm() * psi.norm())
    return scores


def _data(q: int = 5, n: int = 7, f: int = 6, seed: int = 13):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(q, D, generator=g) * 2 + 0.5
    frames = torch.randn(n, f, D, generator=g) * 2 + 0.5
    mask = torch.ones(n, f, dtype=torch.bool)
    mask[1, 4:] = False
    mask[5, 1:] = False
    return text, frames, mask


FOLDS = [(False, False), (True, False), (True, True)]  # (fold_out_proj, fold_norms)


@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("fold", FOLDS)
def test_blocked_similarity_equals_naive_loop(clip, num_heads, fold):
    method = _method(clip, num_heads=num_heads, fold_out_proj=fold[0], fold_norms=fold[1])
    _randomise(method.pool_head)
    text, frames, mask = _data()
    with torch.no_grad():
        expected = _naive_scores(method.pool_head, text, frames, mask)
        for block in (1, 3, 8, 34, 10_000):
            method.pairs_per_block = block
            t_enc, v_enc = _encode(method, text, frames, mask)
            torch.testing.assert_close(method.similarity(t_enc, v_enc), expected, rtol=0, atol=1e-5)


def test_blocks_never_exceed_pairs_per_block(clip, monkeypatch):
    method = _method(clip, pairs_per_block=6)
    text, frames, mask = _data(q=4, n=9)
    seen = []
    original = method.pool_head.pool

    def spy(query, keys, *args):
        seen.append(query.shape[0] * keys.shape[0])
        return original(query, keys, *args)

    monkeypatch.setattr(method.pool_head, "pool", spy)
    with torch.no_grad():
        t_enc, v_enc = _encode(method, text, frames, mask)
        method.similarity(t_enc, v_enc)
    assert max(seen) <= 6 and sum(seen) == 4 * 9


def test_closed_form_at_initialisation(clip):
    method = _method(clip)
    head = method.pool_head
    text, frames, mask = _data()
    mask[:] = True
    with torch.no_grad():
        t_enc, v_enc = _encode(method, text, frames, mask)
        fast = method.similarity(t_enc, v_enc)
        # psi(v|t) = LN(sum_f softmax_f(t~ . f~ / sqrt(D)) f~): with identity weights, LN3(r + r) and
        # LN3(LN2(o)) both equal LN(o) up to the LayerNorm eps (LN is scale- and shift-invariant).
        t_ln = F.layer_norm(text, (D,))
        f_ln = F.layer_norm(frames, (D,))
        a = torch.softmax(torch.einsum("qd,nfd->qnf", t_ln, f_ln) / math.sqrt(D), dim=-1)
        psi = F.layer_norm(torch.einsum("qnf,nfd->qnd", a, f_ln), (D,))  # (Q, N, D)
        closed = F.cosine_similarity(text[:, None], psi, dim=-1)
        # and the steps of the module at init give exactly LN3(2r)
        psi_module = head.pool(t_enc["query"], v_enc["keys"], v_enc["values"], mask, True).transpose(0, 1)
    torch.testing.assert_close(fast, closed, rtol=0, atol=1e-4)
    torch.testing.assert_close(psi_module, psi, rtol=0, atol=1e-3)


def test_identity_init_and_parameter_count():
    head = XPoolHead(512)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj", "linear"):
        layer = getattr(head, name)
        assert torch.equal(layer.weight, torch.eye(512)) and torch.count_nonzero(layer.bias) == 0
    assert sum(p.numel() for p in head.parameters()) == 5 * (512**2 + 512) + 3 * 1024  # 1,316,352


def test_frame_permutation_and_masked_frames(clip):
    method = _method(clip)
    _randomise(method.pool_head)
    text, frames, mask = _data()
    with torch.no_grad():
        base = method.similarity(*_encode(method, text, frames, mask))
        perm = torch.randperm(frames.shape[1], generator=torch.Generator().manual_seed(3))
        permuted = method.similarity(*_encode(method, text, frames[:, perm], mask[:, perm]))
        garbage = frames.clone()
        garbage[~mask] = 1e3 * torch.randn_like(garbage[~mask])
        masked = method.similarity(*_encode(method, text, garbage, mask))
        # video 5 has a single valid frame: the same as a one-frame video
        single = method.similarity(*_encode(method, text, frames[5:6, :1], mask[5:6, :1]))
    torch.testing.assert_close(permuted, base, rtol=0, atol=1e-5)
    torch.testing.assert_close(masked, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(single[:, 0], base[:, 5], rtol=0, atol=1e-5)


def test_encode_video_end_to_end_and_empty_videos(clip):
    method = _method(clip)
    frames = torch.randn(2, 6, 3, 32, 32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        video = method.encode_video(frames, mask)
        text = method.encode_text(tokenizer_for(clip, 16)(["a dog runs", "a red car"]))
        scores = method.similarity(text, video)
        expected = _naive_scores(method.pool_head, text["text"], video["frames"], mask)
    assert video["frames"].shape == (2, 6, D) and video["keys"].shape == (2, 6, D)
    assert video["values"].shape == (2, 1, 6, D)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="batch rows \\[1\\]"):
        method.encode_video(frames, torch.tensor([[1] * 6, [0] * 6], dtype=torch.bool))


def test_norm_fold_at_clip_b32_width():
    """D = 512, F = 12, random weights: the Gram-matrix path equals the explicit pooling."""
    torch.manual_seed(21)
    head = XPoolHead(512)
    _randomise(head)
    text, frames = torch.randn(40, 512), torch.randn(30, 12, 512)
    mask = torch.ones(30, 12, dtype=torch.bool)
    mask[3, 7:] = False
    with torch.no_grad():
        head.eval()
        query = head.query(text)
        keys, values = head.keys_values(frames, True)
        unit = text / text.norm(dim=-1, keepdim=True)
        explicit = cosine_with(unit, head.pool(query, keys, values, mask, True))
        proj, stats = head.norm_fold_cache(values)
        folded = head.folded_scores(query, unit, keys, mask, proj, stats)
    torch.testing.assert_close(folded, explicit, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fold_norms", [False, True])
def test_dropout_in_training_only(clip, fold_norms):
    method = _method(clip, dropout=0.5, fold_norms=fold_norms)
    text, frames, mask = _data()
    t_enc, v_enc = _encode(method, text, frames, mask)
    with torch.no_grad():
        method.train()
        a, b = method.similarity(t_enc, v_enc), method.similarity(t_enc, v_enc)
        method.eval()
        c, d = method.similarity(t_enc, v_enc), method.similarity(t_enc, v_enc)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_training_loss_uses_the_pooling_and_reaches_the_head(clip):
    method = _method(clip)
    method.train()
    batch = Batch(
        frames=torch.randn(3, 6, 3, 32, 32),
        mask=torch.ones(3, 6, dtype=torch.bool),
        tokens=tokenizer_for(clip, 16)(["one", "two words", "three more words"]),
    )
    out = method.training_loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    for name in ("linear", "out_proj", "q_proj", "k_proj", "v_proj"):
        grad = getattr(method.pool_head, name).weight.grad
        assert grad is not None and torch.count_nonzero(grad) > 0, name
    method.zero_grad(set_to_none=True)
    method.eval()


@pytest.mark.parametrize("num_heads", [1, 4])
def test_folded_variant_scores_as_the_reference_form(clip, num_heads):
    """``xpool-folded`` (the cheapest exact form) loads an ``xpool`` state dict and gives its scores:
    random non-identity weights, padded frames, at D = 512 shapes through the registered factories."""
    reference = _method(clip, num_heads=num_heads)
    _randomise(reference.pool_head)
    folded = create_method("xpool-folded", clip, {"num_heads": num_heads}).eval()
    folded.load_state_dict(reference.state_dict())
    assert folded.fold_norms and not reference.fold_norms
    text, frames, mask = _data(q=9, n=11, f=12)
    with torch.no_grad():
        expected = reference.similarity(*_encode(reference, text, frames, mask))
        got = folded.similarity(*_encode(folded, text, frames, mask))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert folded.similarity_form().startswith("folded") and reference.similarity_form().startswith("reference")


def test_folded_variant_trains_through_the_reference_path_and_says_so(clip):
    folded = create_method("xpool-folded", clip, {"dropout": 0.3}).train()
    frames, mask = torch.randn(2, 3, 3, 32, 32), torch.ones(2, 3, dtype=torch.bool)
    assert not folded.uses_norm_fold() and "dropout is active" in folded.similarity_form()
    with torch.no_grad():
        assert "proj" not in folded.encode_video(frames, mask)  # no Gram cache: the reference path runs
        folded.eval()
        assert "proj" in folded.encode_video(frames, mask) and folded.similarity_form().startswith("folded")
