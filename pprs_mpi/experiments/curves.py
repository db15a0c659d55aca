"""Loss curves of runs: f(y_t) read from a trace, averaged over runs, re-timed for a depth, compared.

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


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise mean of curves that share one iteration grid (+inf wherever any of them is)."""
    grid = curves[0][0]
    if any(not np.array_equal(grid, other) for other, _ in curves[1:]):
        raise ValueError("curves to average must share their iteration grid")
    return grid, np.mean(np.vstack([values for _, values in curves]), axis=0)


def retime(iterations: np.ndarray, K: int, depth: int) -> np.ndarray:
    """Pipeline time of the paper: each iteration is a fill-drain of K inputs through depth Δ, 2(K + Δ − 1)."""
    return iterations * ideal_makespan(K, depth)


def within(time: np.ndarray, loss: np.ndarray, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of a curve at pipeline time ≤ budget."""
    keep = time <= budget
    return time[keep], loss[keep]


def best(finals: dict) -> object | None:
    """Key of the lowest final loss (the first one on ties); None when every candidate diverged (inf/NaN)."""
    finite = {key: value for key, value in finals.items() if np.isfinite(value)}
    return min(finite, key=finite.get) if finite else None


def time_to_reach(time: np.ndarray, loss: np.ndarray, level: float) -> float | None:
    """First pipeline time at which the loss is ≤ level; None if never."""
    hits = np.flatnonzero(loss <= level)
    return float(time[hits[0]]) if hits.size else None
