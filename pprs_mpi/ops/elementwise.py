"""Entry-wise ops and linear mixing of same-shape inputs: the output has the input's shape."""

from __future__ import annotations

from typing import Sequence

from pprs_mpi.ops.base import Op


class _SameShape(Op):
    """An op whose inputs all share one per-sample shape, which is also the output shape."""

    def output_shape(self, *shapes):
        first = tuple(shapes[0])
        for shape in shapes[1:]:
            if tuple(shape) != first:
                raise ValueError(f"inputs must share one shape, got {[tuple(s) for s in shapes]}")
        return first


class ReLU(_SameShape):
    """max(0, x) entry-wise. Subgradient at 0: ReLU'(0) = 0."""

    def forward(self, xp, x):
        return xp.maximum(x, 0)

    def vjp(self, xp, inputs, output, cotangent):
        return (cotangent * (inputs[0] > 0),)


class Abs(_SameShape):
    """|x| entry-wise. Subgradient at 0: sign(0) = 0."""

    def forward(self, xp, x):
        return xp.abs(x)

    def vjp(self, xp, inputs, output, cotangent):
        return (cotangent * xp.sign(inputs[0]),)


class Square(_SameShape):
    """x² entry-wise (smooth)."""

    def forward(self, xp, x):
        return x * x

    def vjp(self, xp, inputs, output, cotangent):
        return (2 * inputs[0] * cotangent,)


class Scale(_SameShape):
    """c · x for a constant scalar c."""

    def __init__(self, c: float):
        self.c = float(c)

    def forward(self, xp, x):
        return self.c * x

    def vjp(self, xp, inputs, output, cotangent):
        return (self.c * cotangent,)

    def describe(self):
        return f"Scale({self.c:g})"


class Add(_SameShape):
    """Sum of any number (>= 1) of same-shape inputs.

    The returned cotangents are the incoming one itself, shared by every input: treat them as read-only.
    """

    @property
    def arity(self):
        return None

    def forward(self, xp, *inputs):
        out = inputs[0].copy()
        for x in inputs[1:]:
            out += x
        return out

    def vjp(self, xp, inputs, output, cotangent):
        return (cotangent,) * len(inputs)


class LinearCombination(_SameShape):
    """Σ_k w_k x_k over len(weights) same-shape inputs, for constant scalar weights."""

    def __init__(self, weights: Sequence[float]):
        self.weights = tuple(float(w) for w in weights)
        if not self.weights:
            raise ValueError("LinearCombination needs at least one weight")

    @property
    def arity(self):
        return len(self.weights)

    def forward(self, xp, *inputs):
        out = self.weights[0] * inputs[0]
        for w, x in zip(self.weights[1:], inputs[1:]):
            out += w * x
        return out

    def vjp(self, xp, inputs, output, cotangent):
        return tuple(w * cotangent for w in self.weights)

    def describe(self):
        return f"LinearCombination({', '.join(f'{w:g}' for w in self.weights)})"
