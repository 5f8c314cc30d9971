"""Paired-difference statistics of the Fashion-MNIST study (benchmarks/study/stats.py),
checked against scipy's paired t-test and by the coverage of their intervals."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks.study import stats


def test_paired_difference_matches_scipy_and_a_hand_computed_interval():
    a, b = [75.1, 76.3, 74.8, 75.9], [73.0, 74.9, 74.1, 73.2]
    d = np.subtract(a, b)  # 2.1, 1.4, 0.7, 2.7
    out = stats.paired_difference(a, b)
    assert out["n"] == 4 and out["wins"] == 4
    assert out["mean"] == pytest.approx(1.725) and out["std"] == pytest.approx(d.std(ddof=1))
    assert out["p_value"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    half = 3.182446305 * d.std(ddof=1) / 2.0  # t(0.975, 3 dof) * s / sqrt(4)
    assert out["t_ci"] == pytest.approx((1.725 - half, 1.725 + half), rel=1e-6)
    low, high = out["bootstrap_ci"]
    assert d.min() <= low <= 1.725 <= high <= d.max()
    assert stats.verdict(out) == "better"
    assert stats.verdict(stats.paired_difference(b, a)) == "worse"
    assert stats.verdict(stats.paired_difference([1.0, 2.0, 3.0], [2.0, 1.0, 3.5])) == "no detectable difference"


def test_intervals_cover_the_true_mean_at_their_level():
    """95% intervals over many simulated studies of 8 pairs: about 95% contain the truth."""
    rng = np.random.default_rng(0)
    trials, covered_t, covered_boot = 1000, 0, 0
    for _ in range(trials):
        a = rng.normal(1.0, 1.0, 8)
        b = rng.normal(0.0, 0.5, 8)
        out = stats.paired_difference(a, b)
        covered_t += out["t_ci"][0] <= 1.0 <= out["t_ci"][1]
        covered_boot += out["bootstrap_ci"][0] <= 1.0 <= out["bootstrap_ci"][1]
    assert 0.93 <= covered_t / trials <= 0.97
    assert 0.85 <= covered_boot / trials <= 0.96  # the percentile bootstrap is known to under-cover at small n


def test_degenerate_inputs():
    one = stats.paired_difference([1.0], [0.0])
    assert one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["t_ci"][0])
    assert stats.verdict(one) == "too few runs"
    same = stats.paired_difference([1.0, 2.0], [0.0, 1.0])  # constant difference: no spread
    assert same["t_ci"] == (1.0, 1.0) and same["p_value"] == 0.0
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_difference([1.0, 2.0], [1.0])
    assert stats.bootstrap_interval([1.0, 3.0, 2.0]) == stats.bootstrap_interval([1.0, 3.0, 2.0])
