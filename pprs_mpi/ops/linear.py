"""Affine maps: with constant weights, with weights read from an input (θ as weights), and max of affines."""

from __future__ import annotations

import numpy as np

from pprs_mpi.ops._util import size
from pprs_mpi.ops.base import Op


class Affine(Op):
    """x @ W.T + b on the last axis: (B, ..., n) -> (B, ..., m) for constant W (m, n) and b (m,)."""

    def __init__(self, W, b=None):
        self.W = np.asarray(W)
        if self.W.ndim != 2:
            raise ValueError(f"Affine: W must be a matrix, got shape {self.W.shape}")
        self.b = None if b is None else np.asarray(b)
        if self.b is not None and self.b.shape != self.W.shape[:1]:
            raise ValueError(f"Affine: b must have shape {self.W.shape[:1]}, got {self.b.shape}")
        self.declare_macs(self.W.size)

    def output_shape(self, shape):
        if len(shape) < 1 or shape[-1] != self.W.shape[1]:
            raise ValueError(f"last axis must have length {self.W.shape[1]}, got shape {tuple(shape)}")
        self.declare_macs(size(shape) * self.W.shape[0])
        return tuple(shape[:-1]) + self.W.shape[:1]

    def forward(self, xp, x):
        out = x @ self.const(xp, "W", x.dtype).T
        if self.b is not None:
            out += self.const(xp, "b", x.dtype)
        return out

    def vjp(self, xp, inputs, output, cotangent):
        return (cotangent @ self.const(xp, "W", cotangent.dtype),)

    def describe(self):
        return f"Affine({self.W.shape[1]}->{self.W.shape[0]})"


class MaxAffine(Op):
    """max_i (A_i · x + c_i) for a vector sample x (n,), constant A (k, n) and c (k,): a convex piecewise-linear scalar.

    Subgradient at a tie: the row A_i with the lowest index i among the maximisers.
    """

    def __init__(self, A, c):
        self.A, self.c = np.asarray(A), np.asarray(c)
        if self.A.ndim != 2 or self.c.shape != self.A.shape[:1]:
            raise ValueError(f"MaxAffine: need A (k, n) and c (k,), got {self.A.shape} and {self.c.shape}")
        self.declare_macs(self.A.size)

    def output_shape(self, shape):
        if tuple(shape) != self.A.shape[1:]:
            raise ValueError(f"input must have shape {self.A.shape[1:]}, got {tuple(shape)}")
        return ()

    def _scores(self, xp, x):
        return x @ self.const(xp, "A", x.dtype).T + self.const(xp, "c", x.dtype)

    def forward(self, xp, x):
        return self._scores(xp, x).max(axis=1)

    def vjp(self, xp, inputs, output, cotangent):
        first = xp.argmax(self._scores(xp, inputs[0]), axis=1)
        return (self.const(xp, "A", cotangent.dtype)[first] * cotangent[:, None],)

    def describe(self):
        return f"MaxAffine(k={self.A.shape[0]}, n={self.A.shape[1]})"


def _param_count(n_in: int, n_out: int) -> int:
    return n_out * n_in + n_out


def _unpack(params, n_in: int, n_out: int):
    """Per-sample weights (B, n_out, n_in) and biases (B, n_out) from flat params laid out as [W row-major, b]."""
    B = params.shape[0]
    return params[:, : n_out * n_in].reshape(B, n_out, n_in), params[:, n_out * n_in:]


def _apply(xp, a, W, b):
    """a (B or nothing, m, n_in) times each sample's W.T plus b: (B, m, n_out)."""
    return xp.matmul(a, W.transpose(0, 2, 1)) + b[:, None, :]


def _params_grad(xp, a, cot):
    """Cotangent of the flat params for activations a (B or nothing, m, n_in) and output cotangent (B, m, n_out)."""
    dW = xp.matmul(cot.transpose(0, 2, 1), a)
    return xp.concatenate([dW.reshape(cot.shape[0], -1), cot.sum(axis=1)], axis=1)


def _check_params(shape, n_in: int, n_out: int) -> None:
    expected = (_param_count(n_in, n_out),)
    if tuple(shape) != expected:
        raise ValueError(
            f"params must have shape {expected} (W {n_out}x{n_in} row-major, then b {n_out}), got {tuple(shape)}")


class ParamAffine(Op):
    """An affine layer whose weights are the input, applied to constant data x (m, n_in).

    Input: flat params (B, n_out*n_in + n_out) laid out as [W (n_out, n_in) row-major, b (n_out)].
    Output: (B, m, n_out) = x @ W.T + b for each sample's W, b. Use it when θ holds the weights (few-shot).
    """

    def __init__(self, x, n_out: int):
        self.x = np.asarray(x)
        if self.x.ndim != 2:
            raise ValueError(f"ParamAffine: data must be (m, n_in), got shape {self.x.shape}")
        self.n_out = int(n_out)
        self.declare_macs(self.x.size * self.n_out)

    @property
    def n_params(self) -> int:
        return _param_count(self.x.shape[1], self.n_out)

    def output_shape(self, shape):
        _check_params(shape, self.x.shape[1], self.n_out)
        return (self.x.shape[0], self.n_out)

    def forward(self, xp, params):
        W, b = _unpack(params, self.x.shape[1], self.n_out)
        return _apply(xp, self.const(xp, "x", params.dtype), W, b)

    def vjp(self, xp, inputs, output, cotangent):
        return (_params_grad(xp, self.const(xp, "x", cotangent.dtype), cotangent),)

    def describe(self):
        return f"ParamAffine(m={self.x.shape[0]}, {self.x.shape[1]}->{self.n_out})"


class ParamAffineInput(Op):
    """An affine layer on activations with per-sample weights from a second input.

    Inputs: activations (B, ..., n_in) and flat params (B, n_out*n_in + n_out) laid out as in ParamAffine.
    Output: (B, ..., n_out) = a @ W.T + b for each sample's W, b.
    """

    def __init__(self, n_out: int):
        self.n_out = int(n_out)

    @property
    def arity(self):
        return 2

    def output_shape(self, a_shape, p_shape):
        if len(a_shape) < 1:
            raise ValueError("activations must have at least one axis (..., n_in)")
        _check_params(p_shape, a_shape[-1], self.n_out)
        self.declare_macs(size(a_shape) * self.n_out)
        return tuple(a_shape[:-1]) + (self.n_out,)

    def forward(self, xp, a, params):
        B, n_in = a.shape[0], a.shape[-1]
        W, b = _unpack(params, n_in, self.n_out)
        return _apply(xp, a.reshape(B, -1, n_in), W, b).reshape(a.shape[:-1] + (self.n_out,))

    def vjp(self, xp, inputs, output, cotangent):
        a, params = inputs
        B, n_in = a.shape[0], a.shape[-1]
        W, _ = _unpack(params, n_in, self.n_out)
        a3, cot = a.reshape(B, -1, n_in), cotangent.reshape(B, -1, self.n_out)
        return xp.matmul(cot, W).reshape(a.shape), _params_grad(xp, a3, cot)

    def describe(self):
        return f"ParamAffineInput(n_out={self.n_out})"
