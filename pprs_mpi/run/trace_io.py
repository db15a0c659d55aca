"""A run's trace on rank 0: opening it (or reopening it to resume, after checking its checkpoint fits),
its layout segments, checkpoints and the gathered timeline."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import numpy as np

from pprs_mpi import __version__, config, driver, optim
from pprs_mpi.config import ConfigError
from pprs_mpi.engines.timeline import sampled_ranks
from pprs_mpi.launch import mpi_library

if TYPE_CHECKING:
    from pprs_mpi.run.assemble import Setup


def open_trace(setup: Setup, comm) -> str | None:
    """Creates (or, to resume, reopens) the trace on rank 0; returns an error message instead of raising."""
    from pprs_mpi.trace import TraceWriter
    cfg, graph = setup.cfg, setup.problem.graph
    meta = {"ranks": comm.size, "device": setup.backend.device, "engine": setup.engine_name,
            "mpi_library": mpi_library(comm), "depth": graph.depth,
            "makespan": setup.makespan, "n_microbatches": setup.sampling.n_microbatches,
            "microbatch_size": setup.sampling.microbatch_size, "layout_choice": json.dumps(setup.layout.as_dict()),
            "stages": len(setup.wiring.stages), "schedule": setup.schedule_name, "package_version": __version__,
            "rank_devices": ",".join(setup.placement["devices"]),
            "rank_transport": ",".join(setup.placement["transport"]), "rank_hosts": ",".join(setup.placement["hosts"]),
            "timeline_ranks": np.array(sampled_ranks(len(setup.wiring.stages)), dtype=np.int64),
            "cuda_aware_decided_by": setup.placement["cuda_aware_decided_by"], "graph_hash": setup.graph_hash,
            "f_star": math.nan if setup.problem.f_star is None else float(setup.problem.f_star)}
    if cfg.output.resume:
        try:
            setup.start = _checkpointed_state(cfg.output.out, graph.dim, setup.graph_hash, setup.optimizer)
        except (ValueError, OSError) as err:  # ConfigError, or TraceError from a broken file
            return str(err)
        if cfg.algorithm.iters < setup.start.iteration:
            return (f"--iters {cfg.algorithm.iters} is below the checkpoint's iteration {setup.start.iteration}: "
                    "a resume can only go further")
        setup.complete = cfg.algorithm.iters == setup.start.iteration and _stored_status(cfg.output.out) == "completed"
        if setup.complete:
            return None
    meta["layout_segments"] = json.dumps(_layout_segments(setup, meta))
    try:
        setup.trace = TraceWriter(cfg.output.out, _jsonable(cfg), meta, resume=bool(cfg.output.resume),
                                  overwrite=cfg.output.overwrite,  # what came after the checkpoint is redone:
                                  rewind=setup.start.iteration if cfg.output.resume else None)
    except Exception as err:  # noqa: BLE001 — any reason the file cannot be used is bad input
        return f"cannot write trace {cfg.output.out!r}: {err}"
    names = list(graph.order)
    setup.trace.write_graph(names, [graph.op(n).describe() for n in names], [list(graph.parents(n)) for n in names],
                            [setup.wiring.stage_of[n] for n in names], graph.dim, graph.depth, graph.root)
    return None


LAYOUT_KEYS = ("ranks", "engine", "stages", "makespan", "n_microbatches")


def _layout_segments(setup: Setup, meta: dict) -> list[dict]:
    """The trace's `layout_segments`: from which iteration on each layout ran (ranks, engine, stages and the
    makespan that pipeline_time counts per iteration). A resume on another layout appends a segment, so
    that a trace whose pipeline_time mixes two makespans says where it changes."""
    here = {"from_iteration": setup.start.iteration, **{key: meta[key] for key in LAYOUT_KEYS},
            "simulated_depth": setup.cfg.pipeline.simulated_depth}
    if not setup.cfg.output.resume:
        return [here]
    from pprs_mpi.trace import load
    attrs = load(setup.cfg.output.out).attrs
    try:
        before = json.loads(attrs["layout_segments"])
        assert isinstance(before, list) and all(isinstance(s, dict) for s in before)
    except (KeyError, ValueError, AssertionError):  # a trace from before segments: its last layout from 0 on
        before = [{"from_iteration": 0, **{key: attrs.get(key) for key in LAYOUT_KEYS}}]
    return [s for s in before if s.get("from_iteration", 0) < setup.start.iteration] + [here]


def _stored_status(path: str) -> str:
    """The status the trace at `path` records (completed, diverged, interrupted, failed or running)."""
    from pprs_mpi.trace import load
    return load(path).status


def _checkpointed_state(path: str, dim: int, graph_hash: str, optimizer: optim.Optimizer) -> driver.LoopState:
    """The checkpoint to resume from, checked before anything in the trace is changed: it holds every array of
    the optimizer's state (Algorithm 1's are x and y, all a checkpoint held before the optimizer seam)."""
    from pprs_mpi.trace import load, read_checkpoint
    stored_hash = load(path).attrs.get("graph_hash")
    if stored_hash is not None and stored_hash != graph_hash:
        raise ConfigError(f"cannot resume: the graph built now differs from the one the run in {path} optimised "
                          "(its builder, arguments or constants changed)")
    arrays, attrs = read_checkpoint(path)
    try:
        state = driver.LoopState(int(attrs["iteration"]), {name: np.asarray(arrays[name], dtype=float)
                                                           for name in optimizer.names},
                                 float(attrs["pipeline_time"]), float(attrs["wall_time"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"cannot resume: the checkpoint in {path} is incomplete or malformed ({err})") from None
    if state.iteration < 0 or state.x.shape != (dim,) or state.y.shape != (dim,) or not all(
            np.isfinite(array).all() for array in state.arrays.values()):
        raise ConfigError(f"cannot resume: the checkpoint in {path} does not fit this problem (iteration "
                          f"{state.iteration}, x {state.x.shape}, y {state.y.shape}, d = {dim})")
    return state


def write_checkpoint(setup: Setup, engine, state: driver.LoopState) -> list[dict]:
    """Everything a resume needs, atomically; the timeline gathered so far goes with it (and the ranks' figures
    are returned)."""
    figures = write_gathered(setup.trace, engine)
    setup.trace.write_checkpoint(state.arrays, {
        "iteration": state.iteration, "pipeline_time": state.pipeline_time, "wall_time": state.wall_time,
        "noise_counter": state.iteration, "momentum_t": state.iteration, "seed": setup.cfg.algorithm.seed})
    return figures


def write_gathered(trace, engine) -> list[dict]:
    """Writes the timeline records gathered from the sampled ranks since the last time, and every rank's
    summary and memory figures (`rank_<key>`); returns the figures, per rank."""
    records, figures = engine.gather()
    trace.write_timeline(records, append=True)
    trace.set_attrs(**{f"rank_{key}": np.array([rank[key] for rank in figures],
                                               dtype=np.float64 if key.endswith("seconds") else np.int64)
                       for key in figures[0]})
    return figures


def _jsonable(cfg: config.RunConfig) -> dict:
    """The configuration as the trace stores it: every option and the builder's arguments, not `given`."""
    return {k: v for k, v in cfg.as_dict().items() if k != "given"}
