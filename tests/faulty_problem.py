"""A user's objective for tests/test_message_checks.py: a small chain whose middle op misbehaves as the
builder argument `fault` says, solved with `--problem tests/faulty_problem.py:faulty --problem-arg fault=...`.

    forward-long  the op's forward returns one column more than its declared shape
    vjp-short     its VJP returns a cotangent one column short
    forward-dtype its forward returns float64 whatever the input's dtype (wrong under --dtype float32)
    vjp-dtype     its VJP returns a float64 cotangent whatever the input's dtype
    nan-forward   its forward takes the square root of its (partly negative) output: NaN
    nan-vjp       its VJP returns NaN
    none          a well-behaved op (the control run)
"""

import numpy as np

from pprs_mpi.graph import Graph
from pprs_mpi.ops import Abs, L1Norm, Op, Scale
from pprs_mpi.problems import Problem

DIM = 4


class Mix(Op):
    """y = x + mean(x) (every output depends on every input), with an injectable shape fault."""

    def __init__(self, fault: str):
        self.fault = fault

    def output_shape(self, shape):
        return shape

    def forward(self, xp, x):
        y = x + x.mean(axis=1, keepdims=True)
        if self.fault == "nan-forward":
            return xp.sqrt(y)
        if self.fault == "forward-dtype":
            return y.astype(xp.float64)
        return xp.concatenate([y, y[:, :1]], axis=1) if self.fault == "forward-long" else y

    def vjp(self, xp, inputs, output, cotangent):
        grad = cotangent + cotangent.mean(axis=1, keepdims=True)
        if self.fault == "nan-vjp":
            return (grad * xp.nan,)
        if self.fault == "vjp-dtype":
            return (grad.astype(xp.float64),)
        return (grad[:, :-1] if self.fault == "vjp-short" else grad,)


def faulty(fault: str = "none") -> Problem:
    graph = Graph.chain(DIM, [Scale(2.0), Mix(fault), Abs(), L1Norm()], names=["scale", "mix", "abs", "l1"])
    return Problem("faulty", graph, np.linspace(-1.0, 1.0, DIM))
