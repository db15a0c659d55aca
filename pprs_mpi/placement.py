"""Measured node costs, so that `Graph.stages` can balance stages by time instead of declared cost."""

from __future__ import annotations

import time

import numpy as np

from pprs_mpi.backend import Backend
from pprs_mpi.graph import Graph


def measure_costs(graph: Graph, backend: Backend, batch: int, repeats: int = 3) -> dict[str, float]:
    """Seconds of one forward plus one VJP of each node on a random microbatch, as a gradient pass runs
    them (best of `repeats`, after one untimed call: frameworks set up kernels on first use), for
    balancing stages by measured time as torchgpipe does."""
    rng = np.random.default_rng(0)
    outputs = {graph.root: backend.asarray(rng.standard_normal((batch, graph.dim)))}
    costs = {}
    for name in graph.order:
        op, inputs = graph.op(name), [outputs[p] for p in graph.parents(name)]
        best = float("inf")
        for repeat in range(repeats + 1):
            start = time.perf_counter()
            out, residuals = op.forward_with_residuals(backend.xp, *inputs)
            op.vjp_with_residuals(backend.xp, residuals, out, backend.xp.ones_like(out))
            backend.synchronize()
            if repeat:
                best = min(best, time.perf_counter() - start)
        outputs[name], costs[name] = out, best
    return costs

