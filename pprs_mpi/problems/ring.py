"""A planted non-convex, non-smooth objective whose Clarke r-subdifferential is known in closed form (Theorem 4).

    f(θ) = | ‖Qθ − c‖ − ρ |,   Q orthogonal (a chain of depth − 2 random rotations), ‖c‖ = ρ + D
    (ρ = --ring-radius, D = --ring-gap)

f is 1-Lipschitz, f* = 0 on the sphere ‖Qθ − c‖ = ρ (a non-convex set of minimisers), f(0) − f* = D. Its gradient
at z = Qθ − c ≠ 0 off the sphere is sign(‖z‖ − ρ)·Qᵀz/‖z‖, a unit vector, so the Clarke r-subdifferential at θ
(the convex hull of the gradients within distance r) has, as its smallest norm (`clarke_min_norm`):

  0                  when the ball crosses the sphere (|‖z‖ − ρ| ≤ r) or holds the centre (‖z‖ ≤ r);
  √(1 − r²/‖z‖²)     otherwise: the gradients are the unit directions of a cap of half-angle asin(r/‖z‖),
                     whose convex hull comes no closer to 0 than the cap's base.

So Theorem 4's T_{r,ε}, the first time a point is reached whose r-subdifferential holds a vector of norm ≤ ε, can
be measured exactly along a run.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi.graph import Graph, GraphError, Node
from pprs_mpi.ops import Affine
from pprs_mpi.ops.base import Op
from pprs_mpi.problems import Parameter, Problem, ProblemSpec
from pprs_mpi.problems.planted import COMMON


class RingDistance(Op):
    """| ‖x‖ − ρ | of a vector sample; subgradient sign(‖x‖ − ρ)·x/‖x‖ (0 at x = 0 and on the sphere)."""

    def __init__(self, radius: float):
        self.radius = float(radius)

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"RingDistance needs a vector sample, got shape {tuple(shape)}")
        return ()

    def forward(self, xp, x):
        return xp.abs(xp.sqrt((x * x).sum(axis=1)) - self.radius)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        norm = xp.sqrt((x * x).sum(axis=1))
        scale = xp.sign(norm - self.radius) / xp.where(norm > 0, norm, 1.0) * cotangent
        return (x * scale[:, None],)


PARAMETERS = {**{name: COMMON[name] for name in ("depth", "dim", "problem_seed")},
              "ring_radius": Parameter(float, 1.0, "ring: ρ, the radius of the sphere of minimisers"),
              "ring_gap": Parameter(float, 1.0, "ring: D = f(0) − f*, the start's distance to the sphere")}


def ring(depth: int, dim: int, problem_seed: int, ring_radius: float, ring_gap: float) -> Problem:
    if not 3 <= depth <= 10_000 or dim < 1:
        raise GraphError(f"ring needs 3 <= depth <= 10000 and dim >= 1, got depth={depth}, dim={dim}")
    if not (ring_radius > 0 and ring_gap > 0):
        raise GraphError(f"ring_radius and ring_gap must be > 0, got {ring_radius} and {ring_gap}")
    rng = np.random.default_rng(problem_seed)
    layers = [np.linalg.qr(rng.standard_normal((dim, dim)))[0] for _ in range(depth - 2)]
    direction = rng.standard_normal(dim)
    centre = (ring_radius + ring_gap) * direction / np.linalg.norm(direction)
    nodes, parent = [], "theta"
    for i, Q in enumerate(layers):
        nodes.append(Node(f"rotate{i}", Affine(Q, -centre if i == len(layers) - 1 else None), (parent,)))
        parent = nodes[-1].name
    nodes.append(Node("ring", RingDistance(ring_radius), (parent,)))
    Q = np.linalg.multi_dot([*reversed(layers), np.eye(dim)]) if len(layers) > 1 else layers[0]
    star = Q.T @ (centre * (1 - ring_radius / np.linalg.norm(centre)))  # the minimiser nearest to θ0 = 0
    return Problem("ring", Graph(dim, nodes), np.zeros(dim), 0.0, star, lipschitz=1.0, radius=ring_gap)


def clarke_min_norm(z_norm, ring_radius: float, r: float) -> np.ndarray:
    """The smallest norm in the Clarke r-subdifferential at a point with ‖Qθ − c‖ = z_norm (see the docstring)."""
    z = np.asarray(z_norm, dtype=float)
    crosses = (np.abs(z - ring_radius) <= r) | (z <= r)
    return np.where(crosses, 0.0, np.sqrt(np.clip(1 - r * r / np.maximum(z, r) ** 2, 0.0, 1.0)))


PROBLEMS = {"ring": ProblemSpec(ring, PARAMETERS, "| ‖Qθ − c‖ − ρ |: planted non-convex non-smooth, its Clarke "
                                "r-subdifferential in closed form (f* = 0, L = 1, D = gap)")}
