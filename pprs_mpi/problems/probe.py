"""A convex finite sum (paper §5, eq. 15): a linear probe on frozen features, multi-class hinge + λ₁‖θ‖₁.

The shipped digits CNN up to its hidden ReLU is a fixed feature chain; the features of m training images (the
shots, chosen by `problem_seed` as in `fewshot`) are scaled to unit norm and become constants φ_i. θ holds a
new last layer [W (C × n) row-major, b (C)], started at θ_0 = 0, and

    f(θ) = (1/m) Σ_i [ Σ_{j ≠ y_i} max(0, 1 − s_{i,y_i} + s_{i,j}) + λ₁‖θ‖₁ ],   s_i = W φ_i + b,

one term per example, the penalty shared by every term (eq. 15's f_G(θ, x_i)). Convex: the scores s_i are
linear in θ (the features are constants, nothing after θ is non-linear but the hinge), a max of affine functions
is convex, so is a norm, and sums keep convexity. Non-smooth at the optimum, and not trivially solved: without the
penalty m < n examples are separable and the hinge reaches 0; with it, f* > 0 trades margin against weight,
θ* sits on kinks of both terms, and f* is computed exactly as a linear programme (scipy's HiGHS).

Known: f* and θ* (the LP), R = ‖θ_0 − θ*‖ = ‖θ*‖, and an upper bound on L: the subgradient of one hinge term
set is (a − e_y·|a|) ⊗ (φ_i, 1) with a ∈ {0, 1}^C off y, of norm ≤ √(C(C − 1))·√2 (‖φ_i‖ = 1), and the
penalty's is at most λ₁√d, so L ≤ √(2C(C − 1)) + λ₁√d.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi import classifier
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Add, L1Norm, MultiMarginMean, ParamAffine, Scale
from pprs_mpi.problems import Parameter, Problem, ProblemSpec
from pprs_mpi.problems.fewshot import PARAMETERS as FEWSHOT, choose_shots
from pprs_mpi.problems.pretrained import PRETRAINED, images_for, pretrained

PARAMETERS = {
    "shots": FEWSHOT["shots"],
    "problem_seed": FEWSHOT["problem_seed"],
    "penalty": Parameter(float, 0.1, "probe: weight λ₁ of the ℓ1 penalty on the new last layer"),
    **PRETRAINED,
}


def probe(shots: int, problem_seed: int, penalty: float, network: str, dataset: str, data_dir: str) -> Problem:
    if not 0 < penalty < np.inf:
        raise ValueError(f"penalty must be finite and > 0 (without it the shots are separable and f* = 0), "
                         f"got {penalty}")
    net = pretrained(network, dataset)
    if net.layers[-1].kind != "affine":
        raise ValueError(f"probe replaces a network's last affine layer; this one ends in {net.layers[-1].kind}")
    split = images_for(net, dataset, data_dir)
    chosen = choose_shots(split.train_labels, shots, net.classes, np.random.default_rng(problem_seed))
    features = classifier.apply(net.ops()[:-1], split.train_images[chosen]).reshape(len(chosen), -1)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-300)
    labels = split.train_labels[chosen]
    graph = probe_graph(features, labels, net.classes, penalty)
    f_star, theta_star = optimum(features, labels, net.classes, penalty)
    lipschitz = float(np.sqrt(2 * net.classes * (net.classes - 1)) + penalty * np.sqrt(graph.dim))
    return Problem("probe", graph, np.zeros(graph.dim), f_star, theta_star, lipschitz=lipschitz,
                   radius=float(np.linalg.norm(theta_star)))


def probe_graph(features: np.ndarray, labels: np.ndarray, classes: int, penalty: float) -> Graph:
    """θ → ParamAffine(features) → MultiMarginMean(labels), plus θ → L1Norm → Scale(λ₁), summed."""
    dim = classes * (features.shape[1] + 1)
    return Graph(dim, [
        Node("scores", ParamAffine(features, classes), ("theta",)),
        Node("hinge", MultiMarginMean(labels), ("scores",)),
        Node("l1", L1Norm(), ("theta",)),
        Node("penalty", Scale(penalty), ("l1",)),
        Node("loss", Add(), ("hinge", "penalty")),
    ])


def optimum(features: np.ndarray, labels: np.ndarray, classes: int, penalty: float) -> tuple[float, np.ndarray]:
    """(f*, θ*) by the linear programme min (1/m) Σ ξ_ij + λ₁ Σ (u + v) over θ = u − v, u, v, ξ ≥ 0, with
    ξ_ij ≥ 1 − (w_y − w_j)·(φ_i, 1) for every example i and class j ≠ y_i."""
    try:
        from scipy.optimize import linprog
        from scipy.sparse import csr_matrix
    except ImportError:
        raise ValueError("probe computes f* with scipy: pip install '.[paper]'") from None
    m, n = features.shape
    width, dim = n + 1, classes * (n + 1)
    augmented = np.hstack([features, np.ones((m, 1))])
    rows, cols, vals, r = [], [], [], 0
    for i in range(m):
        for j in (j for j in range(classes) if j != labels[i]):
            for block, sign in ((labels[i], 1.0), (j, -1.0)):  # (w_y − w_j)·φ̃_i ≥ 1 − ξ_ij, on θ = u − v
                span = np.append(np.arange(block * n, (block + 1) * n), classes * n + block)  # W row, then b
                rows += [r] * (2 * width)
                cols += [*span, *(span + dim)]
                vals += [*(-sign * augmented[i]), *(sign * augmented[i])]
            slack = 2 * dim + r
            rows.append(r)
            cols.append(slack)
            vals.append(-1.0)
            r += 1
    terms = m * (classes - 1)
    A = csr_matrix((vals, (rows, cols)), shape=(terms, 2 * dim + terms))
    cost = np.concatenate([np.full(2 * dim, penalty), np.full(terms, 1.0 / m)])
    found = linprog(cost, A_ub=A, b_ub=-np.ones(terms), bounds=(0, None), method="highs")
    if found.status != 0:
        raise ValueError(f"probe: the linear programme for f* failed ({found.message})")
    return float(found.fun), found.x[:dim] - found.x[dim:2 * dim]


PROBLEMS = {
    "probe": ProblemSpec(probe, PARAMETERS, "linear probe on frozen CNN features: multi-class hinge over m shots "
                                            "+ λ₁‖θ‖₁ (convex finite sum, paper §5; f* by LP)"),
}
