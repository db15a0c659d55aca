"""What `TorchOp` and `JaxOp` share: a node whose function is a framework's, whose VJP is that framework's
autodiff, and whose contract (shapes, batch separability, purity, dtype) is checked once when the graph is built.

Arrays cross between the engine's array module (NumPy, or CuPy on a GPU) and the framework without copies
(DLPack; TorchOp takes NumPy arrays through `torch.from_numpy`, which shares memory at half the cost).
In a gradient pass the forward records the framework's tape and the engine keeps it as the node's
residuals until the backward, so the forward runs once (`stash=False` recomputes it instead).
"""

from __future__ import annotations

import hashlib

import numpy as np

from pprs_mpi.ops.base import Op, OpContractError

#: Relative tolerance of the batch-separability probe (float32 kernels may round differently per batch size).
SEPARABLE_RTOL = 1e-4


class AutodiffOp(Op):
    """A framework function on batches of noisy copies (axis 0), differentiated by the framework.

    Subclasses say how arrays cross (`_to_framework`, `_from_framework`), how the function runs without
    and with a tape (`_evaluate`, `_record`), how the tape gives the cotangents (`_pull_back`), and what
    state the function holds (`_state`), which forward must not change.
    """

    framework = ""
    mixing_hint = ""  # the usual cause of impure or batch-mixing functions in this framework, ending in "; "
    fusable = False  # whether consecutive ops of this class may run as one call (engines/fusion.py)

    def __init__(self, fn, *, arity: int | None = 1, name: str | None = None, cost: float | None = None,
                 stash: bool = True):
        if not callable(fn):
            raise TypeError(f"{type(self).__name__} takes a callable (a function or a module), got {type(fn).__name__}")
        self.fn, self._arity, self.stash = fn, arity, stash
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        if cost is not None:
            self.cost = float(cost)

    @property
    def arity(self) -> int | None:
        return self._arity

    def describe(self) -> str:
        return f"{type(self).__name__}({self.name})"

    # -- the Op contract ---------------------------------------------------------------------------

    def output_shape(self, *input_shapes):
        """Runs the function on two random rows and checks, besides the shape, that each output row depends on
        its own input row only and that forward changes no state. Tried in float64, then float32: a function
        that computes in one precision only fails at run time in the other, naming its node."""
        errors = []
        for dtype in (np.float64, np.float32):
            rows = [np.random.default_rng(0).standard_normal((2, *shape)).astype(dtype) for shape in input_shapes]
            try:
                with np.errstate(all="ignore"):  # a NaN or Inf here is the run's to report (diverged), as in the run
                    shape = self._probe(rows)
                    self._measure([x[:1] for x in rows])
                return shape
            except OpContractError:
                raise
            except _DtypeLeak as err:
                errors.append(str(err))
            except Exception as err:  # noqa: BLE001 — the user's function may raise anything: its message is kept
                errors.append(f"{self.framework} raised {_one_line(err)}")
        raise OpContractError(errors[0])

    def forward(self, xp, *inputs):
        return self._from_framework(xp, self._evaluate(self._crossed(inputs)))

    def forward_with_residuals(self, xp, *inputs):
        if not self.stash:
            return self.forward(xp, *inputs), inputs
        output, tape = self._record(self._crossed(inputs))
        return self._from_framework(xp, output), tape

    def vjp_with_residuals(self, xp, residuals, output, cotangent):
        if not self.stash:
            return self.vjp(xp, residuals, output, cotangent)
        grads = self._pull_back(residuals, self._to_framework(cotangent))
        return [self._from_framework(xp, grad) for grad in grads]

    def vjp(self, xp, inputs, output, cotangent):
        """The VJP by recomputing the forward with a tape (what `stash=False` does in every backward)."""
        _, tape = self._record(self._crossed(inputs))
        return [self._from_framework(xp, grad) for grad in self._pull_back(tape, self._to_framework(cotangent))]

    def fingerprint(self) -> bytes:
        """The op's type, the function's name and structure, and every array of its state, by their bytes."""
        digest = hashlib.sha256(f"{type(self).__qualname__} {self.name} {self._arity}".encode())
        digest.update(self._structure().encode())
        for key, array in self._state():
            digest.update(f"{key}{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.digest()

    def fuses_with(self, other) -> bool:
        """Whether `other`, fed by this op alone, may run in one call after it: one tape over both (this op may
        take several inputs, `other` only this op's output)."""
        return self.fusable and type(other) is type(self) and self.stash and other.stash and other._arity == 1

    def forward_run(self, xp, inputs, ops: list) -> tuple[list, object]:
        """A fused run (engines/fusion.py) in one call: `ops`, this op first (on `inputs`), each next one fed by the
        one before. Returns each op's output as an `xp` array and the run's tape, which `vjp_run` pulls back."""
        tensors = leaves = self._crossed(inputs)
        outputs, tapes = [], []
        for op in ops:
            output, tape = op._record(tensors)
            outputs.append(output)
            tapes.append(tape)
            tensors = [output]
        return [self._from_framework(xp, output) for output in outputs], self._chain_tape(leaves, tapes)

    def vjp_run(self, xp, tape, cotangent) -> list:
        """The cotangents of a fused run's inputs (this op is its first) from that of its last op's output."""
        return [self._from_framework(xp, grad) for grad in self._pull_back(tape, self._to_framework(cotangent))]

    def _chain_tape(self, leaves: list, tapes: list):
        """The tape of a fused run that `_pull_back` takes: from the last op's output back to the first op's
        inputs `leaves`, given each op's own tape in order."""
        raise NotImplementedError

    # -- the build-time probe --------------------------------------------------------------------

    def _probe(self, rows: list[np.ndarray]) -> tuple[int, ...]:
        self.forward(np, *rows)  # a first call makes what later calls reuse (TorchOp: a copy in this dtype)
        before = dict(self._state(working=True))
        both = self.forward(np, *rows)
        after = dict(self._state(working=True))
        changed = next((key for key in before if not np.array_equal(before[key], after.get(key))), None)
        if changed is not None:
            raise OpContractError(f"forward changes its state {changed!r} ({self.mixing_hint}ops must be pure)")
        if not hasattr(both, "shape") or both.shape[:1] != (2,):
            raise OpContractError(f"forward of a batch of 2 rows returned shape {getattr(both, 'shape', None)}: "
                                  "axis 0 must stay the batch of noisy copies")
        if both.dtype != rows[0].dtype:
            raise _DtypeLeak(f"forward returned {both.dtype} for {rows[0].dtype} inputs (an op keeps its "
                             "inputs' dtype)")
        alone = [self.forward(np, *(x[i:i + 1] for x in rows)) for i in range(2)]
        scale = float(np.max(np.abs(both), initial=0.0, where=np.isfinite(both)))  # a finite tolerance
        if not all(np.allclose(both[i:i + 1], alone[i], rtol=SEPARABLE_RTOL, atol=SEPARABLE_RTOL * scale,
                               equal_nan=True) for i in range(2)):
            raise OpContractError("not batch-separable: an output row changes with the other rows of the batch "
                                  f"({self.mixing_hint}row b of the output must depend only on row b of the inputs)")
        return tuple(both.shape[1:])

    def _crossed(self, inputs) -> list:
        return [self._to_framework(array) for array in inputs]

    # -- what a framework supplies -----------------------------------------------------------------

    def _to_framework(self, array):
        raise NotImplementedError

    def _from_framework(self, xp, tensor):
        raise NotImplementedError

    def _evaluate(self, inputs):
        """The output, without a tape."""
        raise NotImplementedError

    def _record(self, inputs):
        """(output, tape): the output, and what `_pull_back` needs."""
        raise NotImplementedError

    def _pull_back(self, tape, cotangent) -> list:
        raise NotImplementedError

    def _structure(self) -> str:
        """What the function computes, as text equal on every rank: by default its code's bytes."""
        code = getattr(self.fn, "__code__", None)
        return code.co_code.hex() if code is not None else type(self.fn).__qualname__

    def _measure(self, row: list[np.ndarray]) -> None:
        """Sets the op's cost from one row's forward, unless one was given; by default it keeps the default."""

    def _state(self, working: bool = False) -> list[tuple[str, np.ndarray]]:
        """(name, host copy) of every array the function holds (parameters, buffers), in a fixed order;
        `working`: those of the copies it computes with too (TorchOp's per dtype and device)."""
        return []


class _DtypeLeak(TypeError):
    """The probe's output is not in its inputs' dtype: the other precision is tried before refusing."""


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"
