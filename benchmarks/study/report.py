"""The cells of a study's markdown tables, from the numbers of results.json alone."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.study import stats


def mean_std(values, digits: int = 2) -> str:
    v = np.asarray(values, float)
    if not len(v):
        return "-"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def diff_cell(diff: dict) -> str:
    """'+1.23 [0.40, 2.06]' with the paired t interval, or '-' without pairs."""
    if diff["n"] == 0:
        return "-"
    low, high = diff["t_ci"]
    ci = "" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]"
    return f"{diff['mean']:+.2f}{ci} (n={diff['n']}, {stats.verdict(diff)})"
