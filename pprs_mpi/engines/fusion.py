"""Consecutive framework nodes of one segment run as one call: one autograd tape for a run of `TorchOp`s (one
chain of `jax.vjp`s for `JaxOp`s) per microbatch, so that a model split into many small nodes (`from_torch`
per layer) costs what its stages cost, not a framework round trip per node.

A run is a stretch of a forward segment whose ops fuse with each other (`AutodiffOp.fuses_with`: the same
framework, the tape kept, each op after the first fed by the one before alone; the first may take several
inputs, as a residual block's join does). Its tape is pulled back in one go, from the cotangent of its last node
to the inputs of its first (`AutodiffOp.forward_run`, `vjp_run`), where a backward segment holds the run's
mirror image (plan.Segment: a chain of the stage's own nodes, nothing between them). In a model with skip
connections a forward segment can run past a node whose backward segment ends there (its cotangent is the sum
of several children's, which the engine adds): the run is then cut into the pieces that backward segments
mirror. The arithmetic is the framework's own, in the same order as node by node: fused and unfused passes
give bitwise the same gradients.
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


def runs_per_unit(segments, ops: dict) -> list:
    """Per time unit, the (first step, index after the last) of the runs of the segment starting there that
    execute as one call, in order; a run is fused only where the backward segments hold its mirror image."""
    forward, backward = {}, set()
    for segment in filter(None, segments):
        nodes = tuple(step.node for step in segment.steps)
        if segment.forward:
            for start, stop in fused_runs([ops[n] for n in nodes]):
                forward[nodes[start:stop]] = None
        else:
            backward.add(nodes)
    fused = [piece for run in forward for piece in _mirrored_pieces(run, backward)]
    table = []
    for segment in segments:
        if segment is None:
            table.append(())
            continue
        nodes = tuple(step.node for step in segment.steps)
        runs = {}
        for run in fused:
            at = _find(nodes, run if segment.forward else run[::-1])
            if at is not None:
                runs[at] = at + len(run)
        table.append(tuple(sorted(runs.items())))
    return table


def _mirrored_pieces(run: tuple, backward: set) -> list[tuple]:
    """`run` cut, from its start, into the longest pieces of at least two nodes whose mirror image lies within one
    backward segment; nodes that begin no such piece run alone."""
    pieces, start = [], 0
    while start < len(run) - 1:
        stop = next((stop for stop in range(len(run), start + 1, -1)
                     if any(_find(nodes, run[start:stop][::-1]) is not None for nodes in backward)), None)
        if stop is None:
            start += 1
        else:
            pieces.append(run[start:stop])
            start = stop
    return pieces


def _find(sequence: tuple, part: tuple) -> int | None:
    """The index where `part` occurs contiguously in `sequence`, or None."""
    for i in range(len(sequence) - len(part) + 1):
        if sequence[i:i + len(part)] == part:
            return i
    return None
