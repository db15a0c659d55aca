"""Paired statistics of two methods' final losses on the same pairs: what a verdict may rest on.

A mean difference alone can be carried by a few pairs, so a comparison reports the median difference,
the share of pairs each method wins, an exact two-sided sign test and a Wilcoxon signed-rank test next to
the mean and its bootstrap interval. Several comparisons at once are Holm-corrected.
"""

from __future__ import annotations

import math

import numpy as np

from pprs_mpi.experiments import curves

ALPHA = 0.05


def sign_test(difference) -> float:
    """Exact two-sided sign test of 'median difference 0': ties (difference 0) are dropped; p of the observed
    split of wins under Binomial(n, 1/2). 1.0 when no pair differs."""
    difference = np.asarray(difference, dtype=float)
    lower, higher = int(np.sum(difference < 0)), int(np.sum(difference > 0))
    n = lower + higher
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(lower, higher) + 1)) / 2.0 ** n
    return min(1.0, 2 * tail)


def wilcoxon(difference) -> float | None:
    """Two-sided Wilcoxon signed-rank p (scipy, zeros dropped); None without scipy, non-finite values or fewer
    than 2 non-zero differences."""
    difference = np.asarray(difference, dtype=float)
    difference = difference[difference != 0]
    if difference.size < 2 or not np.all(np.isfinite(difference)):
        return None
    try:
        from scipy.stats import wilcoxon as scipy_wilcoxon
    except ImportError:
        return None
    return float(scipy_wilcoxon(difference).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def compare(a, b) -> dict:
    """a against b on the same pairs (a − b; negative: a is lower; equal values, +inf included, tie): mean with
    95% bootstrap interval (None where a difference is infinite, e.g. a time to a level one of them never
    reached), median, pairs where a is lower / higher / tied, sign-test and Wilcoxon p."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = np.where(a == b, 0.0, a - b)
    finite = bool(np.all(np.isfinite(difference)))
    mean_ci = list(curves.interval(curves.bootstrap_means(difference[:, None])[:, 0])) if finite else None
    return {"pairs": int(difference.size), "mean": float(np.mean(difference)) if finite else None,
            "mean_ci": mean_ci, "median": float(np.median(difference)), "lower": int(np.sum(difference < 0)),
            "higher": int(np.sum(difference > 0)), "tied": int(np.sum(difference == 0)),
            "sign_p": sign_test(difference), "wilcoxon_p": wilcoxon(difference)}


def outcome(found: dict, p: float, alpha: float = ALPHA) -> str:
    """'lower' / 'higher' when the sign test (p, adjusted where several are made) rejects at `alpha`, in the
    direction of the median difference; otherwise 'no significant difference'."""
    if p < alpha and found["median"] != 0:
        return "lower" if found["median"] < 0 else "higher"
    return "no significant difference"
