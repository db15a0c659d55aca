"""A placement whose stages are not contiguous in topological order, shared by tests/test_engines.py and
tests/noncontiguous_run.py: the chain a -> b -> c -> out on stages [("a", "c", "out"), ("b",)]."""

import numpy as np

from pprs_mpi.engines.stage import Sampling
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Abs, SquaredNorm

STAGES = [("a", "c", "out"), ("b",)]


def chain() -> Graph:
    return Graph(3, [Node("a", Abs(), ("theta",)), Node("b", Abs(), ("a",)), Node("c", Abs(), ("b",)),
                     Node("out", SquaredNorm(), ("c",))], root="theta")


def sampling() -> Sampling:
    return Sampling(5, gamma=0.3, seed=4, microbatch_size=2)


def point() -> np.ndarray:
    return np.array([0.4, -0.3, 0.2])
