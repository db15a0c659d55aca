"""The optimizer loop on rank 0: Algorithm 1 around `engine.gradient`, with the trace and progress lines.

It is engine-agnostic: everything that differs between one process and many ranks lives behind
`engine.gradient(x_t, t)` and `engine.evaluate(y, t)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from pprs_mpi import optim


@dataclass
class Outcome:
    """How the loop ended, and the iterates it leaves (host arrays)."""

    status: str  # 'completed' or 'diverged'
    iterations: int
    x: np.ndarray
    y: np.ndarray
    f_final: float
    message: str = ""


@dataclass
class Progress:
    """Prints one line every `every` iterations (never when `quiet`)."""

    total: int
    every: int
    quiet: bool = False

    def __post_init__(self):
        self._start = time.perf_counter()

    def show(self, iteration: int, pipeline_time: float, f_smoothed: float, f_eval: float) -> None:
        if self.quiet or (iteration % self.every and iteration != self.total):
            return
        rate = iteration / max(time.perf_counter() - self._start, 1e-9)
        f_y = "" if math.isnan(f_eval) else f"  f(y) {f_eval:.6g}"
        print(f"iter {iteration:>{len(str(self.total))}}/{self.total}  pipeline time {pipeline_time:,.0f}  "
              f"f {f_smoothed:.6g}{f_y}  {rate:.1f} it/s", flush=True)


def minimize(engine, backend, x0: np.ndarray, cfg: dict, makespan: int, trace, progress: Progress,
             start_iteration: int = 0, y0: np.ndarray | None = None) -> Outcome:
    """Runs Algorithm 1 from (x0, y0) at iteration `start_iteration` to cfg['iters'], appending a trace row
    per iteration: f_smoothed is the mean of the K sample values at x_t, f_eval is f(y_{t+1}) every
    `eval_every` iterations and at the last (NaN otherwise), pipeline_time counts `makespan` units per iteration."""
    x = backend.asarray(x0)
    y = backend.asarray(x0 if y0 is None else y0)
    momentum, lr, every = optim.Momentum(cfg["mu"]), float(cfg["lr"]), cfg["eval_every"]
    pipeline_time, wall_time = makespan * start_iteration, 0.0
    if start_iteration == 0 and every:
        trace.append(iteration=0, pipeline_time=0.0, wall_time=0.0, f_eval=engine.evaluate(y, 0), step_size=lr)
    f_eval = math.nan
    for t in range(start_iteration, cfg["iters"]):
        tick = time.perf_counter()
        grad, values = engine.gradient(x, t)
        f_smoothed = float(np.mean(values))
        if not (math.isfinite(f_smoothed) and bool(backend.xp.isfinite(grad).all())):
            return Outcome("diverged", t, backend.to_host(x), backend.to_host(y), f_smoothed,
                           f"diverged at iteration {t}: f or its gradient is not finite (lower --lr?)")
        x_next, y_next = optim.update(x, y, grad, lr, momentum(t))
        wall_time += time.perf_counter() - tick
        pipeline_time += makespan
        done = t + 1
        evaluate = done == cfg["iters"] or (every and done % every == 0)
        f_eval = engine.evaluate(y_next, t) if evaluate else math.nan
        trace.append(iteration=done, pipeline_time=pipeline_time, wall_time=wall_time, f_smoothed=f_smoothed,
                     f_eval=f_eval, grad_norm=float(backend.xp.linalg.norm(grad)), step_size=lr)
        progress.show(done, pipeline_time, f_smoothed, f_eval)
        if not bool(backend.xp.isfinite(y_next).all()):
            return Outcome("diverged", t, backend.to_host(x), backend.to_host(y), f_smoothed,
                           f"diverged at iteration {t}: the iterate is not finite (lower --lr?)")
        x, y = x_next, y_next
    return Outcome("completed", cfg["iters"], backend.to_host(x), backend.to_host(y), f_eval)


def progress_for(cfg: dict) -> Progress:
    every = cfg["progress_every"] or max(1, cfg["iters"] // 20)
    return Progress(cfg["iters"], every, quiet=cfg["quiet"])

