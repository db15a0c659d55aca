"""A branching objective of one's own: θ feeds three linear branches, a custom op concatenates them.

    f(θ) = ‖ concat(A₁θ − b₁, A₂θ − b₂, A₃θ − b₃) ‖₁,   with b = Aθ* so that f* = 0 at a planted θ*

    python -m pprs_mpi.solve --problem examples/branching_dag.py:build --problem-arg width=6 --out dag.h5
    mpirun -n 3 python -m pprs_mpi.solve --problem examples/branching_dag.py:build --out dag.h5
    python -m pprs_mpi.check examples/branching_dag.py:build

Every rank calls `build`, so its random numbers come from a seeded generator.
"""

import numpy as np

from pprs_mpi import Graph, Node, Op, Problem
from pprs_mpi.ops import Affine, L1Norm


class Concat(Op):
    """Concatenates its parents' vectors along the feature axis (axis 1; axis 0 is the batch)."""

    arity = None  # any number of inputs

    def output_shape(self, *input_shapes):
        if any(len(shape) != 1 for shape in input_shapes):
            raise ValueError(f"Concat joins vectors, got shapes {input_shapes}")
        return (sum(shape[0] for shape in input_shapes),)

    def forward(self, xp, *inputs):
        return xp.concatenate(inputs, axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        ends = np.cumsum([x.shape[1] for x in inputs])
        return [cotangent[:, end - x.shape[1]:end] for x, end in zip(inputs, ends)]


def build(width: int = 4, dim: int = 5, seed: int = 0) -> Problem:
    """Three branches of `width` rows each over θ ∈ R^dim, joined by Concat, under an l1 norm."""
    rng = np.random.default_rng(seed)
    theta_star = rng.standard_normal(dim)
    branches = []
    for i in range(3):
        A = rng.standard_normal((width, dim))
        branches.append(Node(f"branch{i}", Affine(A, -A @ theta_star), ("theta",)))
    nodes = [*branches, Node("joined", Concat(), tuple(b.name for b in branches)), Node("l1", L1Norm(), ("joined",))]
    return Problem("branching_dag", Graph(dim, nodes), f_star=0.0, theta_star=theta_star)
