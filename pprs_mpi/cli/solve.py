"""`python -m pprs_mpi.solve`: argv → typed configuration → `run` → exit code.

    python -m pprs_mpi.solve --problem lad --depth 8 --algo pprs -K 16 --out run.h5
    python -m pprs_mpi.solve --problem my_graph.py:build --problem-arg width=64 --out run.h5
    mpirun -n 8 python -m pprs_mpi.solve --problem lad --depth 8 --out run.h5

Bad input is reported in one line with exit code 2 (by rank 0 only); a failure during the run
ends every rank, is reported once, marks the trace `failed` and exits non-zero.
"""

from __future__ import annotations

import os
import stat
import sys

from pprs_mpi import config
from pprs_mpi.config import ConfigError
from pprs_mpi.launch import default_comm, launched_rank
from pprs_mpi.run.assemble import PREFIX, SINGLETONS
from pprs_mpi.run.execute import run
from pprs_mpi.run.result import RunFailed

BAD_INPUT = 2


def main(argv: list[str] | None = None, comm=None) -> int:
    """Runs one solve and returns its exit code. `comm` defaults to MPI.COMM_WORLD under a launcher (else the
    process runs alone, see `launch.default_comm`); pass MPI.COMM_SELF to run a serial solve inside one rank of a
    larger job."""
    comm = default_comm() if comm is None else comm
    try:
        result = run(lambda: config.load(argv), comm)
    except ConfigError as err:
        if comm.rank == 0 and not (SINGLETONS in str(err) and launched_rank() > 0):  # once, not by each singleton
            print(f"{PREFIX}error: {err}", file=sys.stderr, flush=True)
        return BAD_INPUT
    except RunFailed as err:
        print(PREFIX + str(err), file=sys.stderr, flush=True)
        return 1
    if result is None:  # a rank other than 0
        return 0
    if result.message:
        if not (result.status == "interrupted" and comm.size > 1 and _to_launcher(PREFIX + result.message)):
            print(PREFIX + result.message, file=sys.stderr, flush=True)
    return result.exit_code


LAUNCHERS = ("prterun", "mpirun", "mpiexec", "orterun")


def _to_launcher(line: str) -> bool:
    """Writes `line` to the stderr of the `mpirun` that started this process on this host, if it did.

    On SIGTERM or Ctrl-C, Open MPI's mpirun stops forwarding its ranks' output at once (it forwards the
    signal and kills the ranks shortly after), so rank 0's interrupted line, printed once its checkpoint
    is written, would be lost; written straight to mpirun's own stderr it reaches the user. Returns whether
    that is sure: False when the parent is no launcher here (Slurm's srun, a remote daemon), and when its
    stderr is a regular file it writes at its own offset (`2> job.log`, a batch log), where its next lines
    (the notice that rank 0 exited 3) overwrite a line added at the end: the caller then prints the line
    through the launcher's forwarding too, which SIGUSR1 leaves running and SIGTERM stops, so one copy stays."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/comm") as f:
            if f.read().strip() not in LAUNCHERS:
                return False
        overwritable = _overwritable(f"/proc/{parent}/fd/2", f"/proc/{parent}/fdinfo/2")
        with open(f"/proc/{parent}/fd/2", "a") as f:  # appended: a job's log file is not truncated
            f.write(line + "\n")
    except OSError:
        return False
    return not overwritable


def _overwritable(path: str, info: str) -> bool:
    """Whether the file behind `path` is a regular file its owner writes without O_APPEND (flags in `info`,
    /proc's fdinfo), so that a line added at its end by another process is overwritten by the owner's next."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return False
    with open(info) as f:
        flags = next((line.split()[1] for line in f if line.startswith("flags:")), "0")
    return not int(flags, 8) & os.O_APPEND
