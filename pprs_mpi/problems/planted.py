"""Convex non-smooth problems with a planted solution, so that f* = 0 and θ* are known exactly.

The linear map A is factored into `depth − 1` layers with orthonormal columns (so A has them
too), which gives the graph a real depth Δ = `depth` while keeping the problem well conditioned
and its Lipschitz constant known: ‖Aθ − b‖₁ is √m-Lipschitz, ‖Aθ − b‖∞ is 1-Lipschitz.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi.graph import Graph, GraphError, Node
from pprs_mpi.ops import Add, Affine, L1Norm, LInfDistance
from pprs_mpi.problems import Parameter, Problem, ProblemSpec

MAX_LAYER_ENTRIES = 200_000_000  # 1.6 GB of float64 layer matrices
MAX_DEPTH = 10_000

COMMON = {
    "depth": Parameter(int, 8, "graph depth Δ: depth−1 linear layers and a norm"),
    "dim": Parameter(int, 16, "dimension d of θ"),
    "rows": Parameter(int, 32, "rows m of the factored linear map A (m ≥ d)"),
    "radius": Parameter(float, 1.0, "R = ‖θ*‖, the distance from θ_0 = 0 to the planted optimum"),
    "problem_seed": Parameter(int, 0, "seed of the random layers and of θ*"),
}


def _layers(rng: np.random.Generator, dim: int, rows: int, count: int) -> list[np.ndarray]:
    """`count` matrices whose product (last @ ... @ first) is rows × dim with orthonormal columns."""
    first = np.linalg.qr(rng.standard_normal((rows, dim)))[0]
    rest = [np.linalg.qr(rng.standard_normal((rows, rows)))[0] for _ in range(count - 1)]
    return [first, *rest]


def _planted(rng: np.random.Generator, dim: int, radius: float) -> np.ndarray:
    direction = rng.standard_normal(dim)
    return radius * direction / np.linalg.norm(direction)


def _check(depth: int, dim: int, rows: int, radius: float, min_depth: int) -> None:
    if not min_depth <= depth <= MAX_DEPTH:
        raise GraphError(f"depth must be between {min_depth} and {MAX_DEPTH}, got {depth}")
    if dim < 1 or rows < dim:
        raise GraphError(f"need 1 <= dim <= rows, got dim={dim}, rows={rows}")
    if not radius > 0:
        raise GraphError(f"radius must be > 0, got {radius}")
    if depth * rows * max(rows, dim) > MAX_LAYER_ENTRIES:
        raise GraphError(f"depth={depth}, dim={dim}, rows={rows} need {depth * rows * max(rows, dim):,} matrix "
                         f"entries (at most {MAX_LAYER_ENTRIES:,})")


def _linear_chain(prefix: str, parent: str, matrices: list[np.ndarray], theta_star: np.ndarray) -> list[Node]:
    """Affine layers applying the matrices in turn, the last shifted so that θ* maps to zero."""
    image = theta_star
    for W in matrices:
        image = W @ image
    nodes = []
    for i, W in enumerate(matrices):
        bias = -image if i == len(matrices) - 1 else None
        nodes.append(Node(f"{prefix}{i}", Affine(W, bias), (parent,)))
        parent = nodes[-1].name
    return nodes


def lad(depth: int, dim: int, rows: int, radius: float, problem_seed: int) -> Problem:
    """Least absolute deviations f(θ) = ‖Aθ − b‖₁ with b = Aθ*, so f* = 0."""
    _check(depth, dim, rows, radius, min_depth=2)
    rng = np.random.default_rng(problem_seed)
    theta_star = _planted(rng, dim, radius)
    layers = _linear_chain("layer", "theta", _layers(rng, dim, rows, depth - 1), theta_star)
    graph = Graph(dim, [*layers, Node("l1", L1Norm(), (layers[-1].name,))])
    return Problem("lad", graph, np.zeros(dim), 0.0, theta_star, lipschitz=float(np.sqrt(rows)), radius=radius)


def linf(depth: int, dim: int, rows: int, radius: float, problem_seed: int) -> Problem:
    """Minimax residual f(θ) = ‖Aθ − b‖∞ with b = Aθ*, so f* = 0."""
    _check(depth, dim, rows, radius, min_depth=2)
    rng = np.random.default_rng(problem_seed)
    theta_star = _planted(rng, dim, radius)
    layers = _linear_chain("layer", "theta", _layers(rng, dim, rows, depth - 1), theta_star)
    graph = Graph(dim, [*layers, Node("linf", LInfDistance(np.zeros(rows)), (layers[-1].name,))])
    return Problem("linf", graph, np.zeros(dim), 0.0, theta_star, lipschitz=1.0, radius=radius)


def branch(depth: int, dim: int, rows: int, radius: float, problem_seed: int) -> Problem:
    """f(θ) = ‖Aθ − a‖₁ + ‖Bθ − b‖∞ as a DAG: θ feeds two branches that an Add node joins, f* = 0.

    The root has two children and the leaf has two parents; the first branch has depth − 2 layers.
    """
    _check(depth, dim, rows, radius, min_depth=3)
    rng = np.random.default_rng(problem_seed)
    theta_star = _planted(rng, dim, radius)
    left = _linear_chain("left", "theta", _layers(rng, dim, rows, depth - 2), theta_star)
    right = _linear_chain("right", "theta", _layers(rng, dim, rows, 1), theta_star)
    nodes = [*left, *right,
             Node("l1", L1Norm(), (left[-1].name,)),
             Node("linf", LInfDistance(np.zeros(rows)), (right[-1].name,)),
             Node("total", Add(), ("l1", "linf"))]
    return Problem("branch", Graph(dim, nodes), np.zeros(dim), 0.0, theta_star,
                   lipschitz=float(np.sqrt(rows)) + 1.0, radius=radius)


PROBLEMS = {
    "lad": ProblemSpec(lad, COMMON, "least absolute deviations ‖Aθ − b‖₁ (chain, f* = 0)"),
    "linf": ProblemSpec(linf, COMMON, "minimax residual ‖Aθ − b‖∞ (chain, f* = 0)"),
    "branch": ProblemSpec(branch, COMMON, "‖Aθ − a‖₁ + ‖Bθ − b‖∞ (DAG: two branches joined, f* = 0)"),
}
