"""Consecutive framework nodes of one segment run as one call: one autograd tape for a run of `TorchOp`s (one
chain of `jax.vjp`s for `JaxOp`s) per microbatch, so that a model split into many small nodes (`from_torch`
per layer) costs what its stages cost, not a framework round trip per node.

A run is a stretch of a forward segment whose ops fuse with each other (`AutodiffOp.fuses_with`: the same
framework, one input, the tape kept); the backward segment of the same chain is its mirror image (plan.Segment:
a chain of the stage's own nodes, nothing between them), so the run's tape is pulled back in one go from the
cotangent of its last node to the input of its first. The arithmetic is the framework's own, in the same order
as node by node: fused and unfused passes give bitwise the same gradients.
"""

from __future__ import annotations

from pprs_mpi.ops.autodiff import AutodiffOp


def fused_runs(ops: list) -> tuple[tuple[int, int], ...]:
    """The [start, stop) index ranges of `ops` (a segment's, in forward order) that run as one call: maximal
    stretches of at least two ops that fuse with their neighbours."""
    runs, start = [], 0
    for i in range(1, len(ops) + 1):
        if i == len(ops) or not (isinstance(ops[i - 1], AutodiffOp) and ops[i - 1].fuses_with(ops[i])):
            if i - start >= 2:
                runs.append((start, i))
            start = i
    return tuple(runs)


def forward_run(ops: list, xp, inputs: list) -> tuple[list, object]:
    """Each op's output (arrays of `xp`) along the run, and the run's tape (kept with the last node's output)."""
    first = ops[0]
    tensors = first._crossed(inputs)
    leaves, outputs, tapes = tensors, [], []
    for op in ops:
        output, tape = op._record(tensors)
        tapes.append(tape)
        outputs.append(output)
        tensors = [output]
    return [first._from_framework(xp, output) for output in outputs], first.chain_tape(leaves, tapes)


def backward_run(ops: list, xp, tape, cotangent) -> list:
    """The cotangents of the run's first node's inputs, from the cotangent of its last node's output."""
    first = ops[0]
    return [first._from_framework(xp, grad) for grad in first._pull_back(tape, first._to_framework(cotangent))]
