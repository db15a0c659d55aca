"""`TorchOp`: a PyTorch module or function as a node, its VJP by torch's autograd (optional extra `[torch]`).

    TorchOp(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh()))

The callable maps tensors shaped (B, *input_shape) to one tensor (B, *output_shape), B being the batch of
noisy copies, as a module maps a batch. Arrays cross by DLPack without copies (NumPy on the CPU, CuPy on
the GPU). A module computes through a copy of itself in the run's dtype and device (`--dtype`), made on
first use with its parameters frozen, so the user's module is never changed. A gradient pass runs the
forward once with autograd recording and keeps the tape as the node's residuals until its backward.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np

from pprs_mpi.ops.autodiff import AutodiffOp


def _torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"TorchOp needs PyTorch ({err}): pip install 'pprs_mpi[torch]'") from None
    return torch


def _engine_grad(torch):
    """`torch.autograd.grad` without its Python-side argument checks, which cost about as much as a small
    layer's backward (~80 µs a call, measured): autograd's engine called as `grad` calls it, with the same
    arguments (outputs, their cotangents, retain_graph, create_graph, inputs, allow_unused, accumulate_grad)."""
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    if engine is not None and hasattr(engine, "run_backward"):
        return engine.run_backward

    def grad(outputs, cotangents, retain_graph, create_graph, inputs, allow_unused, accumulate_grad):
        return torch.autograd.grad(outputs, inputs, cotangents, retain_graph, create_graph, allow_unused=allow_unused)

    return grad


@contextmanager
def flop_counter(torch):
    """torch's FlopCounterMode, without the import of torch._dynamo (1 s on this project's VM, on every rank) by
    which its first dispatch keeps torch.compile out of it: nothing compiles here, so for the count the wrapper
    (torch/_compile.py) finds its `__dynamo_disable` cache set to the dispatch itself, and afterwards as before.
    Where torch's internals differ, the count is the same and only slower."""
    from torch.utils import flop_counter as module
    dispatch = getattr(vars(getattr(module, "_FlopCounterMode", object)).get("__torch_dispatch__"), "__wrapped__", None)
    marked = callable(dispatch) and not hasattr(dispatch, "__dynamo_disable")
    if marked:
        setattr(dispatch, "__dynamo_disable", dispatch)
    try:
        with module.FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        if marked:
            delattr(dispatch, "__dynamo_disable")


def _with_dtype_hint(err: RuntimeError) -> RuntimeError:
    """torch's error, with the fix when it is two dtypes meeting: a tensor in a closure keeps its own."""
    text = str(err)
    if "dtype" in text or "scalar type" in text:
        return RuntimeError(f"{text} (a tensor the function closes over keeps its dtype: write w.to(x) so that it "
                            "follows the run's --dtype)")
    return err


class TorchOp(AutodiffOp):
    """A PyTorch callable on the batch of noisy copies; see the module docstring. `arity`: its number of
    tensor arguments (None: any); `cost`: its relative cost for balancing stages; `stash=False` recomputes
    the forward in the backward instead of keeping autograd's tape."""

    framework = "torch"
    fusable = True
    mixing_hint = "a BatchNorm in train mode, or Dropout? call model.eval(); "

    def __init__(self, fn, *, arity: int | None = 1, name: str | None = None, cost: float | None = None,
                 stash: bool = True):
        self._torch = _torch()
        super().__init__(fn, arity=arity, name=name, cost=cost, stash=stash)
        self._working: dict = {}  # (dtype, device) -> the callable computing in them
        self._run_backward = _engine_grad(self._torch)
        nn = self._torch.nn
        if isinstance(fn, nn.Module) and any(isinstance(m, nn.MultiheadAttention) for m in fn.modules()):
            # Without a tape (an evaluation pass, vmap over weights) attention takes a fused kernel that rounds
            # otherwise than the one autograd records, and has no derivative: one kernel for every pass
            self._torch.backends.mha.set_fastpath_enabled(False)

    def _measure(self, row) -> None:
        """The cost from the floating-point operations torch counts in one row's forward (the same on every
        rank, so that every rank places the nodes alike), unless one was given."""
        if "cost" not in vars(self):
            with flop_counter(self._torch) as counter:
                self._evaluate(self._crossed(row))
            self.declare_macs(counter.get_total_flops() // 2)

    def _fn_for(self, tensor):
        key = (tensor.dtype, tensor.device)
        fn = self._working.get(key)
        if fn is None:
            fn = self._working[key] = self._converted(tensor.dtype, tensor.device)
        return fn

    def _converted(self, dtype, device):
        """A module's copy in `dtype` on `device`, parameters frozen; a plain function as it is."""
        if isinstance(self.fn, self._torch.nn.Module):
            return copy.deepcopy(self.fn).to(device=device, dtype=dtype).requires_grad_(False)
        return self.fn

    def _to_framework(self, array):
        if type(array) is np.ndarray and array.flags.writeable:  # the same memory, at half DLPack's overhead
            return self._torch.from_numpy(array)
        return self._torch.from_dlpack(array)

    def _from_framework(self, xp, tensor):
        return tensor.detach().numpy() if xp is np else xp.from_dlpack(tensor.detach())

    def _evaluate(self, inputs):
        try:
            with self._torch.no_grad():
                return self._fn_for(inputs[0])(*inputs)
        except RuntimeError as err:
            raise _with_dtype_hint(err) from None

    def _record(self, inputs):
        leaves = [tensor.requires_grad_() for tensor in inputs]
        try:
            with self._torch.enable_grad():
                output = self._fn_for(leaves[0])(*leaves)
        except RuntimeError as err:
            raise _with_dtype_hint(err) from None
        return output, (leaves, output)

    def _pull_back(self, tape, cotangent) -> list:
        leaves, output = tape
        if not output.requires_grad:  # the output does not depend on the inputs
            return [self._torch.zeros_like(leaf) for leaf in leaves]
        grads = self._run_backward((output,), (cotangent,), False, False, tuple(leaves), True, False)
        return [self._torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]

    def _chain_tape(self, leaves: list, tapes: list):
        """One backward through the whole run: the first op's input leaves and the last op's output."""
        return leaves, tapes[-1][1]

    def _structure(self) -> str:
        """A module's repr (its children's types and hyper-parameters); a function's code."""
        return repr(self.fn) if isinstance(self.fn, self._torch.nn.Module) else super()._structure()

    def _state(self, working: bool = False) -> list[tuple[str, np.ndarray]]:
        holders = [("", self.fn)]
        if working:
            holders += [(f"{str(dtype).removeprefix('torch.')} copy on {device}: ", fn)
                        for (dtype, device), fn in self._working.items()]
        state = []
        for prefix, holder in holders:
            if isinstance(holder, self._torch.nn.Module):
                items = holder.state_dict().items()
            else:  # tensors a plain function closes over
                cells = getattr(holder, "__closure__", None) or ()
                items = [(f"closure {i}", cell.cell_contents) for i, cell in enumerate(cells)
                         if isinstance(cell.cell_contents, self._torch.Tensor)]
            state += [(prefix + key, tensor.detach().cpu().numpy().copy()) for key, tensor in items]
        return state
