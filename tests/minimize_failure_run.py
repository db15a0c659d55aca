"""A sweep in one process under mpirun (tests/test_mpi.py): a solve whose rank 2 raises at iteration 3, then
a good solve. Every rank prints what its first solve raised and whether the second completed.

    mpirun -n 3 python tests/minimize_failure_run.py OUT_DIR
"""

import sys
from pathlib import Path

from mpi4py import MPI

import pprs_mpi
from pprs_mpi.api import RunFailed

OPTIONS = dict(depth=5, dim=6, rows=8, K=4, microbatch_size=2, gamma=0.05, lr=0.02, iters=20, seed=7, quiet=True)


def main(out: Path) -> None:
    rank = MPI.COMM_WORLD.rank
    try:
        pprs_mpi.minimize("lad", out=str(out / "bad.h5"), inject_fault="2:3:raise", **OPTIONS)
        print(f"rank {rank} first: no error", flush=True)
    except RunFailed as err:
        print(f"rank {rank} first: RunFailed: {err}", flush=True)
    result = pprs_mpi.minimize("lad", out=str(out / "good.h5"), **OPTIONS)
    print(f"rank {rank} second: {None if result is None else result.status}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
