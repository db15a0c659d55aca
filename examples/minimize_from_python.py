"""The branching objective solved from Python with `pprs_mpi.minimize`, serially or on every MPI rank.

    python examples/minimize_from_python.py dag.h5
    mpirun -n 2 python examples/minimize_from_python.py dag.h5

Every rank calls `minimize` with the same arguments; rank 0 gets the result, the others None.
"""

import sys
from pathlib import Path

import pprs_mpi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from branching_dag import build  # noqa: E402  (the example next to this file)

result = pprs_mpi.minimize(build(width=4), K=8, gamma=0.01, lr=0.02, mu=0.9, iters=60, seed=1,
                           out=sys.argv[1] if len(sys.argv) > 1 else "dag.h5", overwrite=True, quiet=True)
if result is not None:  # rank 0
    print(f"{result.status}: f(y_T) = {result.f_final:.6g} after {int(result.iterations[-1])} iterations; "
          f"trace {result.trace}")
