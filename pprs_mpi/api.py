"""The one place that assembles and executes a run: problem → placement → schedule → engine →
Algorithm 1 → HDF5 trace. The command line (`solve`), the Python API (`minimize`), the experiments,
the benchmarks and the tests all go through it.

    import pprs_mpi
    result = pprs_mpi.minimize(graph_or_problem, K=16, gamma=0.01, lr=0.01, iters=500, out="run.h5")

Under `mpirun`, every rank calls `minimize` with the same arguments; rank 0 gets the `Result`, the
others None. Bad input raises `ConfigError` (one line, the same the command line prints) on every
rank, before any file is touched; a failure during the run marks the trace `failed` and raises
`RunFailed` with the same line on every rank (from the command line, under MPI, it ends the whole job).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pprs_mpi import __version__, config, driver, faults, optim
from pprs_mpi.backend import Backend, BackendError, Staging, cuda_aware_mpi, select
from pprs_mpi.config import ConfigError
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.faults import Fault
from pprs_mpi.graph import Graph, GraphError
from pprs_mpi.nonfinite import first_nonfinite, first_nonfinite_at
from pprs_mpi.placement import measure_costs
from pprs_mpi.problems import Problem, registry, spec_for
from pprs_mpi.problems.user import describe_error
from pprs_mpi.schedule import Schedule, build as build_schedule, ideal_makespan
from pprs_mpi.setup_sync import SetupFailed, SetupSync
from pprs_mpi.signals import StopOnSignal

EXIT_CODES = {"completed": 0, "diverged": 1, "interrupted": 3}  # interrupted: a checkpoint was written
PREFIX = "pprs_mpi.solve: "
MAX_ACTIONS_PER_PASS = 1_000_000  # microbatches × nodes; beyond it the schedule alone would take minutes
MAX_SCHEDULE_CELLS = 20_000_000  # stages × time units of one schedule
MAX_MESSAGE_ENTRIES = 1 << 28  # entries of one microbatch's largest array (2 GiB in float64)
QUIET_FLOATS = dict(over="ignore", invalid="ignore", divide="ignore")  # divergence is the driver's to detect and
# report, once, on rank 0: no NumPy warning on any rank


class RunFailed(RuntimeError):
    """A run that failed after it started (in one process, or on every rank under `minimize`); the trace
    says `failed`."""


@dataclass
class Result:
    """What a run leaves on rank 0: its status, the iterates, the objective's values and the trace."""

    status: str  # completed, diverged or interrupted
    y: np.ndarray  # the output y_T of Algorithm 1
    x: np.ndarray
    f_final: float  # f(y_T) (completed), else the last value seen
    iterations: np.ndarray  # int64, one per trace row: the iterations done (0 first)
    f_smoothed: np.ndarray  # float, per row: mean of the K sample values
    f_eval: np.ndarray  # float, per row: f(y_t) where evaluated, NaN elsewhere
    trace: str  # path of the HDF5 trace (pprs_mpi.trace.load reads it)
    message: str = ""  # why a run that did not complete stopped, or that a resume had nothing to do

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def minimize(problem: Problem | Graph | str, comm=None, **options) -> Result | None:
    """Runs one solve of `problem` (a Problem, a Graph, or a reference such as 'lad' or 'file.py:build')
    with the command line's options by name (K, gamma, lr, mu, iters, algo, schedule, out, seed, ...;
    builder arguments as problem_args={...}). `comm` defaults to MPI.COMM_WORLD."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD if comm is None else comm
    if isinstance(problem, (Problem, Graph)):
        built = problem if isinstance(problem, Problem) else Problem("graph", problem)
        options = {**options, "problem": config.OBJECT_PREFIX + built.name}
        return run(lambda: config.resolve(options, problem_object=True), comm, built, recover=True)
    if not isinstance(problem, str):
        raise ConfigError(f"problem must be a Problem, a Graph or a reference string, got {type(problem).__name__}")
    return run(lambda: config.resolve({**options, "problem": problem}), comm, recover=True)


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
        if settle is None:
            report_failure_and_abort(engine_comm or comm, text, prefix=PREFIX)
        text = settle(text, isinstance(err, RemoteFailure), PREFIX)
    raise RunFailed(text) from err


def set_up(cfg: config.RunConfig | Callable[[], config.RunConfig], comm, problem: Problem | None = None) -> "Setup":
    """Resolves, builds and places the run on every rank and opens its trace on rank 0. Every error on any
    rank, at any step, ends the setup on every rank with the same one-line ConfigError naming the rank
    (see setup_sync); rank 0 commits nothing to the trace before every other step has passed."""
    sync = SetupSync(comm, prefix=PREFIX)
    try:
        cfg = cfg() if callable(cfg) else cfg
        sync.timeout = cfg["comm_timeout"]
        setup = assemble(cfg, comm, problem, sync)
        trace_error = open_trace(setup, comm) if comm.rank == 0 else None
        if trace_error:
            raise ConfigError(trace_error)
        setup.complete = sync.bcast(setup.complete)  # rank 0 found the resumed run complete: nothing to run
    except SetupFailed:
        raise
    except Exception as err:  # noqa: BLE001 — any error of one rank must reach every rank, in one line
        sync.fail(str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}")
    sync.close()
    return setup


@dataclass
class Setup:
    """Everything a run needs, built identically on every rank from the same configuration."""

    cfg: config.RunConfig
    problem: Problem
    wiring: Wiring
    schedule: Schedule
    sampling: Sampling
    backend: Backend
    engine_name: str
    makespan: int
    cuda_aware: bool
    placement: dict  # every rank's device and transport path, and how CUDA awareness was decided
    graph_hash: str
    trace: object = None  # the TraceWriter, on rank 0
    start: driver.LoopState | None = None
    complete: bool = False  # a resume of a completed run with nothing left to do
    fault: Fault | None = field(init=False)
    optimizer: optim.Optimizer = field(init=False)

    def __post_init__(self):
        self.optimizer = optim.build(self.cfg)
        self.start = self.start or driver.LoopState.start(self.optimizer.init(self.problem.x0))
        self.fault = Fault.parse(self.cfg["inject_fault"]) if self.cfg["inject_fault"] else faults.from_environment()


def assemble(cfg: config.RunConfig, comm, problem: Problem | None = None, sync: SetupSync | None = None) -> Setup:
    """Builds the run on every rank; its collectives go through `sync` (see setup_sync), so that an error
    on one rank reaches all and no rank waits forever. Every error is a ConfigError."""
    try:
        return _assemble(cfg, comm, problem, sync or SetupSync(comm, prefix=PREFIX))
    except (GraphError, BackendError, ValueError, OSError) as err:  # all of them bad input
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from None


def _assemble(cfg: config.RunConfig, comm, problem: Problem | None, sync: SetupSync) -> Setup:
    from mpi4py import MPI
    problem = problem or build_problem(cfg)
    graph = problem.graph
    graph_hash = _same_graph_everywhere(graph, sync)
    cfg = _apply_preset(cfg, problem)
    if cfg["expect_ranks"] not in (None, comm.size):
        raise ConfigError(f"expected {cfg['expect_ranks']} MPI ranks but this job has {comm.size}: "
                          "was python started without mpirun/srun, or with another MPI than mpi4py's?")
    engine_name = cfg["engine"] if cfg["engine"] != "auto" else ("mpi" if comm.size > 1 else "serial")
    if engine_name == "serial":
        if comm.size > 1:
            raise ConfigError(f"--engine serial runs in one process, but {comm.size} ranks were started")
        n_stages = cfg["stages"] or len(graph.order)
    else:
        if cfg["stages"] not in (None, comm.size):
            raise ConfigError(f"--stages {cfg['stages']} differs from the {comm.size} MPI ranks; the MPI engine runs "
                              "one stage per rank")
        n_stages = comm.size
    if n_stages > len(graph.order):
        raise ConfigError(f"{n_stages} stages (ranks) for a graph of {len(graph.order)} nodes: use at most "
                          f"{len(graph.order)}")
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank).rank if comm.size > 1 else 0
    try:
        backend = select(cfg["device"], cfg["dtype"], local_rank)
        cuda_aware, decided_by = cuda_aware_mpi() if backend.on_gpu else (False, "CPU rank")
        local = {"devices": [backend.device], "transport": [Staging(backend, cuda_aware).path], "error": []}
    except BackendError as err:
        local = {"devices": [], "transport": [], "error": [f"rank {comm.rank}: {err}"]}
    gathered = sync.gather(local)
    placement = {key: [item for rank in gathered for item in rank[key]] for key in local}
    if placement.pop("error"):
        raise BackendError(_placement_errors(gathered))
    sampling = Sampling(cfg["K"], float(cfg["gamma"]), cfg["seed"], cfg["microbatch_size"],
                        noise_on_device=cfg["noise_source"] == "device")
    _check_sizes(cfg, graph, sampling.n_microbatches, n_stages)
    if cfg["check_gradients"]:
        _check_gradients(problem, comm, sync)
    costs = None
    if cfg["balance"] == "measured":  # measured on rank 0 only, so every rank places nodes alike
        costs = measure_costs(graph, backend, cfg["microbatch_size"]) if comm.rank == 0 else None
        costs = sync.bcast(costs)
    wiring, schedule = _placed(graph, graph.stages(n_stages, costs), cfg["schedule"], sampling.n_microbatches)
    makespan = (ideal_makespan(sampling.n_microbatches, cfg["simulated_depth"]) if cfg["simulated_depth"]
                else schedule.makespan)
    return Setup(cfg, problem, wiring, schedule, sampling, backend, engine_name, makespan,
                 cuda_aware, {**placement, "cuda_aware_decided_by": decided_by}, graph_hash)


def build_problem(cfg: config.RunConfig) -> Problem:
    """The configured problem, built by its builder; whatever the builder raises is bad input."""
    spec = spec_for(cfg["problem"])
    try:
        return spec.make(cfg["problem_params"])
    except GraphError as err:
        raise ConfigError(str(err)) from None
    except (SystemExit, KeyboardInterrupt) as err:  # not a way to end a job from inside a builder
        what = (f"called sys.exit({err.code!r})" if isinstance(err, SystemExit)
                else "was interrupted (KeyboardInterrupt)")
        raise ConfigError(f"problem {spec.reference!r}: the builder {what}") from None
    except Exception as err:  # noqa: BLE001 — a builder's own error, in one line naming it
        if spec.reference in registry():
            raise ConfigError(f"problem {spec.reference!r}: {err}") from None
        raise ConfigError(f"problem {spec.reference!r}: the builder raised "
                          f"{describe_error(err, spec.reference.rpartition(':')[0])}") from None


def _same_graph_everywhere(graph: Graph, sync: SetupSync) -> str:
    """The graph's hash, after checking that every rank built the same graph (structure, op types and
    constants); a mismatch names the first node that differs and the ranks that disagree with rank 0."""
    digests = graph.fingerprints()
    whole = hashlib.sha256("".join(f"{name}={d};" for name, d in digests.items()).encode()).hexdigest()
    if len(set(sync.gather(whole))) == 1:
        return whole
    every = sync.gather(list(digests.items()))
    mine = every[0]
    for position in range(max(len(d) for d in every)):
        differ = [rank for rank, d in enumerate(every) if d[position:position + 1] != mine[position:position + 1]]
        if differ:
            node = mine[position][0] if position < len(mine) else every[differ[0]][position][0]
            raise ConfigError(f"the ranks built different graphs: node {node!r} differs on rank(s) "
                              f"{', '.join(map(str, differ))} from rank 0 (a builder runs on every rank and must be "
                              "deterministic: seed its random numbers)")
    raise ConfigError("the ranks built different graphs")


def _check_gradients(problem: Problem, comm, sync: SetupSync) -> None:
    """--check-gradients: rank 0 checks every node against finite differences; a failure is bad input."""
    from pprs_mpi.check import check_graph
    failure = None
    if comm.rank == 0:
        failures = [line for line in check_graph(problem.graph, x0=problem.x0) if not line.ok]
        failure = failures[0].describe() if failures else None
    failure = sync.bcast(failure)
    if failure:
        raise ConfigError(f"--check-gradients: {failure}")


def _check_sizes(cfg: config.RunConfig, graph: Graph, n_microbatches: int, n_stages: int) -> None:
    """Refuses pipelines whose schedule alone would take minutes and gigabytes to build, and microbatches
    whose arrays could not fit in memory."""
    actions = n_microbatches * len(graph.order)
    if actions > MAX_ACTIONS_PER_PASS:
        raise ConfigError(f"K={cfg['K']} in microbatches of {cfg['microbatch_size']} over {len(graph.order)} nodes "
                          f"makes {actions:,} forward actions per iteration (at most {MAX_ACTIONS_PER_PASS:,}): "
                          "raise --microbatch-size or lower K")
    cells = n_stages * 2 * (n_microbatches + len(graph.order))  # about stages × makespan
    if cells > MAX_SCHEDULE_CELLS:
        raise ConfigError(f"{n_stages} stages × ~{2 * (n_microbatches + len(graph.order)):,} time units make a "
                          f"schedule of ~{cells:,} cells (at most {MAX_SCHEDULE_CELLS:,}): use fewer stages (ranks) "
                          "or nodes")
    rows = min(cfg["K"], cfg["microbatch_size"])
    largest = max(math.prod(graph.shape(name)) for name in (graph.root, *graph.order))
    if rows * largest > MAX_MESSAGE_ENTRIES:
        raise ConfigError(f"a microbatch of {rows:,} noisy copies makes arrays of {rows * largest:,} entries (at most "
                          f"{MAX_MESSAGE_ENTRIES:,}): lower --microbatch-size")


def _placement_errors(gathered: list[dict]) -> str:
    """The first rank's device error, and how many ranks had one."""
    errors = [e for rank in gathered for e in rank["error"]]
    return errors[0] + (f" (and {len(errors) - 1} more rank(s))" if len(errors) > 1 else "")


def _apply_preset(cfg: config.RunConfig, problem: Problem) -> config.RunConfig:
    """`cfg` with K, γ, η, μ (and T) from Theorem 3 or 4; values the user set explicitly win."""
    if cfg["preset"] == "none" or cfg["resume"]:  # a resumed run keeps the values the preset gave it
        return cfg
    L, R, d = problem.lipschitz, problem.radius, problem.graph.dim
    if L is None:
        raise ConfigError(f"--preset {cfg['preset']} needs a Lipschitz bound, which problem {problem.name!r} does not "
                          "know")
    try:
        if cfg["preset"] == "theorem3":
            if R is None:
                raise ConfigError(f"--preset theorem3 needs R, which problem {problem.name!r} does not know")
            use_eps = "eps" in cfg["given"] and "iters" not in cfg["given"]
            preset = optim.theorem3(L, R, d, iters=None if use_eps else cfg["iters"],
                                    eps=cfg["eps"] if use_eps else None)
        else:
            if cfg["eps"] is None or cfg["smoothing_radius"] is None:
                raise ConfigError("--preset theorem4 needs --eps and --smoothing-radius")
            preset = optim.theorem4(L, _initial_gap(problem), d, cfg["eps"], cfg["smoothing_radius"])
    except (ValueError, ZeroDivisionError, OverflowError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"--preset {cfg['preset']}: no usable parameters for these values "
                          f"({type(err).__name__}: {err})") from None
    return cfg.replace(**{key: getattr(preset, key) for key in ("K", "gamma", "lr", "mu", "iters")
                          if key not in cfg["given"]}, preset_source=preset.source)


def _initial_gap(problem: Problem) -> float:
    """D = f(θ_0) − f* for Theorem 4, from one plain forward pass on the host."""
    if problem.f_star is None:
        raise ConfigError(f"--preset theorem4 needs f*, which problem {problem.name!r} does not know")
    graph, values = problem.graph, {problem.graph.root: problem.x0[None, :]}
    for name in graph.order:
        values[name] = graph.op(name).forward(np, *[values[p] for p in graph.parents(name)])
    return float(values[graph.leaf][0]) - problem.f_star


def open_trace(setup: Setup, comm) -> str | None:
    """Creates (or, to resume, reopens) the trace on rank 0; returns an error message instead of raising."""
    from mpi4py import MPI
    from pprs_mpi.trace import TraceWriter
    cfg, graph = setup.cfg, setup.problem.graph
    meta = {"ranks": comm.size, "device": setup.backend.device, "engine": setup.engine_name,
            "mpi_library": MPI.Get_library_version().split("\x00")[0].splitlines()[0].strip(), "depth": graph.depth,
            "makespan": setup.makespan, "n_microbatches": setup.sampling.n_microbatches,
            "stages": len(setup.wiring.stages), "package_version": __version__,
            "rank_devices": ",".join(setup.placement["devices"]),
            "rank_transport": ",".join(setup.placement["transport"]),
            "cuda_aware_decided_by": setup.placement["cuda_aware_decided_by"], "graph_hash": setup.graph_hash,
            "f_star": math.nan if setup.problem.f_star is None else float(setup.problem.f_star)}
    if cfg["resume"]:
        try:
            setup.start = _checkpointed_state(cfg["out"], graph.dim, setup.graph_hash, setup.optimizer)
        except (ValueError, OSError) as err:  # ConfigError, or TraceError from a broken file
            return str(err)
        if cfg["iters"] < setup.start.iteration:
            return (f"--iters {cfg['iters']} is below the checkpoint's iteration {setup.start.iteration}: "
                    "a resume can only go further")
        setup.complete = cfg["iters"] == setup.start.iteration and _stored_status(cfg["out"]) == "completed"
        if setup.complete:
            return None
    meta["layout_segments"] = json.dumps(_layout_segments(setup, meta))
    try:
        setup.trace = TraceWriter(cfg["out"], _jsonable(cfg), meta, resume=bool(cfg["resume"]),
                                  overwrite=cfg["overwrite"],  # what came after the checkpoint is redone:
                                  rewind=setup.start.iteration if cfg["resume"] else None)
    except Exception as err:  # noqa: BLE001 — any reason the file cannot be used is bad input
        return f"cannot write trace {cfg['out']!r}: {err}"
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
            "simulated_depth": setup.cfg["simulated_depth"]}
    if not setup.cfg["resume"]:
        return [here]
    from pprs_mpi.trace import load
    attrs = load(setup.cfg["out"]).attrs
    try:
        before = json.loads(attrs["layout_segments"])
        assert isinstance(before, list) and all(isinstance(s, dict) for s in before)
    except (KeyError, ValueError, AssertionError):  # a trace from before segments: its last layout from 0 on
        before = [{"from_iteration": 0, **{key: attrs.get(key) for key in LAYOUT_KEYS}}]
    return [s for s in before if s.get("from_iteration", 0) < setup.start.iteration] + [here]


def _stored_status(path: str) -> str:
    from pprs_mpi.trace import load
    return load(path).status


def _completed_result(setup: Setup) -> Result:
    """The Result a completed trace holds, saying that there is nothing to do and how to extend the run."""
    from pprs_mpi.trace import load
    out, done = setup.cfg["out"], setup.start.iteration
    trace = load(out)
    f_eval = trace.columns["f_eval"]
    finite = f_eval[np.isfinite(f_eval)]
    message = (f"{out} is already complete at iteration {done}: nothing to do (to extend the run: "
               f"--resume {out} --iters N, with N > {done})")
    return Result("completed", trace.result.get("y", setup.start.y), trace.result.get("x", setup.start.x),
                  float(finite[-1]) if finite.size else math.nan, trace.columns["iteration"],
                  trace.columns["f_smoothed"], f_eval, out, message)


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


def _write_checkpoint(setup: Setup, engine, state: driver.LoopState) -> None:
    """Everything a resume needs, atomically; the timeline gathered so far goes with it."""
    _write_gathered(setup.trace, engine)
    setup.trace.write_checkpoint(state.arrays, {
        "iteration": state.iteration, "pipeline_time": state.pipeline_time, "wall_time": state.wall_time,
        "noise_counter": state.iteration, "momentum_t": state.iteration, "seed": setup.cfg["seed"]})


def _write_gathered(trace, engine) -> None:
    """The timeline records gathered from the ranks since the last time, and their memory figures."""
    records, memory = engine.gather()
    trace.write_timeline(records, append=True)
    trace.set_attrs(**{f"rank_{key}": np.array([rank[key] for rank in memory], dtype=np.int64) for key in memory[0]})


def _jsonable(cfg: config.RunConfig) -> dict:
    return {k: v for k, v in cfg.as_dict().items() if k != "given"}


def engine_for(graph: Graph, stages: list[tuple[str, ...]], sampling: Sampling, backend: Backend | None = None,
               schedule: str = "gpipe", comm=None, **engine_options):
    """An engine running `graph` placed on `stages` (lists of node names) with `schedule`: the serial
    engine without `comm`, else the MPI engine, one stage per rank of `comm`. For tests and benchmarks
    that place nodes by hand; a run's own engine comes from the same `make_engine`."""
    wiring, plan = _placed(graph, stages, schedule, sampling.n_microbatches)
    return make_engine(wiring, plan, sampling, backend or select(), comm, **engine_options)


def _placed(graph: Graph, stages, schedule: str, n_microbatches: int) -> tuple[Wiring, Schedule]:
    """The wiring of `graph` placed on `stages`, and its schedule of `n_microbatches` microbatches."""
    wiring = Wiring(graph, stages)
    return wiring, build_schedule(schedule, wiring.stages, {n: graph.parents(n) for n in graph.order}, n_microbatches)


def make_engine(wiring: Wiring, schedule: Schedule, sampling: Sampling, backend: Backend, comm=None,
                fault: Fault | None = None, timeline_every: int = 1, comm_timeout: float | None = None,
                cuda_aware: bool = False, recover: bool = False):
    """The serial engine (no `comm`) or the MPI engine over `comm` for a placement and its schedule
    (`recover`: a failure is settled among the ranks instead of aborting the job)."""
    if comm is None:
        from pprs_mpi.engines.serial import SerialEngine
        return SerialEngine(wiring, schedule, sampling, backend, fault, timeline_every)
    from pprs_mpi.engines.mpi import MpiEngine
    return MpiEngine(comm, wiring, schedule, sampling, backend, comm_timeout, fault, timeline_every, cuda_aware,
                     recover)


def _make_engine(setup: Setup, comm, recover: bool = False):
    return make_engine(setup.wiring, setup.schedule, setup.sampling, setup.backend,
                       None if setup.engine_name == "serial" else comm, setup.fault, setup.cfg["timeline_every"],
                       setup.cfg["comm_timeout"], setup.cuda_aware, recover)


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
    if not cfg["quiet"]:
        driver.say(_banner(setup))
    with np.errstate(**QUIET_FLOATS):
        outcome = driver.minimize(engine, setup.backend, cfg, setup.optimizer, setup.makespan, trace,
                                  driver.progress_for(cfg, setup.start.iteration), setup.start,
                                  checkpoint=lambda state: _write_checkpoint(setup, engine, state),
                                  stop_requested=lambda: stop.requested,
                                  locate=lambda x, t: first_nonfinite(setup.problem.graph, setup.sampling,
                                                                      setup.backend, x, t),
                                  locate_at=lambda y, t: first_nonfinite_at(setup.problem.graph, setup.backend, y, t))
    if outcome.status == "completed":  # so that `--resume RUN.h5 --iters N` can extend a finished run
        _write_checkpoint(setup, engine, outcome.state)
    _write_gathered(trace, engine)
    trace.write_result(y=outcome.state.y, x=outcome.state.x)
    trace.set_attrs(**{f"result_{key}": value for key, value in setup.problem.describe_point(outcome.state.y).items()})
    trace.close(outcome.status)
    result = _result(setup, outcome)
    engine.stop()  # last: until then the other ranks wait for a command, so they would hear of a failure here
    if outcome.status == "completed" and not cfg["quiet"]:
        driver.say(_summary(setup, outcome))
    return result


def _result(setup: Setup, outcome) -> Result:
    columns, out = setup.trace.columns, setup.cfg["out"]
    message = ""
    if outcome.message:
        message = f"{outcome.message}; " + (f"trace {out} marked {outcome.status}" if setup.trace.replaced else
                                            f"{out} not replaced (--overwrite keeps the old file until the new run "
                                            "has a checkpoint or ends completed or interrupted)")
    return Result(outcome.status, outcome.state.y, outcome.state.x, outcome.f_final, columns["iteration"],
                  columns["f_smoothed"], columns["f_eval"], setup.cfg["out"], message)


def _banner(setup: Setup) -> str:
    cfg, graph = setup.cfg, setup.problem.graph
    simulated = f" (simulated Δ={cfg['simulated_depth']})" if cfg["simulated_depth"] else ""
    return (f"pprs_mpi {__version__}: {setup.problem.name} d={graph.dim} Δ={graph.depth}{simulated} "
            f"nodes={len(graph.order)} "
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
    from pprs_mpi.analysis import pipeline_records, rank_fractions
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
