"""Ops that reduce each sample to a scalar: sums and norms."""

from __future__ import annotations

import numpy as np

from pprs_mpi.ops._util import per_sample
from pprs_mpi.ops.base import Op


class _ToScalar(Op):
    """An op mapping a sample of any shape to a scalar."""

    def output_shape(self, shape):
        return ()


class Sum(_ToScalar):
    """Σ_i x_i over all entries of a sample."""

    def forward(self, xp, x):
        return x.reshape(x.shape[0], -1).sum(axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        return (xp.ones_like(x) * per_sample(cotangent, x.ndim),)


class SquaredNorm(_ToScalar):
    """Σ_i x_i² over all entries of a sample (smooth)."""

    def forward(self, xp, x):
        flat = x.reshape(x.shape[0], -1)
        return (flat * flat).sum(axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        return (2 * x * per_sample(cotangent, x.ndim),)


class L1Norm(_ToScalar):
    """Σ_i |x_i| over all entries of a sample. Subgradient: sign(0) = 0."""

    def forward(self, xp, x):
        return xp.abs(x.reshape(x.shape[0], -1)).sum(axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        return (xp.sign(x) * per_sample(cotangent, x.ndim),)


class LInfDistance(Op):
    """weight · max_i |x_i − anchor_i| over all entries of a sample (anchor has the sample's shape).

    Subgradient: all of it goes to the first entry (C order) attaining the max, times sign(x_i − anchor_i)
    with sign(0) = 0, so the gradient is zero when x equals the anchor.
    """

    def __init__(self, anchor, weight: float = 1.0):
        self.anchor = np.asarray(anchor)
        self.weight = float(weight)

    def output_shape(self, shape):
        if tuple(shape) != self.anchor.shape:
            raise ValueError(f"input shape {tuple(shape)} differs from the anchor's {self.anchor.shape}")
        return ()

    def _diff(self, xp, x):
        return (x - self.const(xp, "anchor", x.dtype)).reshape(x.shape[0], -1)

    def forward(self, xp, x):
        return self.weight * xp.abs(self._diff(xp, x)).max(axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        diff = self._diff(xp, x)
        first = xp.argmax(xp.abs(diff), axis=1)
        mask = xp.arange(diff.shape[1]) == first[:, None]
        grad = mask * xp.sign(diff) * (self.weight * cotangent)[:, None]
        return (grad.reshape(x.shape),)

    def describe(self):
        return f"LInfDistance(shape={self.anchor.shape}, weight={self.weight:g})"
