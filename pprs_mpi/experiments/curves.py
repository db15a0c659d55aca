"""Loss curves of runs: f(y_t) read from a trace, stacked over pairs, re-timed for a depth, bootstrapped.

Divergence is never hidden: every evaluation a diverged run did not reach (or that was not finite)
is +inf, so any mean over runs that includes a diverged run is +inf from that point on.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi.schedule import ideal_makespan
from pprs_mpi.trace import Trace


def loss_curve(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, f(y_t)) at every evaluation the run was configured for (0, e, 2e, ..., T)."""
    iters, every = int(trace.config["iters"]), int(trace.config["eval_every"])
    grid = np.union1d(np.arange(0, iters + 1, every), [iters])
    values = np.full(grid.size, np.inf)
    iteration, f = trace.columns["iteration"], trace.columns["f_eval"]
    ok = np.isfinite(f) & np.isin(iteration, grid)
    values[np.searchsorted(grid, iteration[ok])] = f[ok]
    return grid, values


def retime(iterations: np.ndarray, K: int, depth: int) -> np.ndarray:
    """Pipeline time of the paper: each iteration is a fill-drain of K inputs through depth Δ, 2(K + Δ − 1)."""
    return iterations * ideal_makespan(K, depth)


def time_to_reach(time: np.ndarray, loss: np.ndarray, level: float) -> float | None:
    """First pipeline time at which the loss is ≤ level; None if never."""
    hits = np.flatnonzero(loss <= level)
    return float(time[hits[0]]) if hits.size else None


def curve_matrix(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(iteration grid, pairs × points losses) of curves that share one grid."""
    grid = found[0][0]
    if any(not np.array_equal(grid, other) for other, _ in found[1:]):
        raise ValueError("curves to stack must share their iteration grid")
    return grid, np.vstack([values for _, values in found])


def bootstrap_means(losses: np.ndarray, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """resamples × points: mean curves over pairs drawn with replacement (+inf wherever a drawn pair is)."""
    pairs = losses.shape[0]
    counts = np.random.default_rng(seed).multinomial(pairs, np.full(pairs, 1 / pairs), size=resamples)
    finite = np.isfinite(losses)
    means = counts @ np.where(finite, losses, 0.0) / pairs
    means[(counts @ ~finite) > 0] = np.inf
    return means


def first_times(time: np.ndarray, means: np.ndarray, decrease: float) -> np.ndarray:
    """Per row of `means`, the first time its loss is at least `decrease` below the row's own initial loss
    (+inf if never): a resample's level moves with its initial loss, so the interval is about speed, not about
    which pairs were drawn."""
    hits = means <= means[:, :1] - decrease
    return np.where(hits.any(axis=1), time[hits.argmax(axis=1)], np.inf)


def paired(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """a against b on the same pairs: the fraction of pairs where a is lower, the mean difference a − b and its
    95% bootstrap interval over pairs."""
    difference = np.asarray(a) - np.asarray(b)
    means = bootstrap_means(difference[:, None], resamples, seed)[:, 0]
    return {"fraction": float(np.mean(difference < 0)), "difference": float(np.mean(difference)),
            "difference_ci": interval(means), "pairs": int(difference.size)}


def interval(samples: np.ndarray, coverage: float = 0.95) -> tuple[float, float]:
    """The central `coverage` percentile interval of bootstrap samples (+inf stays +inf)."""
    tail = (1 - coverage) / 2
    return float(np.quantile(samples, tail, method="lower")), float(np.quantile(samples, 1 - tail, method="higher"))
