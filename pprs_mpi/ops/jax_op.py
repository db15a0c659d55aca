"""`JaxOp`: a JAX function as a node, its VJP by `jax.vjp` (optional extra `[jax]`).

    JaxOp(lambda x: jnp.tanh(x @ W))

The function maps arrays shaped (B, *input_shape) to one array (B, *output_shape), B being the batch of
noisy copies (write it for a batch, or wrap a per-sample function in `jax.vmap`). It is compiled with
`jax.jit` unless `jit=False` (or it is jitted already); the graph hash sees the Python function's code and the
arrays it closes over, jitted or not. Arrays cross by DLPack (NumPy on the CPU, CuPy on the GPU). A gradient
pass keeps `jax.vjp`'s pullback as the node's residuals, so the forward runs once.

pprs_mpi runs in float64 unless `--dtype float32`, so JAX's float64 mode must be on before the builder makes
its arrays: importing pprs_mpi sets JAX_ENABLE_X64=1 unless set (JAX reads it when imported, so JAX itself is
not imported), and constructing a JaxOp turns `jax_enable_x64` on. Where JAX was imported first, arrays made
before the first JaxOp are float32 whatever they were made from, and would be float64 the next time the
builder runs: a JaxOp closing over one names it in one line. Arrays the function closes over keep their dtype
(make them follow the input's). It also sets XLA_PYTHON_CLIENT_PREALLOCATE=false unless set, so that JAX
shares a GPU with CuPy.
"""

from __future__ import annotations

import inspect
import os

import numpy as np

from pprs_mpi.ops.autodiff import AutodiffOp


def _jax():
    # JAX would take 75 % of a GPU's memory when first used, leaving little to CuPy on the same device
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
    except ImportError as err:
        raise ImportError(f"JaxOp needs JAX ({err}): pip install 'pprs_mpi[jax]'") from None
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
        _X64_LATE.append(True)
    return jax


_X64_LATE: list = []  # not empty once a JaxOp turned float64 mode on: arrays made before it are float32


class JaxOp(AutodiffOp):
    """A JAX function on the batch of noisy copies; see the module docstring. `arity`: its number of array
    arguments (None: any); `cost`: its relative cost for balancing stages; `stash=False` recomputes the
    forward in the backward instead of keeping the pullback; `jit=False` runs it as it is, op by op."""

    framework = "jax"
    fusable = True

    def __init__(self, fn, *, arity: int | None = 1, name: str | None = None, cost: float | None = None,
                 stash: bool = True, jit: bool = True):
        self._jax = _jax()
        super().__init__(fn, arity=arity, name=name, cost=cost, stash=stash)
        self._plain = inspect.unwrap(fn)  # a jitted function's Python function, whose code and closure are hashed
        self._call = self._jax.jit(fn) if jit and self._plain is fn else fn
        if _X64_LATE:
            self._refuse_float32_closure()

    def _refuse_float32_closure(self) -> None:
        names = getattr(getattr(self._plain, "__code__", None), "co_freevars", ())
        cells = getattr(self._plain, "__closure__", None) or ()
        for variable, cell in zip(names, cells):
            value = cell.cell_contents
            if isinstance(value, self._jax.Array) and value.dtype == np.float32:
                raise TypeError(f"JaxOp({self.name}): {variable!r} is a float32 JAX array made before JAX's float64 "
                                "mode was on (JAX was imported before pprs_mpi): import pprs_mpi first, set "
                                "JAX_ENABLE_X64=1, or make it a NumPy array")

    def _to_framework(self, array):
        try:
            return self._jax.dlpack.from_dlpack(array)
        except BufferError:  # a read-only NumPy array (another JaxOp's output): DLPack 0.x cannot say so
            return self._jax.device_put(array, self._jax.devices("cpu")[0])  # on the host, as NumPy's arrays

    def _from_framework(self, xp, array):
        return xp.from_dlpack(array)

    def _evaluate(self, inputs):
        return self._call(*inputs)

    def _record(self, inputs):
        return self._jax.vjp(self._call, *inputs)

    def _pull_back(self, tape, cotangent) -> list:
        return list(tape(cotangent))

    def _structure(self) -> str:
        code = getattr(self._plain, "__code__", None)
        return code.co_code.hex() if code is not None else type(self._plain).__qualname__

    def _chain_tape(self, leaves: list, tapes: list):
        """The run's pullbacks composed, last op's first (each op but the first has one input)."""
        def pull_back(cotangent):
            grads = (cotangent,)
            for tape in reversed(tapes):
                grads = tape(grads[0])
            return grads
        return pull_back

    def _state(self, working: bool = False) -> list[tuple[str, np.ndarray]]:
        """Arrays the function closes over (JAX arrays are immutable: forward cannot change them)."""
        cells = getattr(self._plain, "__closure__", None) or ()
        return [(f"closure {i}", np.asarray(cell.cell_contents)) for i, cell in enumerate(cells)
                if isinstance(cell.cell_contents, (np.ndarray, self._jax.Array))]
