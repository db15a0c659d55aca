"""Executing an assembled run: the engine, Algorithm 1 on rank 0 (the others serve the engine), the trace's
last rows, the Result; a failure on any rank marks the trace failed and ends every rank."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from pprs_mpi import config, driver
from pprs_mpi.engines.factory import make_engine
from pprs_mpi.nonfinite import first_nonfinite, first_nonfinite_at
from pprs_mpi.problems import Problem
from pprs_mpi.run import console
from pprs_mpi.run.assemble import PREFIX, Setup, set_up
from pprs_mpi.run.result import Result, RunFailed
from pprs_mpi.run.trace_io import write_checkpoint, write_gathered
from pprs_mpi.signals import StopOnSignal

QUIET_FLOATS = dict(over="ignore", invalid="ignore", divide="ignore")  # divergence is the driver's to detect and
# report, once, on rank 0: no NumPy warning on any rank


def run(cfg: config.RunConfig | Callable[[], config.RunConfig], comm, problem: Problem | None = None,
        recover: bool = False) -> Result | None:
    """Sets up and executes a run; the Result on rank 0, None elsewhere. `cfg` is a resolved configuration
    or a function resolving it: called on every rank within the setup's error sharing, so that a rank that
    cannot resolve it (a trace to resume it cannot see) is reported instead of leaving the others waiting.
    A failure of the run raises RunFailed on every rank with `recover` (the Python API), else under MPI
    ends the job."""
    setup = set_up(cfg, comm, problem)
    if setup.complete:  # --resume of a finished run at its own --iters: the trace is left as it is
        return _completed_result(setup) if comm.rank == 0 else None
    engine = None
    try:
        with StopOnSignal() as stop:  # before the engine, whose rank 0 hooks SIGTERM in front of it
            engine = _make_engine(setup, comm, recover)
            return execute(setup, comm, engine, stop)
    except Exception as err:  # noqa: BLE001 — any failure must end every rank, reported once
        _fail(setup, comm, err, getattr(engine, "settle_failure", None) if recover else None,
              getattr(engine, "comm", comm))


def _fail(setup: "Setup", comm, err: Exception, settle=None, engine_comm=None):
    """Marks the trace failed, then raises RunFailed on this rank: in one process at once; under MPI after
    `settle` (the MPI engine's settle_failure, in recover mode) has agreed with every rank on one error
    line, or else ends the job, reporting the error once over `engine_comm` (the engine's, where rank 0
    listens for failure notices)."""
    text = f"error on rank {comm.rank}: {type(err).__name__}: {err}"
    if comm.rank == 0:
        try:
            setup.trace.close("failed")
        except Exception:  # noqa: BLE001 — the trace may be gone; ending every rank comes first
            pass
    if comm.size == 1:  # no other rank to tell (and, run alone, no MPI to load for it)
        raise RunFailed(text) from err
    from pprs_mpi.engines.mpi import JobAborted, RemoteFailure, report_failure_and_abort
    if isinstance(err, RemoteFailure):  # another rank's line, as it reported it
        text = str(err)
    if isinstance(err, JobAborted):  # the rank that aborts the job has reported the error
        comm.Abort(1)
    if settle is None:
        report_failure_and_abort(engine_comm or comm, text, prefix=PREFIX)
    raise RunFailed(settle(text, isinstance(err, RemoteFailure), PREFIX)) from err


def _make_engine(setup: Setup, comm, recover: bool = False):
    """The engine the setup calls for: serial in one process, else MPI over `comm`."""
    return make_engine(setup.wiring, setup.schedule, setup.sampling, setup.backend,
                       None if setup.engine_name == "serial" else comm, setup.fault, setup.cfg.output.timeline_every,
                       setup.cfg.pipeline.comm_timeout, setup.cuda_aware, recover)


def execute(setup: Setup, comm, engine, stop: StopOnSignal) -> Result | None:
    """Runs the assembled run to its end. Every rank catches the stop signals (`stop`), so that none dies of
    one; rank 0 alone acts on them (a checkpoint and a stop at the next iteration boundary) and the others
    stop when it tells them to."""
    if comm.rank != 0:
        with np.errstate(**QUIET_FLOATS):
            engine.serve()
        return None
    return _drive(setup, engine, stop)


def _drive(setup: Setup, engine, stop: StopOnSignal) -> Result:
    """Rank 0: Algorithm 1 around the engine, then the result and the closing lines."""
    cfg, trace = setup.cfg, setup.trace
    figures = []  # every rank's figures as gathered and written to the trace, each time: the summary's
    if not cfg.output.quiet:
        driver.say(console.banner(setup))
    with np.errstate(**QUIET_FLOATS):
        outcome = driver.minimize(engine, setup.backend, cfg, setup.optimizer, setup.makespan, trace,
                                  driver.progress_for(cfg, setup.start.iteration), setup.start,
                                  checkpoint=lambda state: figures.append(write_checkpoint(setup, engine, state)),
                                  stop_requested=lambda: stop.requested,
                                  locate=lambda x, t: first_nonfinite(setup.problem.graph, setup.sampling,
                                                                      setup.backend, x, t),
                                  locate_at=lambda y, t: first_nonfinite_at(setup.problem.graph, setup.backend, y, t))
    if outcome.status == "completed":  # so that `--resume RUN.h5 --iters N` can extend a finished run
        figures.append(write_checkpoint(setup, engine, outcome.state))
    figures.append(write_gathered(trace, engine))
    averaged = {"y_avg": outcome.state.arrays["avg"]} if "avg" in outcome.state.arrays else {}
    trace.write_result(y=outcome.state.y, x=outcome.state.x, **averaged)
    trace.set_attrs(**{f"result_{key}": value for key, value in setup.problem.describe_point(outcome.state.y).items()})
    trace.close(outcome.status)
    result = Result.of(outcome, trace.columns, cfg.output.out, _why_stopped(outcome, cfg.output.out, trace.replaced))
    engine.stop()  # last: until then the other ranks wait for a command, so they would hear of a failure here
    if outcome.status == "completed" and not cfg.output.quiet:
        driver.say(console.summary(setup, outcome, figures[-1]))
    return result


def _why_stopped(outcome: driver.Outcome, out: str, replaced: bool) -> str:
    """The driver's reason for a run that did not complete, and what became of the trace ('' if completed)."""
    if not outcome.message:
        return ""
    return f"{outcome.message}; " + (f"trace {out} marked {outcome.status}" if replaced else
                                     f"{out} not replaced (--overwrite keeps the old file until the new run has a "
                                     "checkpoint or ends completed or interrupted)")


def _completed_result(setup: Setup) -> Result:
    """The Result a completed trace holds, saying that there is nothing to do and how to extend the run."""
    from pprs_mpi.trace import load
    out, done = setup.cfg.output.out, setup.start.iteration
    trace = load(out)
    f_eval = trace.columns["f_eval"]
    finite = f_eval[np.isfinite(f_eval)]
    message = (f"{out} is already complete at iteration {done}: nothing to do (to extend the run: "
               f"--resume {out} --iters N, with N > {done})")
    return Result("completed", trace.result.get("y", setup.start.y), trace.result.get("x", setup.start.x),
                  float(finite[-1]) if finite.size else math.nan, trace.columns["iteration"],
                  trace.columns["f_smoothed"], f_eval, out, message)
