"""bfloat16 prefilter of engine.topk: same exact top-k as the float32 path, proven error bound, opt-outs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from psbench import engine, prefilter
from psbench.method import Encoded, RetrievalMethod


class DotProduct(RetrievalMethod):
    """Stored embeddings, default (inner-product) similarity."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        raise NotImplementedError


class NotADotProduct(DotProduct):
    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        return torch.cdist(text["text"], video["video"]).neg()  # (Q, N)


def embeddings(q: int, n: int, d: int, seed: int, normalise: bool = True) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(q, d, generator=gen), torch.randn(n, d, generator=gen)  # (Q, D), (N, D)
    if normalise:
        a, b = nn.functional.normalize(a, dim=1), nn.functional.normalize(b, dim=1)
    return a, b


def both_paths(a: Tensor, b: Tensor, k: int, block_videos: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    method, text, video = DotProduct(), {"text": a}, {"video": b}
    plain = engine.topk(method, text, video, k, 64, block_videos, "cpu", prefilter="off")
    fast = engine.topk(method, text, video, k, 64, block_videos, "cpu", prefilter="bf16")
    return plain, fast


@pytest.mark.parametrize(
    ("q", "n", "d", "k", "block_videos"),
    [
        (50, 3000, 64, 10, 1024),
        (7, 999, 32, 1, 128),
        (20, 500, 16, 25, 100),
        (3, 40, 8, 40, 16),
        (90, 2048, 512, 5, 2048),
    ],
)
def test_prefilter_topk_equals_float32_topk(q: int, n: int, d: int, k: int, block_videos: int) -> None:
    a, b = embeddings(q, n, d, seed=q + n)
    (plain_scores, plain_ids), (fast_scores, fast_ids) = both_paths(a, b, k, block_videos)
    assert torch.equal(fast_ids, plain_ids)
    torch.testing.assert_close(fast_scores, plain_scores, rtol=0, atol=1e-5)


def test_prefilter_keeps_ties_and_the_lower_index_rule() -> None:
    """Duplicated videos tie exactly; the lower gallery index must win, as on the plain path."""
    a, b = embeddings(30, 600, 32, seed=3)
    b = torch.cat([b, b[:300]])  # videos 600..899 duplicate 0..299
    (_, plain_ids), (_, fast_ids) = both_paths(a, b, 12, 256)
    assert torch.equal(fast_ids, plain_ids)
    for row in fast_ids.tolist():  # every duplicate comes right after its original
        for place, video in enumerate(row):
            if video >= 600:
                assert place > 0 and row[place - 1] == video - 600


def test_prefilter_resolves_scores_closer_than_bfloat16_resolution() -> None:
    """Videos that differ by far less than a bfloat16 step: only float32 rescoring can order them."""
    a, b = embeddings(16, 1500, 64, seed=4)
    gen = torch.Generator().manual_seed(8)
    b = nn.functional.normalize(b[:1] + 1e-4 * torch.randn(1500, 64, generator=gen), dim=1)  # near-copies
    (plain_scores, plain_ids), (fast_scores, fast_ids) = both_paths(a, b, 10, 256)
    assert torch.equal(fast_ids, plain_ids)
    assert (plain_scores[:, 0] - plain_scores[:, -1]).max() < 2.0**-8  # the top-10 sit inside one bf16 step


def test_prefilter_on_unnormalised_and_mixed_scale_embeddings() -> None:
    a, b = embeddings(40, 2000, 48, seed=5, normalise=False)
    b = b * torch.logspace(-3, 3, 2000)[:, None]  # norms over six orders of magnitude
    (plain_scores, plain_ids), (fast_scores, fast_ids) = both_paths(a, b, 8, 512)
    assert torch.equal(fast_ids, plain_ids)
    torch.testing.assert_close(fast_scores, plain_scores, rtol=1e-5, atol=1e-5)


def test_error_bound_holds_on_adversarial_inputs() -> None:
    """The proven bound must exceed every observed |bf16 score - float32 score| (values chosen to round badly)."""
    d = 256
    gen = torch.Generator().manual_seed(0)
    a = 1.0 + torch.rand(200, d, generator=gen) * 2.0**-8  # all just above 1: worst relative rounding
    b = torch.cat([a[:100], -a[100:]], dim=0) * (1 + 2.0**-9)
    approx = (a.bfloat16() @ b.bfloat16().t()).float()  # (200, 200)
    exact = a @ b.t()
    bound = (
        prefilter.error_bound_factor(d)
        * torch.linalg.vector_norm(a, dim=1)[:, None]
        * torch.linalg.vector_norm(b, dim=1)
    )
    assert ((approx - exact).abs() <= bound).all()
    assert (approx - exact).abs().max() > 0.05 * bound.max()  # the inputs do stress the rounding


def test_blocks_without_an_error_bound_are_rescored_exactly() -> None:
    a, b = embeddings(10, 300, 16, seed=9, normalise=False)
    b[100:150] *= 1e31  # beyond the bfloat16-safe range: those blocks fall back to exact scoring
    (plain_scores, plain_ids), (fast_scores, fast_ids) = both_paths(a, b, 5, 50)
    assert torch.equal(fast_ids, plain_ids)
    torch.testing.assert_close(fast_scores, plain_scores, rtol=1e-5, atol=0)


def test_prefilter_rejects_nan() -> None:
    a, b = embeddings(4, 200, 8, seed=1)
    b[17, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        engine.topk(DotProduct(), {"text": a}, {"video": b}, 3, 4, 64, "cpu", prefilter="bf16")


def test_prefilter_choice_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = embeddings(4, 200, 8, seed=2)
    text, video = {"text": a}, {"video": b}
    with pytest.raises(ValueError, match="prefilter 'fast'.*valid: auto, bf16, off"):
        engine.topk(DotProduct(), text, video, 3, prefilter="fast")
    with pytest.raises(ValueError, match="NotADotProduct"):
        engine.topk(NotADotProduct(), text, video, 3, prefilter="bf16")
    with pytest.raises(ValueError, match="float32"):
        engine.topk(DotProduct(), {"text": a.double()}, {"video": b.double()}, 3, prefilter="bf16")
    assert NotADotProduct().inner_product_operands(text, video) is None
    assert DotProduct().inner_product_operands(text, video) == (a, b)

    calls: list[int] = []
    original = engine.inner_product_topk_keys
    monkeypatch.setattr(engine, "inner_product_topk_keys", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(engine, "bf16_matmul_is_fast", lambda device: True)
    engine.topk(DotProduct(), text, video, 3, 4, 64, "cpu")  # auto, fast CPU, 4k <= block
    assert calls == [1]
    engine.topk(DotProduct(), text, video, 30, 4, 64, "cpu")  # auto, but 4k > block: plain path
    engine.topk(NotADotProduct(), text, video, 3, 4, 64, "cpu")  # auto, not an inner product
    monkeypatch.setattr(engine, "bf16_matmul_is_fast", lambda device: False)
    engine.topk(DotProduct(), text, video, 3, 4, 64, "cpu")  # auto, slow bfloat16
    assert calls == [1]
