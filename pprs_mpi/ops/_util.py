"""Helpers shared by the ops: parameter checks and the unit of declared cost."""

from __future__ import annotations

import math
from numbers import Integral

#: Multiply-adds per sample that count as one unit of `Op.cost`; cheaper ops keep the default 1.0.
MACS_PER_COST_UNIT = 2**16


def size(shape: tuple[int, ...]) -> int:
    """Number of entries of a per-sample shape (1 for a scalar)."""
    return math.prod(shape)


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of non-negative ints, for kernel sizes, strides and padding."""
    values = (value, value) if isinstance(value, Integral) else tuple(value)
    if len(values) != 2 or any(int(v) != v or v < 0 for v in values):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return int(values[0]), int(values[1])


def per_sample(cotangent, ndim: int):
    """A (B,) cotangent reshaped to broadcast against a (B, ...) array with `ndim` axes."""
    return cotangent.reshape(cotangent.shape[:1] + (1,) * (ndim - 1))
