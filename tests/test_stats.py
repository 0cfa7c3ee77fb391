"""Bootstrap CIs and paired tests of the report: coverage of the estimate, shrinkage, null calibration, power."""

import numpy as np
import pytest
from scipy import stats as sps

from psbench.report.stats import bootstrap_ci, holm, paired_bootstrap_diff, sign_flip_test, wilcoxon_test


def _binomial_band(n: int, p: float, tail: float = 0.0005) -> tuple[int, int]:
    return int(sps.binom.ppf(tail, n, p)), int(sps.binom.ppf(1 - tail, n, p))


def _null_rank_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two exchangeable methods: per-query difficulty shared, independent noise; ranks >= 0."""
    difficulty = rng.gamma(2.0, 3.0, size=n)
    a = np.floor(rng.exponential(difficulty))
    b = np.floor(rng.exponential(difficulty))
    return a, b


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_more_queries():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        hits = (rng.random(n) < 0.4).astype(float)
        ci = bootstrap_ci(hits, "mean", resamples=2000, rng=np.random.default_rng(0), scale=100.0)
        assert ci.low <= ci.point <= ci.high
        assert ci.point == pytest.approx(100 * hits.mean())
        widths.append(ci.high - ci.low)
    # The width scales like 1/sqrt(n): 16x the queries -> about 1/4 of the width.
    assert widths[1] < widths[0] / 2.5
    assert widths[0] == pytest.approx(2 * 1.96 * 100 * np.sqrt(0.4 * 0.6 / 100), rel=0.3)


def test_bootstrap_median_and_shift():
    values = np.arange(101, dtype=float)
    ci = bootstrap_ci(values, "median", resamples=1000, shift=1.0)
    assert ci.point == 51.0 and ci.low <= 51.0 <= ci.high


def test_sign_flip_exact_oracle():
    # Five positive differences: only all-plus and all-minus reach |sum| = 5 among 2^5 patterns.
    result = sign_flip_test(np.array([1.0, 2.0, 1.0, 3.0, 1.0, 0.0, 0.0]), permutations=5000)
    assert "exact" in result.name
    assert result.p == pytest.approx(2 / 32)
    assert sign_flip_test(np.zeros(10)).p == 1.0


def test_sign_flip_is_calibrated_under_the_null():
    """200 null pairs: p < 0.05 about 5% of the time (binomial band) and p ~ Uniform(0, 1) (KS)."""
    rng = np.random.default_rng(2024)
    pvalues = []
    for _ in range(200):
        a, b = _null_rank_pair(rng, 150)
        pvalues.append(sign_flip_test(a - b, permutations=2000, rng=rng).p)
    pvalues = np.array(pvalues)
    low, high = _binomial_band(200, 0.05)
    assert low <= int((pvalues < 0.05).sum()) <= high
    assert sps.kstest(pvalues, "uniform").pvalue > 0.001


def test_sign_flip_on_binary_recall_is_not_anticonservative():
    """Per-query R@1 differences are in {-1, 0, 1}: the test may be conservative, never liberal."""
    rng = np.random.default_rng(7)
    rejections = 0
    for _ in range(200):
        p_query = rng.beta(2, 3, size=200)
        a, b = (rng.random(200) < p_query).astype(float), (rng.random(200) < p_query).astype(float)
        rejections += sign_flip_test(a - b, permutations=2000, rng=rng).p < 0.05
    assert rejections <= _binomial_band(200, 0.05)[1]


def test_wilcoxon_is_calibrated_under_the_null():
    rng = np.random.default_rng(11)
    pvalues = np.array([wilcoxon_test(*_null_rank_pair(rng, 150)).p for _ in range(200)])
    low, high = _binomial_band(200, 0.05)
    assert low <= int((pvalues < 0.05).sum()) <= high
    assert sps.kstest(pvalues, "uniform").pvalue > 0.001


def test_clearly_better_method_gets_a_small_p():
    rng = np.random.default_rng(3)
    baseline, _ = _null_rank_pair(rng, 300)
    better = np.floor(baseline * 0.5)  # halves every rank
    assert sign_flip_test(better - baseline, permutations=5000, rng=rng).p < 0.001
    assert wilcoxon_test(better, baseline).p < 1e-6
    hits_base = (rng.random(300) < 0.3).astype(float)
    hits_better = np.maximum(hits_base, (rng.random(300) < 0.3).astype(float))
    assert sign_flip_test(hits_better - hits_base, permutations=5000, rng=rng).p < 0.001
    diff = paired_bootstrap_diff(hits_better, hits_base, scale=100.0)
    assert diff.low > 0 and diff.low <= diff.point <= diff.high


def test_wilcoxon_not_applied_without_differences():
    result = wilcoxon_test(np.ones(50), np.ones(50))
    assert result.p is None and "differ" in result.note


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([]) == []
