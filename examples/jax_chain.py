"""A JAX function per node: a two-layer tanh network whose input θ is optimised, VJPs by `jax.vjp`.

    python -m pprs_mpi.solve --problem examples/jax_chain.py:build --out jax.h5
    mpirun -n 2 python -m pprs_mpi.solve --problem examples/jax_chain.py:build --out jax.h5
"""

import jax.numpy as jnp
import numpy as np

from pprs_mpi import Graph, Node, Problem
from pprs_mpi.ops import JaxOp


def build(width: int = 8, hidden: int = 16, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)  # every rank builds the graph: seed it
    W1, W2 = rng.standard_normal((hidden, width)) / np.sqrt(width), rng.standard_normal((3, hidden)) / 4
    target = np.array([0.5, -0.5, 0.25])

    def layer(W):  # the weights follow the input's dtype (--dtype float32)
        return lambda x: jnp.tanh(x @ W.T.astype(x.dtype))

    graph = Graph(width, [
        Node("hidden", JaxOp(layer(W1), name="tanh_layer"), ("theta",)),
        Node("out", JaxOp(lambda h: h @ W2.T.astype(h.dtype), name="linear"), ("hidden",)),
        Node("loss", JaxOp(lambda z: jnp.abs(z - target.astype(z.dtype)).sum(axis=1), name="l1"), ("out",)),
    ])
    return Problem("jax_chain", graph, x0=np.zeros(width))
