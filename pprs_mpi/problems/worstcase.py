"""The worst-case functions behind Theorems 1 and 2 (Nesterov's chains), split across a graph of depth Δ.

  - `chain_smooth` (Theorem 1, smooth convex, β = 1): f(θ) = (1/8)‖Bθ − e₁‖², B the (k+1) × k difference matrix
    (rows θ₁, θ₂ − θ₁, ..., θ_k − θ_{k−1}, −θ_k), so that f + const is Nesterov's (β/4)(½θᵀA_kθ − θ₁);
    θ*_i = 1 − i/(k+1), f* = 1/(8(k+1)).
  - `chain_nonsmooth` (Theorem 2, non-smooth convex, L = 1 on the ball ‖θ‖ ≤ R): f(θ) = γ·max_i θ_i + (μ/2)‖θ‖²
    with γ = √k/(1+√k), μ = 1/((1+√k)R); θ*_i = −R/√k, f* = −R/(2(1+√k)).

Both have k = dim coordinates. A method whose iterate after t gradients lies in span{e₁, ..., e_t} (GD, AGD and
GPipe from θ₀ = 0: each gradient adds at most the next coordinate; MaxAffine's subgradient at a tie is the lowest
index) has, for t < k,

  chain_smooth:     f(θ_t) − f* ≥ (1/8)(1/(t+1) − 1/(k+1))   (the minimum over the span, exactly)
  chain_nonsmooth:  f(θ_t) − f* ≥ R/(2(1+√k))                (max_i θ_i ≥ 0 while θ_k = 0)

(`span_bound`). The split: θ passes through depth − 3 random rotations Q (orthogonal, so the function is the same
whatever the depth) before the last nodes undo them; a gradient therefore needs a forward and a backward pass
through all Δ nodes, 2Δ time units, and each new coordinate one gradient. PPRS's noisy inputs θ + γX leave the span
at once: the span bound does not constrain it (it is outside the paper's model of spans of passes).
"""

from __future__ import annotations

import math

import numpy as np

from pprs_mpi.graph import Graph, GraphError, Node
from pprs_mpi.ops import Add, Affine, MaxAffine, Scale, SquaredNorm
from pprs_mpi.problems import Problem, ProblemSpec
from pprs_mpi.problems.planted import COMMON

# The planted problems' flags, shared (--depth, --dim, --radius, --problem-seed keep one meaning and one help text):
# here depth − 3 rotations and the function's last nodes, k = dim, R (chain_nonsmooth), the rotations' seed.
PARAMETERS = {name: COMMON[name] for name in ("depth", "dim", "radius", "problem_seed")}


def _rotations(depth: int, dim: int, seed: int) -> tuple[list[Node], np.ndarray]:
    """depth − 3 orthogonal layers from θ and their product M (identity when there are none)."""
    if not 3 <= depth <= 10_000:
        raise GraphError(f"depth must be between 3 and 10000, got {depth}")
    if dim < 1:
        raise GraphError(f"dim must be >= 1, got {dim}")
    rng, nodes, product, parent = np.random.default_rng(seed), [], np.eye(dim), "theta"
    for i in range(depth - 3):
        Q = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
        nodes.append(Node(f"rotate{i}", Affine(Q), (parent,)))
        product, parent = Q @ product, nodes[-1].name
    return nodes, product


def difference_matrix(k: int) -> np.ndarray:
    """B, (k+1) × k: rows θ₁, θ₂ − θ₁, ..., θ_k − θ_{k−1}, −θ_k, so that ‖Bθ‖² = θᵀA_kθ (A_k tridiagonal 2, −1)."""
    B = np.zeros((k + 1, k))
    B[np.arange(k), np.arange(k)] = 1.0
    B[np.arange(1, k + 1), np.arange(k)] -= 1.0
    return B


def chain_smooth(depth: int, dim: int, radius: float, problem_seed: int) -> Problem:
    """Theorem 1's smooth convex worst case (β = 1), split across `depth` nodes; `radius` is unused (R is fixed by
    the chain: R² = Σ(1 − i/(k+1))²)."""
    rotations, M = _rotations(depth, dim, problem_seed)
    parent = rotations[-1].name if rotations else "theta"
    e1 = np.zeros(dim + 1)
    e1[0] = 1.0
    nodes = [*rotations, Node("difference", Affine(difference_matrix(dim) @ M.T, -e1), (parent,)),
             Node("square", SquaredNorm(), ("difference",)), Node("scale", Scale(1 / 8), ("square",))]
    star = 1 - np.arange(1, dim + 1) / (dim + 1)
    return Problem("chain_smooth", Graph(dim, nodes), np.zeros(dim), 1 / (8 * (dim + 1)), star,
                   lipschitz=None, radius=float(np.linalg.norm(star)))


def nonsmooth_constants(dim: int, radius: float) -> tuple[float, float]:
    """(γ, μ) of chain_nonsmooth: Nesterov's choice making the subgradients' norm ≤ L = 1 on ‖θ‖ ≤ R."""
    root = math.sqrt(dim)
    return root / (1 + root), 1 / ((1 + root) * radius)


def chain_nonsmooth(depth: int, dim: int, radius: float, problem_seed: int) -> Problem:
    """Theorem 2's non-smooth convex worst case (L = 1 on the ball of radius R), split across `depth` nodes."""
    if not radius > 0:
        raise GraphError(f"radius must be > 0, got {radius}")
    rotations, M = _rotations(depth, dim, problem_seed)
    parent = rotations[-1].name if rotations else "theta"
    gamma, mu = nonsmooth_constants(dim, radius)
    nodes = [*rotations, Node("max", MaxAffine(gamma * M.T, np.zeros(dim)), (parent,)),
             Node("square", SquaredNorm(), (parent,)), Node("half_mu", Scale(mu / 2), ("square",)),
             Node("total", Add(), ("max", "half_mu"))]
    star = np.full(dim, -radius / math.sqrt(dim))
    return Problem("chain_nonsmooth", Graph(dim, nodes), np.zeros(dim), -radius / (2 * (1 + math.sqrt(dim))), star,
                   lipschitz=1.0, radius=radius)


def span_bound(problem: str, dim: int, radius: float, gradients: np.ndarray) -> np.ndarray:
    """The least f(θ_t) − f* of a span method after t = `gradients` sequential gradients (0 from t = k on)."""
    t = np.asarray(gradients, dtype=float)
    if problem == "chain_smooth":
        bound = (1 / (t + 1) - 1 / (dim + 1)) / 8
    elif problem == "chain_nonsmooth":
        bound = np.full(t.shape, radius / (2 * (1 + math.sqrt(dim))))
    else:
        raise ValueError(f"no span bound for problem {problem!r}")
    return np.where(t < dim, bound, 0.0)


PROBLEMS = {
    "chain_smooth": ProblemSpec(chain_smooth, PARAMETERS, "Theorem 1's worst case: (1/8)‖Bθ − e₁‖², Nesterov's "
                                "smooth chain split across Δ nodes (f* known)"),
    "chain_nonsmooth": ProblemSpec(chain_nonsmooth, PARAMETERS, "Theorem 2's worst case: γ max_i θ_i + (μ/2)‖θ‖², "
                                   "Nesterov's non-smooth chain split across Δ nodes (L = 1, f* known)"),
}
