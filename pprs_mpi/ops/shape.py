"""Ops that only rearrange entries: reshapes and slices of the flat parameter vector."""

from __future__ import annotations

from typing import Sequence

from pprs_mpi.ops._util import size
from pprs_mpi.ops.base import Op


class Reshape(Op):
    """Reshape each sample to `shape` (one entry may be -1, inferred as in NumPy)."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        if sum(s == -1 for s in self.shape) > 1 or any(s < -1 for s in self.shape):
            raise ValueError(f"Reshape: invalid target shape {self.shape}")

    def output_shape(self, shape):
        n, known = size(shape), size(tuple(s for s in self.shape if s != -1))
        if -1 in self.shape:
            if known == 0 or n % known:
                raise ValueError(f"cannot reshape {tuple(shape)} ({n} entries) to {self.shape}")
            return tuple(n // known if s == -1 else s for s in self.shape)
        if known != n:
            raise ValueError(f"cannot reshape {tuple(shape)} ({n} entries) to {self.shape} ({known} entries)")
        return self.shape

    def forward(self, xp, x):
        return x.reshape(x.shape[:1] + self.shape)

    def vjp(self, xp, inputs, output, cotangent):
        return (cotangent.reshape(inputs[0].shape),)

    def describe(self):
        return f"Reshape{self.shape}"


class Flatten(Op):
    """Flatten each sample to a vector (C order)."""

    def output_shape(self, shape):
        return (size(shape),)

    def forward(self, xp, x):
        return x.reshape(x.shape[0], -1)

    def vjp(self, xp, inputs, output, cotangent):
        return (cotangent.reshape(inputs[0].shape),)


class Slice(Op):
    """Entries start:stop of a vector sample, reshaped to `shape` (default: a vector).

    Lets a node read part of θ as a weight matrix or an image; the VJP scatters into zeros.
    """

    def __init__(self, start: int, stop: int, shape: Sequence[int] | None = None):
        self.start, self.stop = int(start), int(stop)
        if not 0 <= self.start < self.stop:
            raise ValueError(f"Slice: need 0 <= start < stop, got {self.start}:{self.stop}")
        self.shape = (self.stop - self.start,) if shape is None else tuple(int(s) for s in shape)
        if size(self.shape) != self.stop - self.start:
            raise ValueError(f"Slice: shape {self.shape} does not hold {self.stop - self.start} entries")

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"input must be a vector, got shape {tuple(shape)}")
        if self.stop > shape[0]:
            raise ValueError(f"slice {self.start}:{self.stop} exceeds the input length {shape[0]}")
        return self.shape

    def forward(self, xp, x):
        return xp.ascontiguousarray(x[:, self.start:self.stop]).reshape(x.shape[:1] + self.shape)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        grad = xp.zeros_like(x)
        grad[:, self.start:self.stop] = cotangent.reshape(x.shape[0], -1)
        return (grad,)

    def describe(self):
        return f"Slice({self.start}:{self.stop} -> {self.shape})"
