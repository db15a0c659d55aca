"""Where a diverged run's first NaN or Inf appeared: the node (and microbatch) whose output or cotangent
was the first not to be finite.

Only called once a run has diverged, so the hot path pays nothing: rank 0 redoes the failing iteration's
pass at x_t alone, node by node in topological order with the engine's own noisy copies, checking every
op's output and every VJP's cotangents. Forwards of every microbatch come first, then the backwards (the
order of a GPipe pass), so a NaN is blamed on the op whose inputs were all finite.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi import noise
from pprs_mpi.graph import Graph


def first_nonfinite(graph: Graph, sampling, backend, x, iteration: int) -> str | None:
    """Names the first non-finite op output or cotangent of iteration `iteration`'s pass at `x` (on
    `backend`), or None when the pass is finite here (the divergence then came from the step itself)."""
    source, xp, x = backend.noise_source(sampling, graph.dim), backend.xp, backend.asarray(x)

    def theta(mb: int):
        return noise.noisy_copies(backend, sampling, source, x, iteration, sampling.samples(mb))

    with np.errstate(all="ignore"):
        for mb in range(sampling.n_microbatches):
            found = _forward(graph, xp, theta(mb), f"microbatch {mb}")[1]
            if found:
                return found
        for mb in range(sampling.n_microbatches):
            found = _backward(graph, xp, _forward(graph, xp, theta(mb), f"microbatch {mb}")[0], mb)
            if found:
                return found
    return None


def first_nonfinite_at(graph: Graph, backend, y, iteration: int) -> str | None:
    """Names the first node whose output is not finite in the evaluation f(y_iteration) (a forward of y
    alone), or None."""
    with np.errstate(all="ignore"):
        return _forward(graph, backend.xp, backend.xp.reshape(backend.asarray(y), (1, -1)),
                        f"the evaluation pass f(y_{iteration})")[1]


def _forward(graph: Graph, xp, theta, which: str) -> tuple[dict, str | None]:
    values = {graph.root: theta}
    for name in graph.order:
        op = graph.op(name)
        values[name] = op.forward(xp, *[values[p] for p in graph.parents(name)])
        if not bool(xp.isfinite(values[name]).all()):
            return values, f"the forward output of node '{name}' ({op.describe()}), {which}"
    return values, None


def _backward(graph: Graph, xp, values: dict, mb: int) -> str | None:
    cotangents = {graph.leaf: xp.ones_like(values[graph.leaf])}
    for name in reversed(graph.order):
        op, parents = graph.op(name), graph.parents(name)
        grads = op.vjp(xp, [values[p] for p in parents], values[name], cotangents.pop(name))
        for parent, grad in zip(parents, grads):
            if not bool(xp.isfinite(grad).all()):
                return (f"the cotangent node '{name}' ({op.describe()}) returned for edge '{parent}' -> '{name}', "
                        f"microbatch {mb}")
            cotangents[parent] = grad if parent not in cotangents else cotangents[parent] + grad
    return None
