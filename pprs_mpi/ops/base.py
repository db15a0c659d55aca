"""The contract every node type follows: pure forward and vector-Jacobian product on batched arrays."""

from __future__ import annotations

import hashlib

import numpy as np

from pprs_mpi.ops._util import MACS_PER_COST_UNIT


class OpContractError(ValueError):
    """Raised by `output_shape` for an op that breaks the contract whatever its inputs' shapes (not
    batch-separable, state changed in forward, ...); the graph names the node."""


class Op:
    """A node's function f_i, applied to a leading batch axis of noisy copies.

    `forward(xp, *inputs)` maps arrays shaped (B, *input_shape_j) to one array (B, *output_shape).
    `vjp(xp, inputs, output, cotangent)` returns one cotangent per input, each shaped like that
    input, for the cotangent of the output. `xp` is the array module (numpy or cupy), so one code
    path serves both. Constants (weights, anchors, labels) live in the op as NumPy arrays and are
    moved to `xp` once through `const`.

    The gradient passes call the pair `forward_with_residuals` / `vjp_with_residuals`: the engine keeps
    whatever the first returns (by default the inputs) with the microbatch until its backward. An op whose
    VJP needs its forward's intermediate values (an autodiff tape) overrides both, so that it never runs
    its forward twice; `forward` alone serves the evaluation passes, which keep nothing.
    """

    #: Relative cost of one forward or backward on one microbatch, used to balance stages.
    cost: float = 1.0
    #: Multiply-adds of one forward per copy, where the op declares them (`declare_macs`): the layout
    #: planner's work term (pprs_mpi/layout.py); 0 where unknown or negligible.
    macs: float = 0.0

    def declare_macs(self, macs: float) -> None:
        """Declares `macs` multiply-adds per copy: the planner's work, and `cost` (at least the default 1.0).
        Ops whose work depends on their input shape declare it in `output_shape`, which `Graph` calls once."""
        self.macs, self.cost = float(macs), max(1.0, macs / MACS_PER_COST_UNIT)

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for per-sample input shapes; raises ValueError if they do not fit."""
        raise NotImplementedError

    def forward(self, xp, *inputs):
        raise NotImplementedError

    def vjp(self, xp, inputs, output, cotangent):
        raise NotImplementedError

    def forward_with_residuals(self, xp, *inputs):
        """(output, residuals): the forward, and what `vjp_with_residuals` will need; by default the inputs."""
        return self.forward(xp, *inputs), inputs

    def vjp_with_residuals(self, xp, residuals, output, cotangent):
        """The VJP from what `forward_with_residuals` kept; by default `vjp` on the kept inputs."""
        return self.vjp(xp, residuals, output, cotangent)

    @property
    def arity(self) -> int | None:
        """Number of inputs the op takes, or None when it takes any number >= 1."""
        return 1

    def const(self, xp, name: str, dtype):
        """The constant attribute `name` as an `xp` array of `dtype`, converted once and cached."""
        cache = self.__dict__.setdefault("_const_cache", {})
        key = (xp, name, dtype)  # hashable as given: called once per action, so no normalising here
        try:
            return cache[key]
        except KeyError:
            cache[key] = xp.asarray(getattr(self, name), dtype=dtype)
            return cache[key]

    def describe(self) -> str:
        """Short human-readable label, stored in traces."""
        return type(self).__name__

    def fingerprint(self) -> bytes:
        """A digest of the op's type and every constant it holds (arrays by their bytes), equal on every
        rank that built the same op: ranks compare graphs by it before a run. Override it for an op whose
        constants are not plain attributes."""
        digest = hashlib.sha256(f"{type(self).__module__}.{type(self).__qualname__}".encode())
        _feed(digest, {k: v for k, v in vars(self).items() if k not in _DERIVED}, depth=0)
        return digest.digest()


#: attributes computed from the op's constants and shapes, left out of its fingerprint (the constants are in it)
_DERIVED = ("_const_cache", "macs")


def _feed(digest, value, depth: int) -> None:
    """Adds `value` to `digest`: arrays by dtype, shape and bytes, containers element by element, other
    objects by their attributes (a few levels deep), anything else by its type only, never by an address."""
    if isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__"):
        array = np.ascontiguousarray(value if isinstance(value, np.ndarray) else value.get())
        digest.update(f"array{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    elif isinstance(value, (bool, int, float, complex, str, bytes, type(None), np.generic)):
        digest.update(repr(value).encode())
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(digest, item, depth + 1)
    elif isinstance(value, dict):
        digest.update(f"dict{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key, depth + 1)
            _feed(digest, value[key], depth + 1)
    else:
        digest.update(type(value).__qualname__.encode())
        if depth < 4 and hasattr(value, "__dict__") and not callable(value):
            _feed(digest, {k: v for k, v in vars(value).items() if k != "_const_cache"}, depth + 1)
