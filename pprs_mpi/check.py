"""Gradient and contract checks of any op or graph against central finite differences (float64).

    python -m pprs_mpi.check my_graph.py:build [--problem-arg NAME=VALUE ...]   # or a built-in name
    pprs_mpi.check_gradients(graph_or_problem_or_op, ...)

Each node is checked as the engines call it: `op.forward_with_residuals(numpy, *inputs)` and
`op.vjp_with_residuals(numpy, residuals, output, cotangent)` (by default `forward` and `vjp`) on a
batch of inputs, here the values its parents take when random points θ = x0 + scale·N(0, I) flow
through the graph; `op.forward` (the evaluation passes') must give the same output. The VJP must
agree with central differences of ⟨cotangent, forward⟩ (along every input entry for small inputs,
along random directions otherwise),
and the op must keep its contract: an output of the declared shape and of its inputs' dtype (float64
and float32), one cotangent per input of that input's shape, no input changed. A node fails when the
median error over the points exceeds `rtol`, so that one point landing on a kink does not fail it.
The command line also builds the graph twice: a builder that does not build the same graph each time
(unseeded random constants) is named with the first node that differs, since serial runs of it are
not reproducible and ranks of an MPI run would build different graphs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from pprs_mpi.graph import Graph
from pprs_mpi.ops.base import Op

EPS = 1e-6  # finite-difference step
RTOL = 1e-5  # error allowed: max |VJP − FD| over directions / max(1, their magnitudes)
FULL_BASIS = 64  # inputs with at most this many entries are differenced along every entry
DIRECTIONS = 6  # random dense directions, and as many single entries, for larger inputs
KINK = 1e-4  # one-sided slopes further apart than this (relative) mean a kink between x − εv and x + εv


@dataclass
class NodeCheck:
    """The outcome for one node: the worst input slot's error, or the contract it breaks."""

    node: str
    op: str
    error: float  # relative VJP error of the worst input slot (median over points)
    slot: int  # that slot
    broken: str = ""  # a contract violation, or an exception the op raised
    rtol: float = RTOL

    @property
    def ok(self) -> bool:
        return not self.broken and not self.error > self.rtol  # NaN: no differentiable direction to test

    def describe(self) -> str:
        where = f"node {self.node!r} ({self.op})"
        if self.broken:
            return f"{where}: {self.broken}"
        if math.isnan(self.error):
            return f"{where}: not tested: every direction tried crossed a kink"
        verdict = "" if self.ok else f" > {self.rtol:g}: the VJP differs from central finite differences"
        return f"{where}: input {self.slot}: relative error {self.error:.2e}{verdict}"


def check_gradients(target: Graph | Op, *, input_shapes=None, x0=None, points: int = 3, seed: int = 0,
                    scale: float | None = None, rtol: float = RTOL, float32: bool = True) -> list[NodeCheck]:
    """Checks a Graph (or a Problem: its graph from its x0) node by node, or one Op on random inputs of
    `input_shapes` (per-sample shapes, one per input). One NodeCheck per node; `.ok` says it passed.
    `float32=False` leaves out the float32 contract of a graph's nodes."""
    from pprs_mpi.problems import Problem
    if isinstance(target, Problem):
        return check_graph(target.graph, x0=target.x0 if x0 is None else x0, points=points, seed=seed,
                           scale=scale, rtol=rtol, float32=float32)
    if isinstance(target, Graph):
        return check_graph(target, x0=x0, points=points, seed=seed, scale=scale, rtol=rtol, float32=float32)
    if isinstance(target, Op):
        if input_shapes is None:
            raise ValueError("checking a single op needs input_shapes=[per-sample shape of each input]")
        rng = np.random.default_rng(seed)
        samples = [check_op(target, [rng.standard_normal((2, *shape)) for shape in input_shapes], rng=rng)
                   for _ in range(points)]
        return [_combine(type(target).__name__, target.describe(), samples, rtol)]
    raise TypeError(f"check_gradients takes a Graph, a Problem or an Op, got {type(target).__name__}")


def check_graph(graph: Graph, x0=None, points: int = 3, seed: int = 0, scale: float | None = None,
                rtol: float = RTOL, batch: int = 2, float32: bool = True) -> list[NodeCheck]:
    """Every node of `graph`, at the values its parents take for `points` random batches of θ near x0;
    `float32=False` leaves out the float32 contract (a float64 run's --check-gradients)."""
    rng = np.random.default_rng(seed)
    x0 = np.zeros(graph.dim) if x0 is None else np.asarray(x0, dtype=np.float64)
    scale = 0.1 * max(1.0, float(np.max(np.abs(x0), initial=0.0))) if scale is None else scale
    per_node: dict[str, list[tuple[list[float], str]]] = {name: [] for name in graph.order}
    for _ in range(points):
        values = {graph.root: x0 + scale * rng.standard_normal((batch, graph.dim))}
        for name in graph.order:
            inputs = [values[p] for p in graph.parents(name)]
            errors, broken, output = _check_node(graph, name, inputs, rng, float32)
            per_node[name].append((errors, broken))
            if output is None:  # the op cannot run here: later nodes have no inputs to check at this point
                return [_combine(name_, graph.op(name_).describe(), per_node[name_], rtol)
                        for name_ in graph.order if per_node[name_]]
            values[name] = output
    return [_combine(name, graph.op(name).describe(), per_node[name], rtol) for name in graph.order]


def _check_node(graph: Graph, name: str, inputs, rng, float32: bool):
    """(errors, broken, output) of one node; output is None where the children cannot be fed from it."""
    op = graph.op(name)
    try:
        errors, broken = check_op(op, inputs, rng=rng, declared=graph.shape(name), float32=float32)
        output = op.forward(np, *inputs)
    except Exception as err:  # noqa: BLE001 — a user's op may raise anything; it is the check's finding
        return [], f"raised {type(err).__name__}: {err}", None
    fits = getattr(output, "shape", None) == (inputs[0].shape[0], *graph.shape(name))
    return errors, broken, output if fits else None


def check_op(op: Op, inputs: list[np.ndarray], cotangent=None, rng=None, declared: tuple[int, ...] | None = None,
             full_basis: int = FULL_BASIS, float32: bool = True) -> tuple[list[float], str]:
    """(relative VJP error per input slot, the contract broken or ''), for batched float64 `inputs`; inputs
    of at most `full_basis` entries are differenced along every entry; `float32`: the float32 contract too."""
    rng = np.random.default_rng(0) if rng is None else rng
    inputs = [np.asarray(x, dtype=np.float64) for x in inputs]
    before = [x.copy() for x in inputs]
    declared = tuple(op.output_shape(*(x.shape[1:] for x in inputs))) if declared is None else tuple(declared)
    output, residuals = op.forward_with_residuals(np, *inputs)  # the gradient passes' pair, as the engines call it
    broken = _contract(op, inputs, output, declared)
    if broken:
        return [], broken
    if not np.all(np.isfinite(output)):
        return [], "forward gave non-finite values at the test point"
    if not np.array_equal(op.forward(np, *inputs), output):
        return [], "forward and forward_with_residuals give different outputs (the evaluation pass would differ)"
    cotangent = rng.standard_normal(output.shape) if cotangent is None else cotangent
    kept = (output.copy(), np.array(cotangent, copy=True))
    grads = op.vjp_with_residuals(np, residuals, output, cotangent)
    broken = _vjp_contract(inputs, grads, "float64")
    if not broken and not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(before, inputs)):
        broken = "changed one of its inputs in place (ops must be pure)"
    if not broken and not (np.array_equal(kept[0], output) and np.array_equal(kept[1], cotangent)):
        broken = "vjp changed its output or cotangent argument in place (ops must be pure)"
    if not broken and float32:
        broken = _float32_contract(op, inputs, declared)
    if broken:
        return [], broken
    return [_slot_error(op, inputs, k, grads[k], cotangent, rng, full_basis) for k in range(len(inputs))], ""


def _contract(op: Op, inputs, output, declared) -> str:
    expected = (inputs[0].shape[0], *declared)
    if not hasattr(output, "shape") or tuple(output.shape) != expected:
        return (f"forward returned shape {getattr(output, 'shape', type(output).__name__)}, but output_shape "
                f"declares {declared} per sample, i.e. {expected} for this batch")
    if output.dtype != inputs[0].dtype:
        return f"forward returned {output.dtype} for {inputs[0].dtype} inputs (an op keeps its inputs' dtype)"
    return ""


def _vjp_contract(inputs, grads, dtype: str) -> str:
    if not isinstance(grads, (list, tuple)) or len(grads) != len(inputs):
        count = len(grads) if isinstance(grads, (list, tuple)) else type(grads).__name__
        return f"vjp returned {count} cotangent(s) for {len(inputs)} input(s) (one per input, in order)"
    for k, (x, g) in enumerate(zip(inputs, grads)):
        if not hasattr(g, "shape") or tuple(g.shape) != x.shape:
            return f"vjp's cotangent for input {k} has shape {getattr(g, 'shape', None)}, the input has {x.shape}"
        if g.dtype != np.dtype(dtype):
            return f"vjp's cotangent for input {k} is {g.dtype} for {dtype} inputs (an op keeps its inputs' dtype)"
    return ""


def _float32_contract(op: Op, inputs, declared) -> str:
    """The same contract in float32 (the engines' --dtype float32)."""
    single = [x.astype(np.float32) for x in inputs]
    output, residuals = op.forward_with_residuals(np, *single)
    broken = _contract(op, single, output, declared)
    if broken:
        return "in float32: " + broken
    broken = _vjp_contract(single, op.vjp_with_residuals(np, residuals, output, np.ones_like(output)), "float32")
    return "in float32: " + broken if broken else ""


def _slot_error(op: Op, inputs, k: int, grad, cotangent, rng, full_basis: int) -> float:
    """max over directions v of |⟨grad, v⟩ − FD of ⟨cotangent, forward⟩ along v|, over their magnitudes.

    A direction along which the one-sided slopes disagree crosses a kink (e.g. tied maxima after a
    ReLU), where any subgradient is right: it is skipped. NaN when every direction was skipped."""
    x = inputs[k]
    if x.size <= full_basis:
        directions = (np.eye(x.size)[i].reshape(x.shape) for i in range(x.size))
    else:  # dense random directions, and single entries (which can miss a kink that all dense ones cross)
        entries = rng.choice(x.size, DIRECTIONS, replace=False)
        directions = [*(rng.standard_normal(x.shape) / math.sqrt(x.size) for _ in range(DIRECTIONS)),
                      *(np.eye(1, x.size, i).reshape(x.shape) for i in entries)]
    centre = float(np.sum(cotangent * op.forward(np, *inputs)))
    worst, magnitude, used = 0.0, 1.0, 0
    for v in directions:
        moved = [[*inputs[:k], x + step * v, *inputs[k + 1:]] for step in (EPS, -EPS)]
        plus, minus = (float(np.sum(cotangent * op.forward(np, *args))) for args in moved)
        ahead, behind = (plus - centre) / EPS, (centre - minus) / EPS
        if abs(ahead - behind) > KINK * max(1.0, abs(ahead), abs(behind)):
            continue
        numeric, analytic = (plus - minus) / (2 * EPS), float(np.sum(grad * v))
        worst, magnitude = max(worst, abs(numeric - analytic)), max(magnitude, abs(numeric), abs(analytic))
        used += 1
    return worst / magnitude if used else math.nan


def _combine(node: str, op: str, samples: list[tuple[list[float], str]], rtol: float) -> NodeCheck:
    """One verdict from several points: the first contract violation, else the worst slot's median error."""
    for errors, broken in samples:
        if broken:
            return NodeCheck(node, op, math.nan, 0, broken, rtol)
    errors = np.array([errors for errors, _ in samples])
    if errors.size == 0 or np.isnan(errors).all():
        return NodeCheck(node, op, math.nan, 0, "", rtol)
    medians = np.nanmedian(errors, axis=0)
    slot = int(np.nanargmax(medians))
    return NodeCheck(node, op, float(medians[slot]), slot, "", rtol)


def first_difference(problem, again) -> str:
    """Where two builds of the same problem differ ("node 'n'" by its digest, or "x0"); '' if nowhere."""
    mine, theirs = list(problem.graph.fingerprints().items()), list(again.graph.fingerprints().items())
    for position in range(max(len(mine), len(theirs))):
        if mine[position:position + 1] != theirs[position:position + 1]:
            return f"node {(mine if position < len(mine) else theirs)[position][0]!r}"
    if not np.array_equal(problem.x0, again.x0):
        return "x0 (the starting point)"
    return ""


if __name__ == "__main__":  # python -m pprs_mpi.check: the command line in pprs_mpi.cli.check
    from pprs_mpi.cli.check import main
    sys.exit(main())
