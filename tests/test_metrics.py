"""Ranks and metrics against hand-computed examples and brute-force loop oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from psbench.retrieval.metrics import (
    TIE_RULES,
    QueryRanks,
    diagonal_ranks,
    dual_softmax,
    evaluate_scores,
    metrics_from_ranks,
    order_accuracy,
    per_query_recall,
    t2v_ranks,
    v2t_ranks,
)

# Rows = captions (caption i describes video i), columns = videos.
S3 = np.array(
    [
        [0.9, 0.1, 0.5],  # truth 0.9: nothing above              -> g=0, t=0
        [0.2, 0.3, 0.8],  # truth 0.3: 0.8 above                  -> g=1, t=0
        [0.4, 0.4, 0.4],  # truth 0.4: two other equal entries    -> g=0, t=2
    ]
)


def test_hand_computed_3x3_t2v_every_tie_rule() -> None:
    ranks = t2v_ranks(S3, [0, 1, 2])
    assert ranks.greater.tolist() == [0, 1, 0]
    assert ranks.ties.tolist() == [0, 0, 2]
    # expected: R@1 contributions 1, (1-1)/1 = 0, (1-0)/3 = 1/3 -> 100 * (4/3) / 3 = 44.44
    #           midranks 0, 1, 0+2/2 = 1 -> median 1 -> MdR 2; mean 2/3 -> MnR 5/3
    m = metrics_from_ranks(ranks, "expected")
    assert m["R1"] == pytest.approx(400 / 9)
    assert m["R5"] == m["R10"] == pytest.approx(100.0)
    assert m["MdR"] == pytest.approx(2.0)
    assert m["MnR"] == pytest.approx(5 / 3)
    # optimistic: ranks 0, 1, 0 -> R@1 2/3, median 0 -> MdR 1, mean 1/3 -> MnR 4/3
    m = metrics_from_ranks(ranks, "optimistic")
    assert (m["R1"], m["MdR"], m["MnR"]) == pytest.approx((200 / 3, 1.0, 4 / 3))
    # pessimistic: ranks 0, 1, 2 -> R@1 1/3, median 1 -> MdR 2, mean 1 -> MnR 2
    m = metrics_from_ranks(ranks, "pessimistic")
    assert (m["R1"], m["MdR"], m["MnR"]) == pytest.approx((100 / 3, 2.0, 2.0))


def test_hand_computed_3x3_v2t() -> None:
    # columns of S3: video 0 (0.9 | 0.2, 0.4) g=0; video 1 (0.3 | 0.1, 0.4) g=1; video 2 (0.4 | 0.5, 0.8) g=2
    for rule in ("group_max", "all_captions"):
        ranks = v2t_ranks(S3, [0, 1, 2], rule)
        assert ranks.greater.tolist() == [0, 1, 2]
        assert ranks.ties.tolist() == [0, 0, 0]
        m = metrics_from_ranks(ranks, "expected")
        assert (m["R1"], m["R5"], m["MdR"], m["MnR"]) == pytest.approx((100 / 3, 100.0, 2.0, 2.0))


def test_tie_rules_on_one_tied_query() -> None:
    # g = 3 strictly above, t = 4 others tied: rank uniform on {3, ..., 7}
    ranks = QueryRanks(np.array([3]), np.array([4]))
    assert per_query_recall(ranks, 1, "expected")[0] == 0.0  # (1-3)/5 clipped to 0
    assert per_query_recall(ranks, 5, "expected")[0] == pytest.approx(2 / 5)  # ranks 3, 4 of 5 count
    assert per_query_recall(ranks, 10, "expected")[0] == 1.0  # (10-3)/5 clipped to 1
    assert per_query_recall(ranks, 5, "optimistic")[0] == 1.0  # rank 3 < 5
    assert per_query_recall(ranks, 5, "pessimistic")[0] == 0.0  # rank 7 >= 5
    assert per_query_recall(ranks, 8, "pessimistic")[0] == 1.0
    assert metrics_from_ranks(ranks, "expected")["MnR"] == 6.0  # 3 + 4/2 + 1
    assert metrics_from_ranks(ranks, "optimistic")["MnR"] == 4.0
    assert metrics_from_ranks(ranks, "pessimistic")["MnR"] == 8.0


def test_expected_recall_is_mean_over_all_tie_breaks() -> None:
    rng = np.random.default_rng(0)
    g, t = rng.integers(0, 12, 50), rng.integers(0, 6, 50)
    got = per_query_recall(QueryRanks(g, t), 5, "expected")
    oracle = [np.mean([r < 5 for r in range(gi, gi + ti + 1)]) for gi, ti in zip(g, t, strict=True)]
    np.testing.assert_allclose(got, oracle)


def test_median_rank_with_even_number_of_queries() -> None:
    # ranks 0, 1, 3, 6 -> np.median 2 -> MdR 3
    assert metrics_from_ranks(QueryRanks(np.array([0, 1, 3, 6]), np.zeros(4, np.int64)))["MdR"] == 3.0
    # expected midranks 0, 0.5, 3, 5 -> median (0.5 + 3) / 2 = 1.75 -> MdR 2.75
    ranks = QueryRanks(np.array([0, 0, 3, 5]), np.array([0, 1, 0, 0]))
    assert metrics_from_ranks(ranks, "expected")["MdR"] == 2.75
    assert metrics_from_ranks(ranks, "optimistic")["MdR"] == 2.5  # 0, 0, 3, 5 -> 1.5 + 1


# -- brute-force oracles -----------------------------------------------------------------------------
def oracle_t2v(s: np.ndarray, cv: list[int]) -> tuple[list[int], list[int]]:
    greater, ties = [], []
    for q in range(s.shape[0]):
        truth = s[q, cv[q]]
        greater.append(sum(1 for n in range(s.shape[1]) if s[q, n] > truth))
        ties.append(sum(1 for n in range(s.shape[1]) if n != cv[q] and s[q, n] == truth))
    return greater, ties


def oracle_v2t(s: np.ndarray, cv: list[int], rule: str) -> tuple[list[int], list[int]]:
    greater, ties = [], []
    videos = sorted(set(cv))
    for v in videos:
        if rule == "group_max":
            group = {u: max(s[q, v] for q in range(len(cv)) if cv[q] == u) for u in videos}
            rivals = [group[u] for u in videos if u != v]
            truth = group[v]
        else:
            truth = max(s[q, v] for q in range(len(cv)) if cv[q] == v)
            rivals = [s[q, v] for q in range(len(cv)) if cv[q] != v]
        greater.append(sum(1 for x in rivals if x > truth))
        ties.append(sum(1 for x in rivals if x == truth))
    return greater, ties


def random_multicaption(seed: int, q: int = 40, n: int = 9) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(q, n)).astype(np.float32)  # few values -> many exact ties
    cv = rng.integers(0, n - 1, size=q).tolist()  # video n-1 has no caption
    return scores, cv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_t2v_matches_loop_oracle(seed: int) -> None:
    scores, cv = random_multicaption(seed)
    ranks = t2v_ranks(torch.from_numpy(scores), torch.tensor(cv))
    assert (ranks.greater.tolist(), ranks.ties.tolist()) == oracle_t2v(scores, cv)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rule", ["group_max", "all_captions"])
def test_v2t_matches_loop_oracle(seed: int, rule: str) -> None:
    scores, cv = random_multicaption(seed)
    ranks = v2t_ranks(scores, cv, rule)
    assert len(ranks) == len(set(cv))  # one query per video with a caption
    assert (ranks.greater.tolist(), ranks.ties.tolist()) == oracle_v2t(scores, cv, rule)


def test_group_max_is_more_lenient_than_all_captions() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(60, 8))
    cv = rng.integers(0, 8, 60)
    lenient, strict = v2t_ranks(scores, cv, "group_max"), v2t_ranks(scores, cv, "all_captions")
    assert (lenient.greater <= strict.greater).all()
    assert (lenient.greater < strict.greater).any()


def test_single_caption_reduces_to_diagonal() -> None:
    rng = np.random.default_rng(4)
    n = 7
    scores = rng.integers(0, 3, size=(n, n)).astype(np.float64)
    perm = rng.permutation(n)  # caption q describes video perm[q]
    diag_order = scores[np.argsort(perm)]  # row i is now the caption of video i
    t2v_plain, v2t_plain = diagonal_ranks(diag_order), diagonal_ranks(diag_order.T)
    t2v = t2v_ranks(scores, perm)
    assert sorted(zip(t2v.greater, t2v.ties, strict=True)) == sorted(
        zip(t2v_plain.greater, t2v_plain.ties, strict=True)
    )
    for rule in ("group_max", "all_captions"):
        v2t = v2t_ranks(scores, perm, rule)
        assert v2t.greater.tolist() == v2t_plain.greater.tolist()
        assert v2t.ties.tolist() == v2t_plain.ties.tolist()


def test_evaluate_scores_and_ranks_roundtrip() -> None:
    scores, cv = random_multicaption(5)
    metrics, ranks = evaluate_scores(scores, cv, "expected", "all_captions")
    assert set(metrics) == {"t2v", "v2t"} and set(metrics["t2v"]) == {"R1", "R5", "R10", "MdR", "MnR"}
    for name, r in ranks.items():
        back = QueryRanks.from_dict(json.loads(json.dumps(r.to_dict())))
        assert back.greater.dtype == np.int64
        assert metrics_from_ranks(back, "expected") == metrics[name]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="tie rule"):
        metrics_from_ranks(QueryRanks(np.array([0]), np.array([0])), "random")
    with pytest.raises(ValueError, match="v2t rule"):
        v2t_ranks(S3, [0, 1, 2], "best")
    with pytest.raises(ValueError, match="caption_video"):
        t2v_ranks(S3, [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        t2v_ranks(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(KeyError, match="ties"):
        QueryRanks.from_dict({"greater": [1]})
    assert set(TIE_RULES) == {"expected", "optimistic", "pessimistic"}


def test_order_accuracy_built_example() -> None:
    # videos 0 <-> 1 are twins, video 2 has none
    scores = np.array(
        [
            [0.9, 0.5, 0.0],  # caption of v0: own 0.9 > twin 0.5          -> 1
            [0.6, 0.3, 0.0],  # caption of v1: own 0.3 < twin 0.6          -> 0
            [0.7, 0.7 + 1e-7, 0.0],  # caption of v0: |diff| = 1e-7 <= atol -> 1/2
            [0.0, 0.0, 0.1],  # caption of v2: no twin, not counted
            [0.2, 0.8, 0.0],  # caption of v1: own 0.8 > twin 0.2          -> 1
        ]
    )
    cv = [0, 1, 0, 2, 1]
    assert order_accuracy(scores, cv, [1, 0, -1]) == pytest.approx(100 * 2.5 / 4)
    # atol = 0: the third caption's own video now loses by 1e-7 -> 1 + 0 + 0 + 1
    assert order_accuracy(scores, cv, [1, 0, -1], atol=0.0) == pytest.approx(100 * 2 / 4)
    with pytest.raises(ValueError, match="twin"):
        order_accuracy(scores, cv, [-1, -1, -1])


@pytest.mark.parametrize("tau", [1.0, 100.0])
def test_dual_softmax_matches_direct_formula(tau: float) -> None:
    rng = np.random.default_rng(6)
    s = rng.uniform(-1, 1, size=(5, 4))
    got = dual_softmax(torch.from_numpy(s), tau).numpy()
    for q in range(5):
        for n in range(4):
            column = [math.exp(tau * s[k, n] - tau * s[:, n].max()) for k in range(5)]
            expected = s[q, n] * column[q] / sum(column)
            assert got[q, n] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def _meanpool_scores(frames: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Cosine scores of mean-pooled frames, as the mean-pool method computes them in float32."""
    video = torch.nn.functional.normalize(frames.mean(dim=1), dim=-1)  # (N, D)
    return (text @ video.T).numpy()  # (Q, N)


def test_mean_pool_under_frame_reversal_reports_no_change() -> None:
    """Twins are reversed copies; reversing every video's frames swaps them. An order-blind mean-pool
    scores both the same up to float rounding, which must not move any rank (no drop reported)."""
    from psbench.retrieval.metrics import order_accuracy

    gen = torch.Generator().manual_seed(0)
    pairs, t, d = 60, 12, 64
    base = torch.randn(pairs, t, d, generator=gen)
    frames = torch.cat([base, base.flip(1)])  # video i + pairs is the reversed twin of video i
    # a caption per video (twins' captions differ, as "moves left" / "moves right" do), near its video
    text = torch.nn.functional.normalize(frames.mean(1) + 0.8 * torch.randn(2 * pairs, d, generator=gen), dim=-1)
    cv = np.arange(2 * pairs)
    keep, reverse = _meanpool_scores(frames, text), _meanpool_scores(frames.flip(1), text)
    assert not np.array_equal(keep, reverse)  # rounding differs ...
    assert np.abs(keep - reverse).max() < 4 * np.finfo(np.float32).eps  # ... by float32 rounding only
    for name, ranks in (("t2v", t2v_ranks), ("v2t", v2t_ranks)):
        before = metrics_from_ranks(ranks(keep, cv))
        after = metrics_from_ranks(ranks(reverse, cv))
        assert before == after, name
    twin = np.concatenate([np.arange(pairs) + pairs, np.arange(pairs)])
    assert order_accuracy(keep, cv, twin) == order_accuracy(reverse, cv, twin) == 50.0


def test_scores_within_rounding_tie_but_real_differences_rank() -> None:
    scores = np.array([[0.5, 0.5 + 1e-7, 0.5 - 1e-3]], dtype=np.float32)
    ranks = t2v_ranks(scores, np.array([0]))
    assert ranks.greater.tolist() == [0] and ranks.ties.tolist() == [1]
    ranks = t2v_ranks(scores, np.array([2]))
    assert ranks.greater.tolist() == [2] and ranks.ties.tolist() == [0]
