"""`JaxOp`: a JAX function as a node, its VJP by `jax.vjp` (optional extra `[jax]`).

    JaxOp(lambda x: jnp.tanh(x @ W))

The function maps arrays shaped (B, *input_shape) to one array (B, *output_shape), B being the batch of
noisy copies (write it for a batch, or wrap a per-sample function in `jax.vmap`). Arrays cross by DLPack
(NumPy on the CPU, CuPy on the GPU). A gradient pass keeps `jax.vjp`'s pullback as the node's residuals, so
the forward runs once. Constructing one turns on `jax_enable_x64`, since pprs_mpi runs in float64 unless
`--dtype float32`; arrays the function closes over keep their dtype (make them follow the input's). It also
sets XLA_PYTHON_CLIENT_PREALLOCATE=false unless set, so that JAX shares a GPU with CuPy.
"""

from __future__ import annotations

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
    jax.config.update("jax_enable_x64", True)
    return jax


class JaxOp(AutodiffOp):
    """A JAX function on the batch of noisy copies; see the module docstring. `arity`: its number of array
    arguments (None: any); `cost`: its relative cost for balancing stages; `stash=False` recomputes the
    forward in the backward instead of keeping the pullback."""

    framework = "jax"
    fusable = True

    def __init__(self, fn, *, arity: int | None = 1, name: str | None = None, cost: float | None = None,
                 stash: bool = True):
        self._jax = _jax()
        super().__init__(fn, arity=arity, name=name, cost=cost, stash=stash)

    def _to_framework(self, array):
        try:
            return self._jax.dlpack.from_dlpack(array)
        except BufferError:  # a read-only NumPy array (another JaxOp's output): DLPack 0.x cannot say so
            return self._jax.device_put(array, self._jax.devices("cpu")[0])  # on the host, as NumPy's arrays

    def _from_framework(self, xp, array):
        return xp.from_dlpack(array)

    def _evaluate(self, inputs):
        return self.fn(*inputs)

    def _record(self, inputs):
        return self._jax.vjp(self.fn, *inputs)

    def _pull_back(self, tape, cotangent) -> list:
        return list(tape(cotangent))

    def chain_tape(self, leaves: list, tapes: list):
        """The run's pullbacks composed, last op's first (each op has one input)."""
        def pull_back(cotangent):
            grads = (cotangent,)
            for tape in reversed(tapes):
                grads = tape(grads[0])
            return grads
        return pull_back

    def _state(self, working: bool = False) -> list[tuple[str, np.ndarray]]:
        """Arrays the function closes over (JAX arrays are immutable: forward cannot change them)."""
        cells = getattr(self.fn, "__closure__", None) or ()
        return [(f"closure {i}", np.asarray(cell.cell_contents)) for i, cell in enumerate(cells)
                if isinstance(cell.cell_contents, (np.ndarray, self._jax.Array))]
