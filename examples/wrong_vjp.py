"""A custom op with a deliberately wrong VJP, which `python -m pprs_mpi.check` catches:

    python -m pprs_mpi.check examples/wrong_vjp.py:build      # exits 1, naming node 'abs'

`SignlessAbs` computes |x| but forgets the sign in its VJP (it returns the cotangent as if d|x|/dx = 1).
"""

import numpy as np

from pprs_mpi import Graph, Node, Op
from pprs_mpi.ops import Affine, Sum


class SignlessAbs(Op):
    """|x| elementwise, with the WRONG derivative 1 instead of sign(x)."""

    def output_shape(self, shape):
        return shape

    def forward(self, xp, x):
        return xp.abs(x)

    def vjp(self, xp, inputs, output, cotangent):
        return [cotangent]  # wrong: should be cotangent * xp.sign(inputs[0])


def build(dim: int = 4) -> Graph:
    """Σ |Aθ − b| with the faulty absolute value."""
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((6, dim)), rng.standard_normal(6)
    return Graph(dim, [Node("residual", Affine(A, -b), ("theta",)), Node("abs", SignlessAbs(), ("residual",)),
                       Node("total", Sum(), ("abs",))])
