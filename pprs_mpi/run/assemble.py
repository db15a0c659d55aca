"""Assembling a run, identically on every rank: resolve the configuration, build the problem, check that
every rank built the same graph, choose each rank's device, place the nodes into stages, compile the
schedule, open the trace. Every error on any rank becomes one ConfigError line on every rank (setup_sync)."""

from __future__ import annotations

import hashlib
import math
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from pprs_mpi import averaging, config, driver, faults, heap, layout, message_cost, optim, parameters, threads
from pprs_mpi.backend import Backend, BackendError, select
from pprs_mpi.config import ConfigError
from pprs_mpi.engines.factory import place
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.faults import Fault
from pprs_mpi.graph import Graph, GraphError
from pprs_mpi.launch import launched_size
from pprs_mpi.placement import measure_costs
from pprs_mpi.problems import Problem, registry, spec_for
from pprs_mpi.problems.user import describe_error
from pprs_mpi.run.presets import apply_preset, apply_schedule_bases
from pprs_mpi.run.trace_io import open_trace
from pprs_mpi.schedule import AUTO, AUTO_SCHEDULES, SPECS, Schedule, ideal_makespan
from pprs_mpi.setup_sync import SetupFailed, SetupSync, name_ranks
from pprs_mpi.solve import PREFIX

SINGLETONS = ("the launcher started each task as an MPI singleton (its PMI does not reach this MPI library): "
              "under srun set SRUN_MPI=pmix (srun --mpi=pmix), or use LAUNCHER=mpirun")
MAX_ACTIONS_PER_PASS = 1_000_000  # microbatches × nodes; beyond it the schedule alone would take minutes
MAX_SCHEDULE_CELLS = 20_000_000  # stages × time units: the serial engine holds every stage's plan
MAX_MESSAGE_ENTRIES = 1 << 28  # entries of one microbatch's largest array (2 GiB in float64)
MAX_PASS_ENTRIES = 1 << 30  # entries of the activations a pass keeps for its backward (8 GiB in float64)


def set_up(cfg: config.RunConfig | Callable[[], config.RunConfig], comm, problem: Problem | None = None) -> "Setup":
    """Resolves, builds and places the run on every rank and opens its trace on rank 0. Every error on any
    rank, at any step, ends the setup on every rank with the same one-line ConfigError naming the rank
    (see setup_sync); rank 0 commits nothing to the trace before every other step has passed."""
    sync = SetupSync(comm, prefix=PREFIX)
    try:
        cfg = cfg() if callable(cfg) else cfg
        sync.timeout = cfg.pipeline.comm_timeout
        setup = assemble(cfg, comm, problem, sync)
        trace_error = open_trace(setup, comm) if comm.rank == 0 else None
        if trace_error:
            raise ConfigError(trace_error)
        setup.complete = sync.bcast(setup.complete)  # rank 0 found the resumed run complete: nothing to run
    except SetupFailed:
        raise
    except BaseException as err:  # noqa: BLE001 — any error of one rank (a BaseException too) must reach every rank
        if isinstance(err, KeyboardInterrupt) and comm.size == 1 or isinstance(err, SystemExit) and not isinstance(
                cfg, config.RunConfig):
            raise  # Ctrl-C of a serial run from Python, and --help's exit while reading the command line
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
    schedule_name: str  # the schedule's policy: the one asked for, or the planner's choice under --schedule auto
    sampling: Sampling
    backend: Backend
    engine_name: str
    makespan: int
    cuda_aware: bool
    placement: dict  # every rank's device and transport path, and how CUDA awareness was decided
    graph_hash: str
    layout: layout.Layout  # the microbatch size, why, and the candidates weighed
    trace: object = None  # the TraceWriter, on rank 0
    start: driver.LoopState | None = None
    complete: bool = False  # a resume of a completed run with nothing left to do
    fault: Fault | None = field(init=False)
    optimizer: optim.Optimizer = field(init=False)

    def __post_init__(self):
        algorithm = self.cfg.algorithm
        self.optimizer = averaging.wrap(optim.build(algorithm), algorithm.average, algorithm.iters)
        self.start = self.start or driver.LoopState.start(self.optimizer.init(self.problem.x0))
        injected = self.cfg.pipeline.inject_fault
        self.fault = Fault.parse(injected) if injected else faults.from_environment()


def assemble(cfg: config.RunConfig, comm, problem: Problem | None = None, sync: SetupSync | None = None) -> Setup:
    """Builds the run on every rank; its collectives go through `sync` (see setup_sync), so that an error
    on one rank reaches all and no rank waits forever. Every error is a ConfigError."""
    try:
        return _assemble(cfg, comm, problem, sync or SetupSync(comm, prefix=PREFIX))
    except (GraphError, BackendError, ValueError, OSError) as err:  # all of them bad input
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from None


def _assemble(cfg: config.RunConfig, comm, problem: Problem | None, sync: SetupSync) -> Setup:
    threads.use(cfg.device.threads)  # before the builder, whose constants are computed too
    heap.keep_freed_memory()
    problem = problem or build_problem(cfg)
    graph = problem.graph
    graph_hash = _same_graph_everywhere(graph, sync)
    cfg = apply_schedule_bases(apply_preset(cfg, problem), problem)
    if cfg.pipeline.expect_ranks not in (None, comm.size):
        raise ConfigError(f"expected {cfg.pipeline.expect_ranks} MPI ranks but this job has {comm.size}: "
                          + (SINGLETONS if comm.size == 1 and launched_size() > 1 else
                             "was python started without mpirun/srun, or with another MPI than mpi4py's?"))
    engine_name = cfg.pipeline.engine if cfg.pipeline.engine != "auto" else ("mpi" if comm.size > 1 else "serial")
    if engine_name == "serial":
        if comm.size > 1:
            raise ConfigError(f"--engine serial runs in one process, but {comm.size} ranks were started")
        n_stages = cfg.pipeline.stages or len(graph.order)
    else:
        if cfg.pipeline.stages not in (None, comm.size):
            raise ConfigError(f"--stages {cfg.pipeline.stages} differs from the {comm.size} MPI ranks; the MPI engine "
                              "runs one stage per rank")
        n_stages = comm.size
    if n_stages > len(graph.order):
        raise ConfigError(f"{n_stages} stages (ranks) for a graph of {len(graph.order)} nodes: use at most "
                          f"{len(graph.order)}")
    local_rank = _host_rank(comm) if comm.size > 1 else 0
    try:
        backend = select(cfg.device.device, cfg.device.dtype, local_rank)
        cuda_aware, decided_by = backend.cuda_awareness()
        local = {"devices": [backend.device], "transport": [backend.staging(cuda_aware).path],
                 "hosts": [socket.gethostname()], "error": []}
    except BackendError as err:
        local = {"devices": [], "transport": [], "hosts": [], "error": [f"rank {comm.rank}: {err}"]}
    gathered = sync.gather(local, check=_placement_errors) or [local]  # every rank's on rank 0, its own elsewhere
    placement = {key: [item for rank in gathered for item in rank[key]] for key in local if key != "error"}
    names = AUTO_SCHEDULES if cfg.pipeline.schedule == AUTO else (cfg.pipeline.schedule,)
    place_nodes, parents = SPECS[names[0]].placement, {name: graph.parents(name) for name in graph.order}
    parallel = engine_name == "mpi" or cfg.pipeline.stages is not None  # --stages emulates that many ranks
    regroup = partial(place_nodes, graph, n_stages) if parallel and cfg.pipeline.balance == "auto" else None
    schedules = {name: partial(_build_schedule, SPECS[name], parents) for name in names}
    declared = place_nodes(graph, n_stages, None)
    chosen = _choose_layout(cfg, graph, declared, regroup, schedules, parallel, backend, comm, sync)
    schedule_name = chosen.schedule or names[0]
    stages = chosen.stages or declared
    gamma = parameters.smoothing(cfg.algorithm)
    sampling = Sampling(cfg.algorithm.K, gamma.base, cfg.algorithm.seed, chosen.microbatch_size,
                        noise_on_device=cfg.device.noise_source == "device",
                        gamma_schedule=None if gamma.constant else gamma,
                        antithetic=cfg.algorithm.noise == "antithetic")
    _check_sizes(cfg, graph, sampling, n_stages, engine_name)
    if cfg.problem.check_gradients:
        _check_gradients(problem, comm, sync, float32=cfg.device.dtype == "float32")
    if cfg.pipeline.balance == "measured":  # measured on rank 0 only, so every rank places nodes alike
        costs = measure_costs(graph, backend, chosen.microbatch_size) if comm.rank == 0 else None
        stages = place_nodes(graph, n_stages, sync.bcast(costs))
    wiring, schedule = place(graph, stages, schedule_name, sampling.n_microbatches)
    if not parallel and sampling.n_microbatches == 1:
        # one process, one microbatch: on a chain one stage counts the same time units (2Δ) and runs each stretch of
        # framework nodes as one call (engines/fusion.py), which one stage per node would split at every node
        merged = place(graph, place_nodes(graph, 1, None), schedule_name, 1)
        if merged[1].makespan == schedule.makespan:
            wiring, schedule = merged
    makespan = (ideal_makespan(sampling.n_microbatches, cfg.pipeline.simulated_depth) if cfg.pipeline.simulated_depth
                else schedule.makespan)
    return Setup(cfg, problem, wiring, schedule, schedule_name, sampling, backend, engine_name, makespan,
                 cuda_aware, {**placement, "cuda_aware_decided_by": decided_by}, graph_hash, chosen)


def _host_rank(comm) -> int:
    """This rank's index among the ranks on its host (which of the host's GPUs it takes); the communicator that
    tells it is freed, so that a process running many jobs (`minimize` in a loop) does not exhaust MPI's."""
    from mpi4py import MPI
    host = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        return host.rank
    finally:
        host.Free()


def _build_schedule(spec, parents, stages, M: int):
    """A candidate layout's schedule under `spec`, for the planner to simulate."""
    return spec.build(stages, parents, M)


def _choose_layout(cfg: config.RunConfig, graph: Graph, stages, regroup, schedules, parallel: bool, backend: Backend,
                   comm, sync: SetupSync) -> layout.Layout:
    """The microbatch size, with `regroup` the grouping and with several `schedules` (name → its builder, for the
    planner to simulate) the schedule (see `layout`): chosen on rank 0, where `measured` times the nodes (and,
    with every rank, the messages between neighbouring ranks), and sent to every rank, so that all of them run the
    same schedule."""
    max_rows = layout.max_rows(graph, MAX_MESSAGE_ENTRIES)
    messages = None
    if (cfg.pipeline.microbatch_size == layout.MEASURED and comm.size > 1 and cfg.meta.stored_microbatch_size is None
            and not cfg.pipeline.simulated_depth):
        entries = min(cfg.algorithm.K, max_rows) * layout.largest_entries(graph)
        messages = message_cost.measure(sync, entries * layout.BYTES_PER_ENTRY)
    chosen = None
    if comm.rank == 0:
        chosen = layout.choose(cfg.pipeline.microbatch_size, cfg.algorithm.K, stages, graph, parallel, max_rows,
                               bool(cfg.pipeline.simulated_depth), cfg.meta.stored_microbatch_size,
                               lambda b: measure_costs(graph, backend, b), regroup, schedules, messages)
    return sync.bcast(chosen)


def build_problem(cfg: config.RunConfig) -> Problem:
    """The configured problem, built by its builder; whatever the builder raises is bad input."""
    spec = spec_for(cfg.problem.problem)
    try:
        return spec.make(cfg.meta.problem_params)
    except GraphError as err:
        raise ConfigError(str(err)) from None
    except (SystemExit, KeyboardInterrupt) as err:  # not a way to end a job from inside a builder
        what = (f"called sys.exit({err.code!r})" if isinstance(err, SystemExit)
                else "was interrupted (KeyboardInterrupt)")
        raise ConfigError(f"problem {spec.reference!r}: the builder {what}") from None
    except BaseException as err:  # noqa: BLE001 — a builder's own error (even a BaseException), in one line naming it
        if spec.reference in registry():
            raise ConfigError(f"problem {spec.reference!r}: {err}") from None
        raise ConfigError(f"problem {spec.reference!r}: the builder raised "
                          f"{describe_error(err, spec.reference.rpartition(':')[0])}") from None


def _same_graph_everywhere(graph: Graph, sync: SetupSync) -> str:
    """The graph's hash, after checking that every rank built the same graph (structure, op types and
    constants); a mismatch names the first node that differs and the ranks that disagree with rank 0."""
    digests = graph.fingerprints()
    whole = hashlib.sha256("".join(f"{name}={d};" for name, d in digests.items()).encode()).hexdigest()
    verdict = sync.agree(whole, _differing)
    if verdict is None:
        return whole
    first, count, named = verdict  # rank 0 compares its nodes with those of the first rank that differs
    ours = list(digests.items()) if sync.rank in (0, first) else None
    sync.agree(ours, lambda every: _first_difference(every[0], every[first], first, count, named))
    raise ConfigError("the ranks built different graphs")  # not reached: the round above failed


def _differing(wholes: list[str]) -> tuple[int, int, str] | None:
    """Rank 0's short verdict on every rank's graph hash: None, or (the first rank that differs from rank 0,
    how many do, the first of them named)."""
    differ = [rank for rank, whole in enumerate(wholes) if whole != wholes[0]]
    return (differ[0], len(differ), name_ranks(differ)) if differ else None


def _first_difference(mine: list, theirs: list, rank: int, count: int, named: str) -> None:
    """Raises the ConfigError naming the first node whose fingerprint differs between rank 0 and `rank`."""
    for position in range(max(len(mine), len(theirs))):
        if mine[position:position + 1] != theirs[position:position + 1]:
            node = (mine if position < len(mine) else theirs)[position][0]
            others = f" ({count} ranks differ: {named})" if count > 1 else ""
            raise ConfigError(f"the ranks built different graphs: node {node!r} differs on rank(s) {rank} from rank 0"
                              f"{others} (a builder runs on every rank and must be deterministic: seed its random "
                              "numbers)")
    raise ConfigError(f"the ranks built different graphs: rank {rank}'s differs from rank 0's")


def _check_gradients(problem: Problem, comm, sync: SetupSync, float32: bool) -> None:
    """--check-gradients: rank 0 checks every node against finite differences (in float64), and the float32
    contract only in a float32 run (`check --dtype` is for the other precision); a failure is bad input."""
    from pprs_mpi.check import check_graph
    failure = None
    if comm.rank == 0:
        failures = [line for line in check_graph(problem.graph, x0=problem.x0, float32=float32) if not line.ok]
        failure = failures[0].describe() if failures else None
    failure = sync.bcast(failure)
    if failure:
        raise ConfigError(f"--check-gradients: {failure}")


def _check_sizes(cfg: config.RunConfig, graph: Graph, sampling: Sampling, n_stages: int, engine: str) -> None:
    """Refuses pipelines whose schedule alone would take minutes and gigabytes to build, and microbatches
    whose arrays could not fit in memory. An MPI rank builds its own stage's plan only (linear in the
    makespan); the serial engine builds every stage's, stages × makespan cells."""
    n_microbatches = sampling.n_microbatches
    actions = n_microbatches * len(graph.order)
    if actions > MAX_ACTIONS_PER_PASS:
        raise ConfigError(f"K={cfg.algorithm.K} in microbatches of {sampling.microbatch_size} over "
                          f"{len(graph.order)} nodes makes {actions:,} forward actions per iteration (at most "
                          f"{MAX_ACTIONS_PER_PASS:,}): raise --microbatch-size or lower K")
    cells = n_stages * 2 * (n_microbatches + len(graph.order))  # about stages × makespan
    if engine == "serial" and cells > MAX_SCHEDULE_CELLS:
        raise ConfigError(f"{n_stages} stages × ~{2 * (n_microbatches + len(graph.order)):,} time units make a "
                          f"schedule of ~{cells:,} cells in one process (at most {MAX_SCHEDULE_CELLS:,}): use fewer "
                          "--stages, or the MPI engine (each rank builds its own stage's plan only)")
    rows = min(cfg.algorithm.K, sampling.microbatch_size)
    largest = layout.largest_entries(graph)
    if rows * largest > MAX_MESSAGE_ENTRIES:
        raise ConfigError(f"a microbatch of {rows:,} noisy copies makes arrays of {rows * largest:,} entries (at most "
                          f"{MAX_MESSAGE_ENTRIES:,}): lower --microbatch-size")
    kept = cfg.algorithm.K * sum(math.prod(graph.shape(name)) for name in (graph.root, *graph.order))
    if kept > MAX_PASS_ENTRIES:  # GPipe keeps every copy's inputs of every node until its backward, whatever b
        raise ConfigError(f"K={cfg.algorithm.K:,} noisy copies keep {kept:,} activation entries per pass (at most "
                          f"{MAX_PASS_ENTRIES:,}): lower K")


def _placement_errors(gathered: list[dict]) -> None:
    """Raises a ConfigError naming the first rank's device error, and how many ranks had one."""
    errors = [e for rank in gathered for e in rank["error"]]
    if errors:
        raise ConfigError(errors[0] + (f" (and {len(errors) - 1} more rank(s))" if len(errors) > 1 else ""))
