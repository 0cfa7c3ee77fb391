"""Retrieval ranks and metrics (spec §8.4), multi-caption rules (§8.2), order accuracy and DSL (§8.5).

Ranks are 0-based. For one query let ``g`` be the number of candidates with a strictly greater score
than the ground truth and ``t`` the number of OTHER candidates with exactly the same score. Both are
stored per query (:class:`QueryRanks`), so confidence intervals and paired tests can be computed
later under any tie rule. A protocol fixes one tie rule from :data:`TIE_RULES`:

- ``optimistic``: rank = g (the tied ground truth wins every tie);
- ``pessimistic``: rank = g + t (it loses every tie);
- ``expected`` (our default): the expectation under uniformly random tie-breaking, i.e. the rank
  is uniform on {g, ..., g + t}. A query contributes ``clip((K - g) / (t + 1), 0, 1)`` to R@K;
  MnR uses the mean rank g + t/2; MdR is the median of the midranks g + t/2.

Scores within rounding are ties: ``c`` ties the ground truth ``s`` when ``|c - s| <= TIE_ULPS x eps x`` the
largest ``|score|`` of the query's row, ``eps`` the machine epsilon of the scores' dtype (float32 summation
in another order, e.g. a mean over reversed frames, moves an exact tie by 1-3 eps; letting that decide a
rank would report rounding as an effect). The order-accuracy
metric uses the same idea (``atol``).

Why ``expected``: exact ties are real (duplicated captions in MSR-VTT, MSVD and LSMDC; time-reversed
twins in the synthetic set, which an order-blind method scores identically). The optimistic rule of
the C4C/TS2/VIP ``compute_metrics`` would credit an order-blind method with a hit it cannot make,
the pessimistic rule punishes it for a coin flip, and the double-argsort of the reference code gives
an arbitrary, platform-dependent answer. The expectation is deterministic and equals the mean over
all tie-breaks.

R@K = 100 x mean contribution; MdR = ``np.median`` of the ranks + 1 (the two middle values are
averaged, so x.5 is possible); MnR = mean rank + 1.

Text-to-video has one query per caption, so multi-caption data (MSVD) weighs videos by their caption
count, as in the reference code. Video-to-text has one query per gallery video that has at least one
caption (in gallery order), under one of two rules (:data:`V2T_RULES`): ``group_max`` (the lenient
X-Pool / Prompt Switch / C4C convention) or ``all_captions`` (strict). Both reduce to the plain
diagonal protocol when every video has exactly one caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

TIE_RULES = ("expected", "optimistic", "pessimistic")
V2T_RULES = ("group_max", "all_captions")
DEFAULT_KS = (1, 5, 10)
#: the two retrieval directions and the metric keys of every result, in display order (the one list)
DIRECTIONS = ("t2v", "v2t")
METRIC_KEYS = (*(f"R{k}" for k in DEFAULT_KS), "MdR", "MnR")

#: rows of the score matrix compared at once (bounds temporary memory to ~ROW_BLOCK x N)
ROW_BLOCK = 2048

ArrayLike = Tensor | np.ndarray | Sequence[Any]

#: two scores closer than this many machine epsilons (of the scores' dtype) times the row's largest
#: |score| are a tie: a mean over reversed frames moves an exact float32 tie by 1-3 eps (measured)
TIE_ULPS = 16


@dataclass
class QueryRanks:
    """Per-query rank facts: ``greater`` (g) and ``ties`` (t), both int64 of shape (num_queries,)."""

    greater: np.ndarray
    ties: np.ndarray

    def __post_init__(self) -> None:
        self.greater = np.asarray(self.greater, dtype=np.int64)
        self.ties = np.asarray(self.ties, dtype=np.int64)
        if self.greater.ndim != 1 or self.greater.shape != self.ties.shape:
            raise ValueError(
                f"QueryRanks: greater {self.greater.shape} and ties {self.ties.shape} must be equal 1-D shapes"
            )
        if (self.greater < 0).any() or (self.ties < 0).any():
            raise ValueError("QueryRanks: greater and ties must be non-negative")

    def __len__(self) -> int:
        return int(self.greater.shape[0])

    def to_dict(self) -> dict[str, list[int]]:
        return {"greater": self.greater.tolist(), "ties": self.ties.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueryRanks:
        missing = [key for key in ("greater", "ties") if key not in data]
        if missing:
            raise KeyError(f"QueryRanks.from_dict: missing key(s) {', '.join(missing)}")
        return cls(np.asarray(data["greater"], dtype=np.int64), np.asarray(data["ties"], dtype=np.int64))


# -- inputs ------------------------------------------------------------------------------------------
def _scores_numpy(scores: ArrayLike) -> np.ndarray:
    if isinstance(scores, Tensor):
        scores = scores.detach().cpu().numpy()
    array = np.asarray(scores)
    if array.ndim != 2:
        raise ValueError(f"scores must be a 2-D (queries, videos) matrix, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if np.isnan(array).any():
        raise ValueError("scores contain NaN; ranks would be undefined")
    return array


def _caption_video(caption_video: ArrayLike, num_captions: int, num_videos: int) -> np.ndarray:
    if isinstance(caption_video, Tensor):
        caption_video = caption_video.detach().cpu().numpy()
    index = np.asarray(caption_video, dtype=np.int64)
    if index.shape != (num_captions,):
        raise ValueError(f"caption_video has shape {index.shape}, expected ({num_captions},) (one per score row)")
    if num_captions and (index.min() < 0 or index.max() >= num_videos):
        raise ValueError(f"caption_video holds gallery indices outside [0, {num_videos})")
    return index


def _check_tie_rule(tie_rule: str) -> None:
    if tie_rule not in TIE_RULES:
        raise ValueError(f"unknown tie rule {tie_rule!r}; valid: {', '.join(TIE_RULES)}")


# -- ranks -------------------------------------------------------------------------------------------
def _rank_against(candidates: np.ndarray, truth: np.ndarray, exclude: np.ndarray | None) -> QueryRanks:
    """candidates (B, C), truth (B,), exclude (B, C) bool or None -> g and t (truth itself excluded).

    A candidate within rounding of the truth (:data:`TIE_ULPS` eps of the row's largest |score|) is a tie.
    """
    finite = np.where(np.isfinite(candidates), np.abs(candidates), 0.0)  # an infinite score sets no scale
    scale = np.maximum(finite.max(axis=1, initial=0.0), np.where(np.isfinite(truth), np.abs(truth), 0.0))  # (B,)
    eps = np.finfo(candidates.dtype).eps if np.issubdtype(candidates.dtype, np.floating) else 0.0
    tol = (TIE_ULPS * eps * scale)[:, None]  # (B, 1)
    diff = candidates - truth[:, None]  # (B, C)
    above = diff > tol  # (B, C)
    equal = np.abs(diff) <= tol  # (B, C)
    if exclude is not None:
        above &= ~exclude
        equal &= ~exclude
    return QueryRanks(above.sum(1), equal.sum(1))


def _concat(parts: list[QueryRanks]) -> QueryRanks:
    if not parts:
        return QueryRanks(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return QueryRanks(np.concatenate([p.greater for p in parts]), np.concatenate([p.ties for p in parts]))


def diagonal_ranks(scores: ArrayLike) -> QueryRanks:
    """Square (N, N) matrix whose ground truth is the diagonal: rank each row's diagonal entry."""
    matrix = _scores_numpy(scores)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"diagonal_ranks needs a square matrix, got {matrix.shape}")
    return t2v_ranks(matrix, np.arange(matrix.shape[0]))


def t2v_ranks(scores: ArrayLike, caption_video: ArrayLike) -> QueryRanks:
    """Text-to-video: one query per caption (row), ranked over the N videos (columns).

    scores (Q, N); caption_video (Q,) gallery index of each caption's video.
    """
    matrix = _scores_numpy(scores)  # (Q, N)
    cv = _caption_video(caption_video, *matrix.shape)
    parts = []
    for start in range(0, matrix.shape[0], ROW_BLOCK):
        rows = matrix[start : start + ROW_BLOCK]  # (B, N)
        own = cv[start : start + ROW_BLOCK]  # (B,)
        truth = rows[np.arange(rows.shape[0]), own]  # (B,)
        ranks = _rank_against(rows, truth, None)
        parts.append(QueryRanks(ranks.greater, ranks.ties - 1))  # the truth equals itself once
    return _concat(parts)


def _group_max(matrix: np.ndarray, cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, N) scores -> (G, N) max over each non-empty caption group, and the G group video indices."""
    order = np.argsort(cv, kind="stable")  # captions sorted by video
    sorted_cv = cv[order]  # (Q,)
    groups = np.unique(sorted_cv)  # (G,) gallery indices of videos with captions
    starts = np.searchsorted(sorted_cv, groups)  # (G,)
    return np.maximum.reduceat(matrix[order], starts, axis=0), groups  # (G, N), (G,)


def v2t_ranks(scores: ArrayLike, caption_video: ArrayLike, rule: str = "group_max") -> QueryRanks:
    """Video-to-text: one query per gallery video with at least one caption, in gallery order.

    ``group_max`` (spec §8.2; XP/PS ``v2t_metrics``, C4C ``tensor_video_to_text_sim``): a video scores
    each caption group by the max over that group's captions; its own group is ranked among the groups.
    ``all_captions``: the video's best own caption is ranked among all captions, with only other
    videos' captions as competitors. group-max rank <= all-captions rank.
    """
    if rule not in V2T_RULES:
        raise ValueError(f"unknown v2t rule {rule!r}; valid: {', '.join(V2T_RULES)}")
    matrix = _scores_numpy(scores)  # (Q, N)
    cv = _caption_video(caption_video, *matrix.shape)
    if cv.size == 0:
        raise ValueError("v2t_ranks: no captions, so no video has a ground truth")
    grouped, groups = _group_max(matrix, cv)  # (G, N), (G,)
    by_video = grouped[:, groups].T  # (G videos, G groups); diagonal = own group
    if rule == "group_max":
        return t2v_ranks(by_video, np.arange(len(groups)))
    best_own = np.diagonal(by_video)  # (G,)
    parts = []
    for start in range(0, len(groups), ROW_BLOCK):
        videos = groups[start : start + ROW_BLOCK]  # (B,)
        columns = matrix[:, videos].T  # (B, Q)
        own = cv[None, :] == videos[:, None]  # (B, Q)
        parts.append(_rank_against(columns, best_own[start : start + ROW_BLOCK], own))
    return _concat(parts)


# -- metrics -----------------------------------------------------------------------------------------
def rank_positions(ranks: QueryRanks, tie_rule: str) -> np.ndarray:
    """The 0-based rank used for MdR/MnR: g (optimistic), g + t (pessimistic), g + t/2 (expected)."""
    _check_tie_rule(tie_rule)
    g, t = ranks.greater.astype(np.float64), ranks.ties.astype(np.float64)
    return {"optimistic": g, "pessimistic": g + t, "expected": g + t / 2}[tie_rule]


def per_query_recall(ranks: QueryRanks, k: int, tie_rule: str) -> np.ndarray:
    """Per-query contribution to R@k in [0, 1] (float64), e.g. for bootstrap confidence intervals."""
    _check_tie_rule(tie_rule)
    if k < 1:
        raise ValueError(f"recall cut-off k must be >= 1, got {k}")
    g, t = ranks.greater.astype(np.float64), ranks.ties.astype(np.float64)
    if tie_rule == "optimistic":
        return (g < k).astype(np.float64)
    if tie_rule == "pessimistic":
        return (g + t < k).astype(np.float64)
    return np.clip((k - g) / (t + 1), 0.0, 1.0)


def metrics_from_ranks(
    ranks: QueryRanks, tie_rule: str = "expected", ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """{"R1", "R5", "R10", "MdR", "MnR"} (R@K in percent) for the given ranks and tie rule."""
    if len(ranks) == 0:
        raise ValueError("cannot compute metrics from zero queries")
    out = {f"R{k}": float(100.0 * per_query_recall(ranks, k, tie_rule).mean()) for k in ks}
    positions = rank_positions(ranks, tie_rule)
    out["MdR"] = float(np.median(positions) + 1)
    out["MnR"] = float(positions.mean() + 1)
    return out


def evaluate_scores(
    scores: ArrayLike,
    caption_video: ArrayLike,
    tie_rule: str = "expected",
    v2t_rule: str = "group_max",
    ks: Sequence[int] = DEFAULT_KS,
) -> tuple[dict[str, dict[str, float]], dict[str, QueryRanks]]:
    """Both directions at once: ({"t2v": metrics, "v2t": metrics}, {"t2v": ranks, "v2t": ranks})."""
    ranks = {"t2v": t2v_ranks(scores, caption_video), "v2t": v2t_ranks(scores, caption_video, v2t_rule)}
    return {name: metrics_from_ranks(r, tie_rule, ks) for name, r in ranks.items()}, ranks


# -- order accuracy ----------------------------------------------------------------------------------
def order_accuracy(scores: ArrayLike, caption_video: ArrayLike, twin_index: ArrayLike, atol: float = 1e-5) -> float:
    """Percent of captions whose own video scores above its twin (e.g. its time-reversed copy).

    Only captions whose video has a twin (``twin_index[video] >= 0``) count. A difference within
    ``atol`` counts one half: an order-blind method scores a video and its reversal equally in exact
    arithmetic, but float summation in a different frame order leaves differences of ~1e-7, which must
    not be read as a preference. Chance level (and an order-blind method) is 50%.
    """
    matrix = _scores_numpy(scores)  # (Q, N)
    cv = _caption_video(caption_video, *matrix.shape)
    if isinstance(twin_index, Tensor):
        twin_index = twin_index.detach().cpu().numpy()
    twins = np.asarray(twin_index, dtype=np.int64)
    if twins.shape != (matrix.shape[1],):
        raise ValueError(f"twin_index has shape {twins.shape}, expected ({matrix.shape[1]},) (one per video)")
    if twins.max(initial=-1) >= matrix.shape[1]:
        raise ValueError(f"twin_index holds gallery indices outside [0, {matrix.shape[1]})")
    twin_of_caption = twins[cv]  # (Q,)
    rows = np.flatnonzero(twin_of_caption >= 0)
    if rows.size == 0:
        raise ValueError("order_accuracy: no caption belongs to a video with a twin")
    diff = matrix[rows, cv[rows]].astype(np.float64) - matrix[rows, twin_of_caption[rows]]  # (R,)
    credit = np.where(np.abs(diff) <= atol, 0.5, (diff > 0).astype(np.float64))
    return float(100.0 * credit.mean())


# -- relation probe -----------------------------------------------------------------------------------
def relation_margins(scores: ArrayLike, caption_video: ArrayLike, groups: ArrayLike) -> np.ndarray:
    """Video-to-text margins of the relation probe, (G, 4): own relation's caption minus the other's.

    ``groups`` (G, 4) holds gallery indices [same, same, different, different]; the caption of the
    first "same" video and of the first "different" video are the group's two captions (the members
    of a pair share their caption text). For a "same" video the margin is s(same caption) - s(different
    caption), for a "different" video the reverse. Under any additive pooling with a cosine (or dot)
    readout a margin is a linear function of the video's pooled vector divided by its norm, and those
    linear functions sum to zero over a group, so the four margins are never all positive
    (``protocols/README.md``, relation probe).
    """
    matrix = _scores_numpy(scores)  # (Q, N)
    cv = _caption_video(caption_video, *matrix.shape)
    idx = np.asarray(groups, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[1] != 4 or idx.size == 0:
        raise ValueError(f"groups must be a non-empty (G, 4) array of gallery indices, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= matrix.shape[1]:
        raise ValueError(f"groups hold gallery indices outside [0, {matrix.shape[1]})")
    first_caption = np.full(matrix.shape[1], -1, dtype=np.int64)  # (N,) first caption row of each video
    for q in range(cv.size - 1, -1, -1):
        first_caption[cv[q]] = q
    same_q, diff_q = first_caption[idx[:, 0]], first_caption[idx[:, 2]]  # (G,) each
    if (same_q < 0).any() or (diff_q < 0).any():
        raise ValueError("relation_margins: a group's first 'same' or 'different' video has no caption")
    m = matrix.astype(np.float64)
    s_same = m[same_q[:, None], idx]  # (G, 4) score of the "same" caption for each member
    s_diff = m[diff_q[:, None], idx]  # (G, 4)
    sign = np.array([1.0, 1.0, -1.0, -1.0])  # (4,)
    return sign * (s_same - s_diff)  # (G, 4)


def relation_summary(margins: np.ndarray, atol: float = 1e-5) -> dict[str, float]:
    """Group score (% of groups with all four margins > atol; chance 6.25%, additive pooling 0%) and video
    accuracy (% of videos preferring their own relation, a margin within atol counting one half; chance
    50%, additive pooling at most 75%)."""
    margins = np.asarray(margins, dtype=np.float64)  # (G, 4)
    right = margins > atol  # (G, 4)
    credit = np.where(np.abs(margins) <= atol, 0.5, right.astype(np.float64))  # (G, 4)
    return {
        "group_score": float(100.0 * right.all(axis=1).mean()),
        "video_accuracy": float(100.0 * credit.mean()),
        "groups": int(margins.shape[0]),
    }


# -- DSL -----------------------------------------------------------------------------------------------
def dual_softmax(scores: Tensor | np.ndarray, tau: float) -> Tensor:
    """DSL prior (spec §8.5): ``S'[q, n] = S[q, n] * softmax_q(tau * S[:, n])``.

    The softmax runs over the TEXT axis within each video column, over all Q queries at once
    (transductive); for multi-caption data it runs over all captions before any grouping. t2v ranks
    the rows of S', v2t the rows of S'^T (the same column prior, as in TS2 and CLIP-ViP).
    """
    matrix = torch.as_tensor(scores)
    if matrix.ndim != 2:
        raise ValueError(f"dual_softmax needs a 2-D (queries, videos) matrix, got shape {tuple(matrix.shape)}")
    prior = torch.softmax(tau * matrix, dim=0)  # (Q, N), columns sum to 1
    return matrix * prior
