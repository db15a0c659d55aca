"""A heavy MLP (Affine + ReLU layers, an L1 loss) whose stages are worth pipelining, for tests/test_layout.py."""

import numpy as np

from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Affine, L1Norm, ReLU
from pprs_mpi.problems import Problem


def mlp_graph(width: int, depth: int) -> Graph:
    rng = np.random.default_rng(0)
    nodes, parent = [], "theta"
    for i in range(depth):
        nodes += [Node(f"a{i}", Affine(rng.standard_normal((width, width)) / np.sqrt(width)), (parent,)),
                  Node(f"r{i}", ReLU(), (f"a{i}",))]
        parent = f"r{i}"
    return Graph(width, [*nodes, Node("loss", L1Norm(), (parent,))])


def mlp(width: int = 512, depth: int = 4) -> Problem:
    return Problem("mlp", mlp_graph(width, depth), np.full(width, 0.1))


def cheap_then_dense_graph(width: int = 64, cheap: int = 6) -> Graph:
    """`cheap` ReLUs (no multiply-adds: an action's overhead each), then two dense layers and an L1 loss: the
    declared costs (1.0 for each node) balance nodes by count, the planner by time."""
    rng = np.random.default_rng(1)
    nodes = [Node(f"r{i}", ReLU(), (f"r{i - 1}" if i else "theta",)) for i in range(cheap)]
    parent = nodes[-1].name
    for i in range(2):
        nodes.append(Node(f"a{i}", Affine(rng.standard_normal((width, width)) / np.sqrt(width)), (parent,)))
        parent = f"a{i}"
    return Graph(width, [*nodes, Node("loss", L1Norm(), (parent,))])


def cheap_then_dense() -> Problem:
    return Problem("cheap_then_dense", cheap_then_dense_graph(), np.full(64, 0.1))
