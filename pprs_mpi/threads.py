"""The intra-op thread count of every library that computes a run's numbers (`--threads N`, default 1).

A matrix product or a sum split over more threads adds its terms in another order: NumPy's OpenBLAS and
PyTorch give other last bits with 2 threads than with 1 (seen: 2.3e-15 between a serial run and `mpirun`,
whose ranks each see one core). Every rank of every engine therefore sets the same count before it builds
the problem: PyTorch's (`torch.set_num_threads`, or OMP_NUM_THREADS for a torch the builder imports later)
and the BLAS libraries loaded in the process (threadpoolctl). The setting stays for the rest of the process.
JAX's XLA thread pool is fixed when JAX starts and is not covered (see the README).
"""

from __future__ import annotations

import os
import sys

#: The variables the OpenMP, OpenBLAS and MKL runtimes read when they are loaded.
VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def use(count: int) -> None:
    """Every library computing the run's numbers uses `count` intra-op threads from now on."""
    for name in VARIABLES:  # libraries loaded later (torch imported by the builder) read these at load
        os.environ[name] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=count)
