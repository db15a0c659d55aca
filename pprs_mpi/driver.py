"""The optimizer loop on rank 0: Algorithm 1 around `engine.gradient`, with trace rows, checkpoints and
progress lines.

It is engine-agnostic: everything that differs between one process and many ranks lives behind
`engine.gradient(x_t, t)` and `engine.evaluate(y, t)`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pprs_mpi import optim, parameters
from pprs_mpi.interval import confidence_interval


@dataclass
class LoopState:
    """Everything a resume needs: the optimizer's state arrays (x_t and y_t among them); the noise counter
    and μ_t are functions of `iteration` alone."""

    iteration: int  # iterations done: the next one is t = iteration
    arrays: dict[str, np.ndarray]
    pipeline_time: float
    wall_time: float

    @property
    def x(self) -> np.ndarray:
        """Where the next gradient is taken."""
        return self.arrays["x"]

    @property
    def y(self) -> np.ndarray:
        """The iterate the run reports."""
        return self.arrays["y"]

    @classmethod
    def start(cls, arrays: dict[str, np.ndarray]) -> "LoopState":
        """Before the first iteration, in the optimizer's initial state."""
        return cls(0, arrays, 0.0, 0.0)


@dataclass
class Outcome:
    """How the loop ended ('completed', 'diverged' or 'interrupted') and the iterates it leaves."""

    status: str
    state: LoopState
    f_final: float
    message: str = ""


@dataclass
class Progress:
    """Prints one line every `every` iterations (never when `quiet`)."""

    total: int
    every: int
    quiet: bool = False

    first: int = 0  # the iteration this process started from (a resume starts later)

    def __post_init__(self):
        self._start = time.perf_counter()

    def show(self, iteration: int, pipeline_time: float, f_smoothed: float, f_eval: float) -> None:
        if self.quiet or (iteration % self.every and iteration != self.total):
            return
        rate = (iteration - self.first) / max(time.perf_counter() - self._start, 1e-9)
        f_y = "" if math.isnan(f_eval) else f"  f(y) {f_eval:.6g}"
        say(f"iter {iteration:>{len(str(self.total))}}/{self.total}  pipeline time {pipeline_time:,.0f}  "
            f"f {f_smoothed:.6g}{f_y}  {rate:.1f} it/s")


def say(text: str) -> None:
    """Prints a line for the user. A closed stdout (`solve ... | head -2`) ends the printing, never the
    run: stdout is pointed at /dev/null, so that later lines and the exit flush go nowhere quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def progress_for(cfg, first: int = 0) -> Progress:
    every = cfg.output.progress_every or max(1, cfg.algorithm.iters // 20)
    return Progress(cfg.algorithm.iters, every, quiet=cfg.output.quiet, first=first)


def minimize(engine, backend, cfg, optimizer: optim.Optimizer, makespan: int, trace, progress: Progress,
             start: LoopState,
             checkpoint: Callable[[LoopState], None] = lambda state: None,
             stop_requested: Callable[[], bool] = lambda: False,
             locate: Callable[[np.ndarray, int], str | None] = lambda x, t: None,
             locate_at: Callable[[np.ndarray, int], str | None] = lambda y, t: None) -> Outcome:
    """Runs `optimizer` (Algorithm 1 unless --optimizer says otherwise) from `start` to cfg.algorithm.iters,
    appending a trace row per iteration.

    f_smoothed is the mean of the K sample values at x_t, f_low and f_high the 95% interval of f^γ(x_t) they
    give (`interval`), gamma and step_size the γ_t and η_t the iteration used (`parameters`); f_eval is
    f(y_{t+1}) every `eval_every` iterations and at the last (NaN otherwise), f_avg f at the averaged iterate
    (--average) at the same rows; pipeline_time counts `makespan` units per iteration.
    `checkpoint` is called every cfg.output.checkpoint_every iterations and, when `stop_requested()`
    turns true, once more before the loop stops at that iteration boundary. On divergence,
    `locate(x_t, t)` names where the pass's first non-finite value appeared (None if nowhere), and
    `locate_at(y_t, t)` where the evaluation f(y_t)'s did.
    """

    def not_finite_at(point, t: int) -> str:
        where = locate_at(backend.to_host(point), t)
        return f"f(y_{t}) is not finite" + (f"; the first non-finite value: {where}" if where else "")

    state = {name: backend.asarray(array) for name, array in start.arrays.items()}
    every, antithetic = cfg.output.eval_every, cfg.algorithm.noise == "antithetic"
    gamma, lr = parameters.smoothing(cfg.algorithm), parameters.step_size(cfg.algorithm)
    averaged = "avg" in state  # --average: f at the mean iterate too, beside f(y)
    pipeline_time, wall_time = start.pipeline_time, start.wall_time
    if start.iteration == 0 and every:
        f_eval = engine.evaluate(state["y"], 0)
        trace.append(iteration=0, pipeline_time=0.0, wall_time=0.0, f_eval=f_eval, step_size=lr(0), gamma=gamma(0),
                     **({"f_avg": f_eval} if averaged else {}))
        if not math.isfinite(f_eval):
            return _diverged(backend, 0, state, pipeline_time, wall_time, f_eval, not_finite_at(state["y"], 0))
    f_eval = math.nan
    for t in range(start.iteration, cfg.algorithm.iters):
        tick = time.perf_counter()
        grad, values = engine.gradient(state["x"], t)
        f_smoothed = float(np.mean(values))
        if not (math.isfinite(f_smoothed) and bool(backend.xp.isfinite(grad).all())):
            where = locate(backend.to_host(state["x"]), t)
            return _diverged(backend, t, state, pipeline_time, wall_time, f_smoothed, "f or its gradient is not finite"
                             + (f"; the first non-finite value: {where}" if where else ""))
        following = optimizer.step(state, grad, t)
        wall_time += time.perf_counter() - tick
        pipeline_time += makespan
        done = t + 1
        evaluate = done == cfg.algorithm.iters or (every and done % every == 0)
        f_eval = engine.evaluate(following["y"], t) if evaluate else math.nan
        extra = {"f_avg": engine.evaluate(following["avg"], t) if evaluate else math.nan} if averaged else {}
        f_low, f_high = confidence_interval(values, antithetic)
        trace.append(iteration=done, pipeline_time=pipeline_time, wall_time=wall_time, f_smoothed=f_smoothed,
                     f_eval=f_eval, grad_norm=float(backend.xp.linalg.norm(grad)), step_size=lr(t), gamma=gamma(t),
                     f_low=f_low, f_high=f_high, **extra)
        progress.show(done, pipeline_time, f_smoothed, f_eval)
        if not bool(backend.xp.isfinite(following["y"]).all()):
            return _diverged(backend, t, state, pipeline_time - makespan, wall_time, f_smoothed,
                             "the iterate is not finite")
        if evaluate and not math.isfinite(f_eval):  # finite samples, yet f at the iterate itself is not
            return _diverged(backend, t, state, pipeline_time - makespan, wall_time, f_smoothed,
                             not_finite_at(following["y"], done))
        state = following
        if done == cfg.algorithm.iters:
            break
        stopping = stop_requested()
        if stopping or (cfg.output.checkpoint_every and done % cfg.output.checkpoint_every == 0):
            checkpoint(_state(backend, done, state, pipeline_time, wall_time))
        if stopping:
            return Outcome("interrupted", _state(backend, done, state, pipeline_time, wall_time), f_eval,
                           f"stopped by a signal after iteration {done}; resume with --resume")
    if math.isnan(f_eval):  # no iteration ran (a resume at its last iteration): evaluate where it stands
        f_eval = engine.evaluate(state["y"], cfg.algorithm.iters)
        if not math.isfinite(f_eval):
            return _diverged(backend, cfg.algorithm.iters, state, pipeline_time, wall_time, f_eval,
                             not_finite_at(state["y"], cfg.algorithm.iters))
    return Outcome("completed", _state(backend, cfg.algorithm.iters, state, pipeline_time, wall_time), f_eval)


def _state(backend, iteration, state: dict, pipeline_time, wall_time) -> LoopState:
    return LoopState(iteration, {name: backend.to_host(array) for name, array in state.items()}, pipeline_time,
                     wall_time)


def _diverged(backend, t, state, pipeline_time, wall_time, f_smoothed, what) -> Outcome:
    """Keeps the last finite state (that of iteration t) and says why the run stopped (at iteration 0 no
    step has been taken, so the step size is no suspect)."""
    return Outcome("diverged", _state(backend, t, state, pipeline_time, wall_time), f_smoothed,
                   f"diverged at iteration {t}: {what}" + (" (lower --lr?)" if t else ""))
