"""bfloat16 prefilter of engine.topk: same exact top-k as the float32 path, proven error bound, opt-outs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from psbench.ops import prefilter
from psbench.retrieval import engine
from tests.toys import NegativeDistance, StoredEmbeddings


def embeddings(q: int, n: int, d: int, seed: int, normalise: bool = True) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(q, d, generator=gen), torch.randn(n, d, generator=gen)  # (Q, D), (N, D)
    if normalise:
        a, b = nn.functional.normalize(a, dim=1), nn.functional.normalize(b, dim=1)
    return a, b


def both_paths(a: Tensor, b: Tensor, k: int, block_videos: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    method, text, video = StoredEmbeddings(), {"text": a}, {"video": b}
    plain = engine.topk(method, text, video, k, 64, block_videos, "cpu", prefilter="off")
    fast = engine.topk(method, text, video, k, 64, block_videos, "cpu", prefilter="bf16")
    return plain, fast


def summation_bound(a: Tensor, b: Tensor) -> Tensor:
    """(Q,) bound on |float32 a_q . b_j - exact| over all j, any summation order: gamma_D max_j sum_i |a_qi b_ji|.

    The two paths compute the same float32 dot products with different kernels (a blocked matmul
    against a sampled one, chosen per CPU), so their scores may differ by up to twice this.
    """
    d = a.shape[1]
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    return gamma * (a.double().abs() @ b.double().abs().t()).amax(dim=1)


def assert_same_topk(a: Tensor, b: Tensor, plain: tuple[Tensor, Tensor], fast: tuple[Tensor, Tensor]) -> None:
    """Both results are the top-k of their float32 scores: equal up to the summation bound.

    Each returned score is within the bound e of its pair's exact (float64) score; the k-th best
    values of the two paths differ by at most 2e; where the two rankings differ, the two videos are a
    near-tie that summation order may decide either way (exact scores within 4e). With the fixed
    seeds here the rankings are identical on the development machine; the rule keeps the test exact
    about everything the float32 arithmetic does decide, on any CPU.
    """
    exact = a.double() @ b.double().t()  # (Q, N)
    e = summation_bound(a, b)[:, None]  # (Q, 1)
    for scores, ids in (plain, fast):
        assert all(len(set(row)) == len(row) for row in ids.tolist())  # no video twice
        assert ((scores.double() - exact.gather(1, ids)).abs() <= e).all()
    assert ((fast[0].double() - plain[0].double()).abs() <= 2 * e).all()
    differ = fast[1] != plain[1]
    gap = (exact.gather(1, fast[1]) - exact.gather(1, plain[1])).abs()  # (Q, k)
    assert (gap <= 4 * e)[differ].all()


def integer_embeddings(q: int, n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Integers in [-511, 511] at d <= 32: every float32 dot product is exact (|sum| < 2^24) in any order,
    while bfloat16 (8 significant bits) rounds most entries, so the prefilter still approximates."""
    assert d <= 32
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-511, 512, (q, d), generator=gen).float()  # (Q, D)
    return a, torch.randint(-511, 512, (n, d), generator=gen).float()  # (N, D)


def exact_topk_ids(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Oracle for exact scores: sort by (score desc, index asc)."""
    exact = a.double() @ b.double().t()  # (Q, N)
    index = torch.arange(b.shape[0], dtype=torch.float64).expand_as(exact)
    order = torch.from_numpy(np.lexsort((index.numpy(), -exact.numpy()), axis=1))  # (Q, N)
    return order[:, :k]


@pytest.mark.parametrize(
    ("q", "n", "d", "k", "block_videos"),
    [
        pytest.param(50, 3000, 64, 10, 1024, marks=pytest.mark.slow),
        (7, 999, 32, 1, 128),
        (20, 500, 16, 25, 100),
        (3, 40, 8, 40, 16),
        pytest.param(90, 2048, 512, 5, 2048, marks=pytest.mark.slow),  # the large shapes: slow
    ],
)
def test_prefilter_topk_equals_float32_topk(q: int, n: int, d: int, k: int, block_videos: int) -> None:
    a, b = embeddings(q, n, d, seed=q + n)
    plain, fast = both_paths(a, b, k, block_videos)
    assert_same_topk(a, b, plain, fast)


@pytest.mark.parametrize(("q", "n", "k", "block_videos"), [(20, 700, 9, 128), (3, 64, 64, 16)])
def test_prefilter_topk_equals_oracle_on_exact_scores(q: int, n: int, k: int, block_videos: int) -> None:
    """Where float32 is exact, both paths must give the oracle's ranking bit for bit."""
    a, b = integer_embeddings(q, n, 32, seed=n)
    assert not torch.equal(a.bfloat16().float(), a)  # the bfloat16 scores are approximations
    (plain_scores, plain_ids), (fast_scores, fast_ids) = both_paths(a, b, k, block_videos)
    oracle = exact_topk_ids(a, b, k)
    assert torch.equal(plain_ids, oracle) and torch.equal(fast_ids, oracle)
    assert torch.equal(fast_scores, plain_scores)


def test_prefilter_keeps_ties_and_the_lower_index_rule() -> None:
    """Duplicated videos tie exactly; the lower gallery index must win, as on the plain path.

    Integer embeddings: the scores are exact in float32, so the ties hold whatever kernel a CPU picks.
    """
    a, b = integer_embeddings(30, 600, 32, seed=3)
    b = torch.cat([b, b[:300]])  # videos 600..899 duplicate 0..299
    (_, plain_ids), (_, fast_ids) = both_paths(a, b, 12, 256)
    assert torch.equal(plain_ids, exact_topk_ids(a, b, 12)) and torch.equal(fast_ids, plain_ids)
    duplicates = 0
    for row in fast_ids.tolist():  # every duplicate comes after its original
        for place, video in enumerate(row):
            if video >= 600:
                duplicates += 1
                assert video - 600 in row[:place]
    assert duplicates > 0  # the ties are really tested


def test_prefilter_resolves_scores_closer_than_bfloat16_resolution() -> None:
    """Videos that differ by far less than a bfloat16 step: only float32 rescoring can order them."""
    a, b = embeddings(16, 1500, 64, seed=4)
    gen = torch.Generator().manual_seed(8)
    b = nn.functional.normalize(b[:1] + 1e-4 * torch.randn(1500, 64, generator=gen), dim=1)  # near-copies
    plain, fast = both_paths(a, b, 10, 256)
    assert_same_topk(a, b, plain, fast)
    assert (plain[0][:, 0] - plain[0][:, -1]).max() < 2.0**-8  # the top-10 sit inside one bf16 step
    assert (plain[0][:, 0] - plain[0][:, -1]).min() > 4 * summation_bound(a, b).max()  # not one float32 near-tie


def test_prefilter_on_unnormalised_and_mixed_scale_embeddings() -> None:
    a, b = embeddings(40, 2000, 48, seed=5, normalise=False)
    b = b * torch.logspace(-3, 3, 2000)[:, None]  # norms over six orders of magnitude
    plain, fast = both_paths(a, b, 8, 512)
    assert_same_topk(a, b, plain, fast)


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
    plain, fast = both_paths(a, b, 5, 50)
    assert_same_topk(a, b, plain, fast)
    assert (plain[1] >= 100).all() and (plain[1] < 150).all()  # the top-5 are the scaled videos


def test_prefilter_rejects_nan() -> None:
    a, b = embeddings(4, 200, 8, seed=1)
    b[17, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        engine.topk(StoredEmbeddings(), {"text": a}, {"video": b}, 3, 4, 64, "cpu", prefilter="bf16")


def test_prefilter_choice_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = embeddings(4, 200, 8, seed=2)
    text, video = {"text": a}, {"video": b}
    with pytest.raises(ValueError, match="prefilter 'fast'.*valid: auto, bf16, off"):
        engine.topk(StoredEmbeddings(), text, video, 3, prefilter="fast")
    with pytest.raises(ValueError, match="NegativeDistance"):
        engine.topk(NegativeDistance(), text, video, 3, prefilter="bf16")
    with pytest.raises(ValueError, match="float32"):
        engine.topk(StoredEmbeddings(), {"text": a.double()}, {"video": b.double()}, 3, prefilter="bf16")
    assert NegativeDistance().inner_product_operands(text, video) is None
    assert StoredEmbeddings().inner_product_operands(text, video) == (a, b)

    calls: list[int] = []
    original = engine.inner_product_topk_keys
    monkeypatch.setattr(engine, "inner_product_topk_keys", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(engine, "bf16_matmul_is_fast", lambda device: True)
    engine.topk(StoredEmbeddings(), text, video, 3, 4, 64, "cpu")  # auto, fast CPU, 4k <= block
    assert calls == [1]
    engine.topk(StoredEmbeddings(), text, video, 30, 4, 64, "cpu")  # auto, but 4k > block: plain path
    engine.topk(NegativeDistance(), text, video, 3, 4, 64, "cpu")  # auto, not an inner product
    monkeypatch.setattr(engine, "bf16_matmul_is_fast", lambda device: False)
    engine.topk(StoredEmbeddings(), text, video, 3, 4, 64, "cpu")  # auto, slow bfloat16
    assert calls == [1]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_takes_the_prefilter_exactly_when_the_cpu_has_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    """Both branches of ``auto`` run on every machine: the CPU capability check is forced either way."""
    a, b = integer_embeddings(12, 900, 32, seed=6)
    calls: list[int] = []
    original = engine.inner_product_topk_keys
    monkeypatch.setattr(engine, "inner_product_topk_keys", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(engine, "bf16_matmul_is_fast", lambda device: native_bf16)
    scores, ids = engine.topk(StoredEmbeddings(), {"text": a}, {"video": b}, 7, 8, 256, "cpu")  # auto
    assert calls == ([1, 1] if native_bf16 else [])  # one call per query block
    plain = engine.topk(StoredEmbeddings(), {"text": a}, {"video": b}, 7, 8, 256, "cpu", prefilter="off")
    assert torch.equal(ids, exact_topk_ids(a, b, 7)) and torch.equal(ids, plain[1]) and torch.equal(scores, plain[0])


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, True), (False, True, True), (False, False, False)]
)
def test_bf16_capability_check(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert prefilter.bf16_matmul_is_fast(torch.device("cpu")) is expected
    assert prefilter.bf16_matmul_is_fast(torch.device("cuda")) is False
