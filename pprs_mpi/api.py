"""The Python API: `minimize` runs one solve, as the command line does; `engine_for` builds an engine for
a placement made by hand (tests, benchmarks).

    import pprs_mpi
    result = pprs_mpi.minimize(graph_or_problem, K=16, gamma=0.01, lr=0.01, iters=500, out="run.h5")

Under `mpirun`, every rank calls `minimize` with the same arguments; rank 0 gets the `Result`, the
others None. Bad input raises `ConfigError` (one line, the same the command line prints) on every
rank, before any file is touched; a failure during the run marks the trace `failed` and raises
`RunFailed` with the same line on every rank (from the command line, under MPI, it ends the whole job).
The run itself is assembled and executed by `pprs_mpi.run`.
"""

from __future__ import annotations

from pprs_mpi import config
from pprs_mpi.config import ConfigError
from pprs_mpi.engines.factory import engine_for
from pprs_mpi.graph import Graph
from pprs_mpi.launch import default_comm
from pprs_mpi.problems import Problem
from pprs_mpi.run.execute import run
from pprs_mpi.run.result import Result, RunFailed

__all__ = ["minimize", "engine_for", "Result", "RunFailed", "ConfigError"]


def minimize(problem: Problem | Graph | str, comm=None, **options) -> Result | None:
    """Runs one solve of `problem` (a Problem, a Graph, or a reference such as 'lad' or 'file.py:build')
    with the command line's options by name (K, gamma, lr, mu, iters, algo, schedule, out, seed, ...;
    builder arguments as problem_args={...}). `comm` defaults to MPI.COMM_WORLD under a launcher or where this
    process already uses MPI, else the process runs alone without initializing MPI (`launch.default_comm`)."""
    comm = default_comm() if comm is None else comm
    if isinstance(problem, (Problem, Graph)):
        built = problem if isinstance(problem, Problem) else Problem("graph", problem)
        options = {**options, "problem": config.OBJECT_PREFIX + built.name}
        return run(lambda: config.resolve(options, problem_object=True), comm, built, recover=True)
    if not isinstance(problem, str):
        raise ConfigError(f"problem must be a Problem, a Graph or a reference string, got {type(problem).__name__}")
    return run(lambda: config.resolve({**options, "problem": problem}), comm, recover=True)
