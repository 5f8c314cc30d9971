"""Statistics for comparing two training recipes run on the same seeds.

Two students trained with the same seed share their initialisation and data order, so
their accuracies are paired: the per-seed differences carry the comparison, and their
spread is smaller than either recipe's own. paired_difference reports the mean
difference with a Student-t confidence interval and a percentile-bootstrap one (the t
interval assumes roughly normal differences; with 3-5 seeds the bootstrap's is too
narrow, so read the t interval first), and the paired t-test's two-sided p-value.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of `values` (nan, nan with fewer than 2)."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of `values` (fixed seed, so a
    table regenerated from the same results prints the same interval)."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return math.nan, math.nan
    means = np.random.default_rng(seed).choice(x, size=(resamples, len(x))).mean(axis=1)
    low, high = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(low), float(high)


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """a - b over paired runs (same seeds, same order): n, mean, std of the differences,
    t and bootstrap confidence intervals of the mean, and the paired t-test's p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference needs two 1-d sequences of equal length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        p = math.nan
    elif std == 0.0:
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return {"n": n, "mean": float(d.mean()) if n else math.nan, "std": std,
            "t_ci": t_interval(d, confidence), "bootstrap_ci": bootstrap_interval(d, confidence),
            "p_value": p, "wins": int(np.sum(d > 0)), "confidence": confidence}


def verdict(diff: dict) -> str:
    """How a paired difference reads: 'better' / 'worse' when the t interval excludes 0,
    'no detectable difference' when it straddles 0, 'too few runs' below 2 pairs."""
    low, high = diff["t_ci"]
    if math.isnan(low):
        return "too few runs"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference"
