"""Margin losses on scores and logits: binary hinge and multi-class margin (paper eq. (17), first term)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pprs_mpi.ops.base import Op


class _MultiMarginBase(Op):
    """Σ_{i≠y} max(0, 1 − x_y + x_i) per example on logits (..., C), for constant targets of shape (...)."""

    def __init__(self, targets, what: str):
        self.targets = np.asarray(targets)
        if self.targets.dtype.kind not in "iu" or (self.targets < 0).any():
            raise ValueError(f"{what}: targets must be non-negative class indices, got {targets!r}")

    def _check_logits(self, shape) -> None:
        if (len(shape) != self.targets.ndim + 1 or tuple(shape[:-1]) != self.targets.shape
                or shape[-1] <= self.targets.max()):
            raise ValueError(f"logits must have shape {self.targets.shape + ('C',)} with C > {self.targets.max()}, "
                             f"got {tuple(shape)}")

    def _terms(self, xp, x):
        """One-hot targets, and the active terms 1 − x_y + x_i (positive, i ≠ y) as a 0/1 mask and values."""
        targets = self.const(xp, "targets", np.int64)
        one_hot = (xp.arange(x.shape[-1]) == targets[..., None]).astype(x.dtype)
        z = 1 - (x * one_hot).sum(axis=-1, keepdims=True) + x
        active = ((z > 0) & (one_hot == 0)).astype(x.dtype)
        return one_hot, active, z * active

    def _per_example(self, xp, x):
        return self._terms(xp, x)[2].sum(axis=-1)

    def _grad(self, xp, x, per_example_cotangent):
        one_hot, active, _ = self._terms(xp, x)
        return (active - one_hot * active.sum(axis=-1, keepdims=True)) * per_example_cotangent[..., None]


class MultiMargin(_MultiMarginBase):
    """Σ_{i≠y} max(0, 1 − x_y + x_i) on logits x (C,) for a constant target class y -> scalar.

    Subgradient at a kink (a term exactly 0): that term contributes 0.
    """

    def __init__(self, target: int):
        super().__init__(target, "MultiMargin")
        if self.targets.ndim != 0:
            raise ValueError(f"MultiMargin: target must be one class index, got {target!r}")

    def output_shape(self, shape):
        self._check_logits(shape)
        return ()

    def forward(self, xp, x):
        return self._per_example(xp, x)

    def vjp(self, xp, inputs, output, cotangent):
        return (self._grad(xp, inputs[0], cotangent),)

    def describe(self):
        return f"MultiMargin(target={int(self.targets)})"


class MultiMarginMean(_MultiMarginBase):
    """Mean over m examples of the multi-class margin: logits (m, C), targets (m,) -> scalar.

    The loss for fine-tuning a classifier on m labelled examples. Subgradient at a kink: that term contributes 0.
    """

    def __init__(self, targets: Sequence[int]):
        super().__init__(targets, "MultiMarginMean")
        if self.targets.ndim != 1 or self.targets.size == 0:
            raise ValueError(f"MultiMarginMean: targets must be a non-empty vector, got {targets!r}")

    def output_shape(self, shape):
        self._check_logits(shape)
        return ()

    def forward(self, xp, x):
        return self._per_example(xp, x).mean(axis=-1)

    def vjp(self, xp, inputs, output, cotangent):
        m = self.targets.size
        per_example = xp.broadcast_to(cotangent[:, None] / m, cotangent.shape + (m,))
        return (self._grad(xp, inputs[0], per_example),)

    def describe(self):
        return f"MultiMarginMean(m={self.targets.size})"


class Hinge(Op):
    """mean_j max(0, 1 − labels_j x_j) on scores x (m,) or (m, 1) for constant labels ±1 (m,) -> scalar.

    Subgradient at a kink (1 − labels_j x_j = 0): that term contributes 0.
    """

    def __init__(self, labels: Sequence[float]):
        self.labels = np.asarray(labels, dtype=np.float64)
        if self.labels.ndim != 1 or self.labels.size == 0 or not np.isin(self.labels, (-1.0, 1.0)).all():
            raise ValueError(f"Hinge: labels must be a non-empty vector of ±1, got {labels!r}")

    def output_shape(self, shape):
        m = self.labels.size
        if tuple(shape) not in ((m,), (m, 1)):
            raise ValueError(f"scores must have shape ({m},) or ({m}, 1), got {tuple(shape)}")
        return ()

    def _margins(self, xp, x):
        """Labels and the terms 1 − labels_j x_j, both (B, m)."""
        labels = self.const(xp, "labels", x.dtype)
        return labels, 1 - labels * x.reshape(x.shape[0], -1)

    def forward(self, xp, x):
        return xp.maximum(self._margins(xp, x)[1], 0).mean(axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        labels, z = self._margins(xp, x)
        grad = -(labels * (z > 0)) * (cotangent[:, None] / self.labels.size)
        return (grad.reshape(x.shape),)

    def describe(self):
        return f"Hinge(m={self.labels.size})"
