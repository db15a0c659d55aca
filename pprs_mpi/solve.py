"""Command line: configuration → problem → engine → Algorithm 1 → HDF5 trace.

    python -m pprs_mpi.solve --problem lad --depth 8 --algo pprs -K 16 --out run.h5
    mpirun -n 8 python -m pprs_mpi.solve --problem lad --depth 8 --out run.h5

Bad input is reported in one line with exit code 2 (by rank 0 only); a failure during the run
ends every rank, is reported once, marks the trace `failed` and exits non-zero.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from pprs_mpi import __version__, config, driver, faults, optim, problems
from pprs_mpi.backend import Backend, BackendError, Staging, cuda_aware_mpi, select
from pprs_mpi.config import ConfigError
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.faults import Fault
from pprs_mpi.graph import GraphError
from pprs_mpi.placement import measure_costs
from pprs_mpi.schedule import Schedule, build as build_schedule, ideal_makespan
from pprs_mpi.signals import StopOnSignal

BAD_INPUT = 2
EXIT_CODES = {"diverged": 1, "interrupted": 3}  # interrupted: a checkpoint was written, --resume continues
PREFIX = "pprs_mpi.solve: "
MAX_ACTIONS_PER_PASS = 1_000_000  # microbatches × nodes; beyond it the schedule alone would take minutes
MAX_SCHEDULE_CELLS = 20_000_000  # stages × time units of one schedule


def main(argv: list[str] | None = None, comm=None) -> int:
    """Runs one solve and returns its exit code. `comm` defaults to MPI.COMM_WORLD; pass MPI.COMM_SELF
    to run a serial solve inside one rank of a larger job (as the experiments do)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD if comm is None else comm
    try:
        setup = _prepare(argv, comm)
    except (ConfigError, GraphError, BackendError, ValueError, OSError) as err:  # all of them bad input
        return _bad_input(comm, err)
    trace_error = _open_trace(setup, comm) if comm.rank == 0 else None
    trace_error = comm.bcast(trace_error, root=0) if comm.size > 1 else trace_error
    if trace_error:
        return _bad_input(comm, trace_error)
    try:
        return _run(setup, comm)
    except Exception as err:  # noqa: BLE001 — any failure must end every rank, reported once
        from pprs_mpi.engines.mpi import JobAborted, RemoteFailure, report_failure_and_abort
        text = str(err) if isinstance(err, RemoteFailure) else f"error on rank {comm.rank}: {type(err).__name__}: {err}"
        if comm.rank == 0:
            try:
                setup.trace.close("failed")
            except Exception:  # noqa: BLE001 — the trace may be gone; ending every rank comes first
                pass
        if isinstance(err, JobAborted):  # the rank that aborts the job has reported the error
            comm.Abort(1)
        if comm.size > 1:
            report_failure_and_abort(comm, text, prefix=PREFIX)
        print(PREFIX + text, file=sys.stderr, flush=True)
        return 1


@dataclass
class Setup:
    """Everything a run needs, built identically on every rank from the same configuration."""

    cfg: dict
    problem: problems.Problem
    wiring: Wiring
    schedule: Schedule
    sampling: Sampling
    backend: Backend
    engine_name: str
    makespan: int
    cuda_aware: bool
    placement: dict  # every rank's device and transport path, and how CUDA awareness was decided
    trace: object = None  # the TraceWriter, on rank 0
    start: driver.LoopState | None = None

    def __post_init__(self):
        self.start = self.start or driver.LoopState.start(self.problem.x0)
        self.fault = Fault.parse(self.cfg["inject_fault"]) if self.cfg["inject_fault"] else faults.from_environment()


def _prepare(argv, comm) -> Setup:
    """Builds the run. Errors of the configuration are the same on every rank; errors of one rank's
    device are shared with all ranks before any other collective call, so that no rank waits forever."""
    from mpi4py import MPI
    cfg = config.load(argv)
    try:
        problem = problems.build(cfg["problem"], **cfg["problem_params"])
    except (TypeError, KeyError) as err:  # parameters that reached a builder in a shape it cannot take
        raise ConfigError(f"problem '{cfg['problem']}': bad parameters ({err})") from None
    _apply_preset(cfg, problem)
    if cfg["expect_ranks"] not in (None, comm.size):
        raise ConfigError(f"expected {cfg['expect_ranks']} MPI ranks but this job has {comm.size}: "
                          "was python started without mpirun/srun, or with another MPI than mpi4py's?")
    engine_name = cfg["engine"] if cfg["engine"] != "auto" else ("mpi" if comm.size > 1 else "serial")
    graph = problem.graph
    if engine_name == "serial":
        if comm.size > 1:
            raise ConfigError(f"--engine serial runs in one process, but {comm.size} ranks were started")
        n_stages = cfg["stages"] or len(graph.order)
    else:
        if cfg["stages"] not in (None, comm.size):
            raise ConfigError(f"--stages {cfg['stages']} differs from the {comm.size} MPI ranks; the MPI engine runs one stage per rank")
        n_stages = comm.size
    if n_stages > len(graph.order):
        raise ConfigError(f"{n_stages} stages (ranks) for a graph of {len(graph.order)} nodes: use at most {len(graph.order)}")
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank).rank if comm.size > 1 else 0
    try:
        backend = select(cfg["device"], cfg["dtype"], local_rank)
        cuda_aware, decided_by = cuda_aware_mpi() if backend.on_gpu else (False, "CPU rank")
        local = {"devices": [backend.device], "transport": [Staging(backend, cuda_aware).path], "error": []}
    except BackendError as err:
        local = {"devices": [], "transport": [], "error": [f"rank {comm.rank}: {err}"]}
    gathered = comm.allgather(local) if comm.size > 1 else [local]
    placement = {key: [item for rank in gathered for item in rank[key]] for key in local}
    if placement.pop("error"):
        raise BackendError(_placement_errors(gathered))
    sampling = Sampling(cfg["K"], float(cfg["gamma"]), cfg["seed"], cfg["microbatch_size"],
                        noise_on_device=cfg["noise_source"] == "device")
    costs = None
    if cfg["balance"] == "measured":  # measured on rank 0 only, so every rank places nodes alike
        costs = measure_costs(graph, backend, cfg["microbatch_size"]) if comm.rank == 0 else None
        costs = comm.bcast(costs, root=0) if comm.size > 1 else costs
    _check_schedule_size(cfg, sampling.n_microbatches, len(graph.order), n_stages)
    stages = graph.stages(n_stages, costs)
    schedule = build_schedule(cfg["schedule"], stages, {n: graph.parents(n) for n in graph.order},
                              sampling.n_microbatches)
    makespan = (ideal_makespan(sampling.n_microbatches, cfg["simulated_depth"]) if cfg["simulated_depth"]
                else schedule.makespan)
    return Setup(cfg, problem, Wiring(graph, stages), schedule, sampling, backend, engine_name, makespan,
                 cuda_aware, {**placement, "cuda_aware_decided_by": decided_by})


def _check_schedule_size(cfg: dict, n_microbatches: int, n_nodes: int, n_stages: int) -> None:
    """Refuses pipelines whose schedule alone would take minutes and gigabytes to build."""
    actions = n_microbatches * n_nodes
    if actions > MAX_ACTIONS_PER_PASS:
        raise ConfigError(f"K={cfg['K']} in microbatches of {cfg['microbatch_size']} over {n_nodes} nodes makes "
                          f"{actions:,} forward actions per iteration (at most {MAX_ACTIONS_PER_PASS:,}): "
                          "raise --microbatch-size or lower K")
    cells = n_stages * 2 * (n_microbatches + n_nodes)  # about stages × makespan
    if cells > MAX_SCHEDULE_CELLS:
        raise ConfigError(f"{n_stages} stages × ~{2 * (n_microbatches + n_nodes):,} time units make a schedule of "
                          f"~{cells:,} cells (at most {MAX_SCHEDULE_CELLS:,}): use fewer stages (ranks) or nodes")


def _placement_errors(gathered: list[dict]) -> str:
    """The first rank's device error, and how many ranks had one."""
    errors = [e for rank in gathered for e in rank["error"]]
    return errors[0] + (f" (and {len(errors) - 1} more rank(s))" if len(errors) > 1 else "")


def _apply_preset(cfg: dict, problem) -> None:
    """Fills K, γ, η, μ (and T) from Theorem 3 or 4; values the user set explicitly win."""
    if cfg["preset"] == "none" or cfg["resume"]:  # a resumed run keeps the values the preset gave it
        return
    L, R, d = problem.lipschitz, problem.radius, problem.graph.dim
    if L is None:
        raise ConfigError(f"--preset {cfg['preset']} needs a Lipschitz bound, which problem '{problem.name}' does not know")
    try:
        if cfg["preset"] == "theorem3":
            if R is None:
                raise ConfigError(f"--preset theorem3 needs R, which problem '{problem.name}' does not know")
            use_eps = "eps" in cfg["given"] and "iters" not in cfg["given"]
            preset = optim.theorem3(L, R, d, iters=None if use_eps else cfg["iters"], eps=cfg["eps"] if use_eps else None)
        else:
            if cfg["eps"] is None or cfg["smoothing_radius"] is None:
                raise ConfigError("--preset theorem4 needs --eps and --smoothing-radius")
            D = _initial_gap(problem)
            preset = optim.theorem4(L, D, d, cfg["eps"], cfg["smoothing_radius"])
    except ValueError as err:
        raise ConfigError(f"--preset {cfg['preset']}: {err}") from None
    for key in ("K", "gamma", "lr", "mu", "iters"):
        if key not in cfg["given"]:
            cfg[key] = getattr(preset, key)
    cfg["preset_source"] = preset.source
    config.validate(cfg)


def _initial_gap(problem) -> float:
    """D = f(θ_0) − f* for Theorem 4, from one plain forward pass on the host."""
    if problem.f_star is None:
        raise ConfigError(f"--preset theorem4 needs f*, which problem '{problem.name}' does not know")
    graph, values = problem.graph, {problem.graph.root: problem.x0[None, :]}
    for name in graph.order:
        values[name] = graph.op(name).forward(np, *[values[p] for p in graph.parents(name)])
    return float(values[graph.leaf][0]) - problem.f_star


def _open_trace(setup: Setup, comm) -> str | None:
    """Creates the trace on rank 0; returns an error message instead of raising."""
    from pprs_mpi.trace import TraceWriter
    from mpi4py import MPI
    cfg, graph = setup.cfg, setup.problem.graph
    meta = {"ranks": comm.size, "device": setup.backend.device, "engine": setup.engine_name,
            "mpi_library": MPI.Get_library_version().split("\x00")[0].splitlines()[0].strip(), "depth": graph.depth,
            "makespan": setup.makespan, "n_microbatches": setup.sampling.n_microbatches,
            "stages": len(setup.wiring.stages), "package_version": __version__,
            "rank_devices": ",".join(setup.placement["devices"]), "rank_transport": ",".join(setup.placement["transport"]),
            "cuda_aware_decided_by": setup.placement["cuda_aware_decided_by"]}
    if cfg["resume"]:
        try:
            setup.start = _checkpointed_state(cfg["out"], graph.dim)
        except (ValueError, OSError) as err:  # ConfigError, or TraceError from a broken file
            return str(err)
        if cfg["iters"] < setup.start.iteration:
            return (f"--iters {cfg['iters']} is below the checkpoint's iteration {setup.start.iteration}: "
                    "a resume can only go further")
    try:
        setup.trace = TraceWriter(cfg["out"], _jsonable(cfg), meta, resume=bool(cfg["resume"]), overwrite=cfg["overwrite"])
        if cfg["resume"]:
            setup.trace.rewind(setup.start.iteration)  # what came after the checkpoint is redone
    except Exception as err:  # noqa: BLE001 — any reason the file cannot be used is bad input
        return f"cannot write trace '{cfg['out']}': {err}"
    names = list(graph.order)
    setup.trace.write_graph(names, [graph.op(n).describe() for n in names], [list(graph.parents(n)) for n in names],
                            [setup.wiring.stage_of[n] for n in names], graph.dim, graph.depth, graph.root)
    return None


def _checkpointed_state(path: str, dim: int) -> driver.LoopState:
    """The checkpoint to resume from, checked before anything in the trace is changed."""
    from pprs_mpi.trace import read_checkpoint
    arrays, attrs = read_checkpoint(path)
    try:
        state = driver.LoopState(int(attrs["iteration"]), np.asarray(arrays["x"], dtype=float),
                                 np.asarray(arrays["y"], dtype=float), float(attrs["pipeline_time"]),
                                 float(attrs["wall_time"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"cannot resume: the checkpoint in {path} is incomplete or malformed ({err})") from None
    if state.iteration < 0 or state.x.shape != (dim,) or state.y.shape != (dim,) or not (
            np.isfinite(state.x).all() and np.isfinite(state.y).all()):
        raise ConfigError(f"cannot resume: the checkpoint in {path} does not fit this problem (iteration "
                          f"{state.iteration}, x {state.x.shape}, y {state.y.shape}, d = {dim})")
    return state


def _write_checkpoint(setup: Setup, engine, state: driver.LoopState) -> None:
    """Everything a resume needs, atomically; the timeline gathered so far goes with it."""
    _write_gathered(setup.trace, engine)
    setup.trace.write_checkpoint({"x": state.x, "y": state.y}, {
        "iteration": state.iteration, "pipeline_time": state.pipeline_time, "wall_time": state.wall_time,
        "noise_counter": state.iteration, "momentum_t": state.iteration, "seed": setup.cfg["seed"]})


def _write_gathered(trace, engine) -> None:
    """The timeline records gathered from the ranks since the last time, and their memory figures."""
    records, memory = engine.gather()
    trace.write_timeline(records, append=True)
    trace.set_attrs(**{f"rank_{key}": np.array([rank[key] for rank in memory], dtype=np.int64) for key in memory[0]})


def _jsonable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "given"}


def _make_engine(setup: Setup, comm):
    if setup.engine_name == "serial":
        from pprs_mpi.engines.serial import SerialEngine
        return SerialEngine(setup.wiring, setup.schedule, setup.sampling, setup.backend, setup.fault,
                            setup.cfg["timeline_every"])
    from pprs_mpi.engines.mpi import MpiEngine
    return MpiEngine(comm, setup.wiring, setup.schedule, setup.sampling, setup.backend, setup.cfg["comm_timeout"],
                     setup.fault, setup.cfg["timeline_every"], setup.cuda_aware)


def _run(setup: Setup, comm) -> int:
    # Every rank catches the signals, so that none dies of one; rank 0 alone acts on them (a checkpoint
    # and a stop at the next iteration boundary) and the others stop when it tells them to.
    with StopOnSignal() as stop:
        return _run_until_stopped(setup, comm, stop)


def _run_until_stopped(setup: Setup, comm, stop: StopOnSignal) -> int:
    engine = _make_engine(setup, comm)
    if comm.rank != 0:
        engine.serve()
        return 0
    cfg, trace = setup.cfg, setup.trace
    if not cfg["quiet"]:
        print(_banner(setup), flush=True)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected and reported by the driver
        outcome = driver.minimize(engine, setup.backend, cfg, setup.makespan, trace, driver.progress_for(cfg, setup.start.iteration),
                                  setup.start, checkpoint=lambda state: _write_checkpoint(setup, engine, state),
                                  stop_requested=lambda: stop.requested)
    if outcome.status == "completed":  # so that `--resume RUN.h5 --iters N` can extend a finished run
        _write_checkpoint(setup, engine, outcome.state)
    _write_gathered(trace, engine)
    engine.stop()
    trace.write_result(y=outcome.state.y, x=outcome.state.x)
    trace.set_attrs(**{f"result_{key}": value for key, value in setup.problem.describe_point(outcome.state.y).items()})
    trace.close(outcome.status)
    if outcome.status != "completed":
        print(f"{PREFIX}{outcome.message}; trace {cfg['out']} marked {outcome.status}", file=sys.stderr)
        return EXIT_CODES[outcome.status]
    if not cfg["quiet"]:
        print(_summary(setup, outcome), flush=True)
    return 0


def _banner(setup: Setup) -> str:
    cfg, graph = setup.cfg, setup.problem.graph
    simulated = f" (simulated Δ={cfg['simulated_depth']})" if cfg["simulated_depth"] else ""
    return (f"pprs_mpi {__version__}: {cfg['problem']} d={graph.dim} Δ={graph.depth}{simulated} nodes={len(graph.order)} "
            f"| {cfg['algo']} K={cfg['K']} γ={cfg['gamma']:g} η={cfg['lr']:g} μ={cfg['mu']} T={cfg['iters']} "
            f"| {setup.engine_name} engine, {len(setup.wiring.stages)} stages, {cfg['schedule']}, "
            f"{setup.sampling.n_microbatches} microbatches, {setup.makespan} time units/iteration\n"
            f"devices {_per_rank(setup.placement['devices'])}, transport {_per_rank(setup.placement['transport'])} "
            f"(rank 0: {setup.backend.choice})")


def _per_rank(values: list[str]) -> str:
    """'4 × cpu' when every rank has the same value, else the values in rank order."""
    return f"{len(values)} × {values[0]}" if len(set(values)) == 1 else ",".join(values)


def _summary(setup: Setup, outcome) -> str:
    """The closing lines: f(y_T), where the trace is, and (MPI) each rank's compute and wait fractions."""
    from pprs_mpi.report import pipeline_records, rank_fractions
    from pprs_mpi.trace import load
    f_star = setup.problem.f_star
    lines = [f"done: f(y_T) = {outcome.f_final:.6g}" + (f", f* = {f_star:g}" if f_star is not None else "")
             + f"; trace {setup.cfg['out']} (python -m pprs_mpi.report {setup.cfg['out']})"]
    facts = setup.problem.describe_point(outcome.state.y)
    if facts:
        lines.append("  " + ", ".join(f"{key} {value}" for key, value in facts.items()))
    records = pipeline_records(load(setup.cfg["out"])) if setup.engine_name == "mpi" else None
    lines += [f"  rank {r['rank']}: compute {r['compute']:.0%}, wait {r['wait']:.0%}"
              for r in (rank_fractions(records) if records is not None else [])]
    return "\n".join(lines)


def _bad_input(comm, err) -> int:
    if comm.rank == 0:
        print(f"{PREFIX}error: {err}", file=sys.stderr, flush=True)
    return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
