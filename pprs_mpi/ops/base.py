"""The contract every node type follows: pure forward and vector-Jacobian product on batched arrays."""

from __future__ import annotations

import numpy as np


class Op:
    """A node's function f_i, applied to a leading batch axis of noisy copies.

    `forward(xp, *inputs)` maps arrays shaped (B, *input_shape_j) to one array (B, *output_shape).
    `vjp(xp, inputs, output, cotangent)` returns one cotangent per input, each shaped like that
    input, for the cotangent of the output. `xp` is the array module (numpy or cupy), so one code
    path serves both. Constants (weights, anchors, labels) live in the op as NumPy arrays and are
    moved to `xp` once through `const`.
    """

    #: Relative cost of one forward or backward on one microbatch, used to balance stages.
    cost: float = 1.0

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for per-sample input shapes; raises ValueError if they do not fit."""
        raise NotImplementedError

    def forward(self, xp, *inputs):
        raise NotImplementedError

    def vjp(self, xp, inputs, output, cotangent):
        raise NotImplementedError

    @property
    def arity(self) -> int | None:
        """Number of inputs the op takes, or None when it takes any number >= 1."""
        return 1

    def const(self, xp, name: str, dtype):
        """The constant attribute `name` as an `xp` array of `dtype`, converted once and cached."""
        cache = self.__dict__.setdefault("_const_cache", {})
        key = (xp.__name__, name, np.dtype(dtype).str)
        if key not in cache:
            cache[key] = xp.asarray(getattr(self, name), dtype=dtype)
        return cache[key]

    def describe(self) -> str:
        """Short human-readable label, stored in traces."""
        return type(self).__name__
