"""pprs_mpi: Pipeline Parallel Random Smoothing across MPI ranks and GPUs.

The public API: `minimize` runs a solve from Python (serially, or under mpirun on every rank),
`check_gradients` checks a graph's or an op's VJPs against finite differences, and `Graph`, `Node`,
`Op`, `Problem` build objectives (the node library is `pprs_mpi.ops`; `from_torch` makes one of a
PyTorch model; `builder` marks a function that a problem reference may name). Imported on first use, so
that `python -m pprs_mpi.solve --help` stays fast.
"""

import importlib
import os

# pprs_mpi computes in float64: JAX's float64 mode on before a builder makes its arrays (JAX reads this when it
# is imported; a JAX imported earlier is switched by the first JaxOp, see pprs_mpi.ops.jax_op)
os.environ.setdefault("JAX_ENABLE_X64", "1")

__version__ = "0.1.0"

_PUBLIC = {"minimize": "pprs_mpi.api", "Result": "pprs_mpi.api", "RunFailed": "pprs_mpi.api",
           "ConfigError": "pprs_mpi.config", "check_gradients": "pprs_mpi.check", "Graph": "pprs_mpi.graph",
           "GraphError": "pprs_mpi.graph", "Node": "pprs_mpi.graph", "Op": "pprs_mpi.ops.base",
           "Problem": "pprs_mpi.problems", "builder": "pprs_mpi.problems",
           "from_torch": "pprs_mpi.torch_graph"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pprs_mpi' has no attribute {name!r}")
