"""The layout chosen for the user: the microbatch size b, and the grouping of nodes into stages, that minimise
the predicted time per iteration.

A pass of M = ⌈K/b⌉ microbatches over P stages that work in parallel (one rank each) takes about
(M + P − 1) times its slowest stage's forward and backward of one microbatch; in one process nothing
overlaps and it takes M times the sum of the stages'. A stage's forward and backward of b copies costs

    T_s(b) = Σ_nodes (α + β · w · (b + b₀)) + μ · (its messages)

for a node doing w multiply-adds per copy (its op's `macs`): a fixed α per action (the engine's and the op's
Python), β per multiply-add once b₀ rows keep the matrix kernels busy, μ per message. When there are fewer
stages than nodes, each candidate b groups the nodes into contiguous stages balanced by the same per-node
costs at b (`--balance auto`, the default), so a stage of many cheap nodes pays for its actions.
With `--microbatch-size auto` (the default) these are the constants below, so the choice is a function of the
configuration and the graph alone and the same command always computes the same iterates; with `measured`
T_s(b) comes from timing the stage's nodes at a few batch sizes on this machine (recorded in the trace, and
reused by a resume). Runs whose pipeline time follows the paper's units (`--simulated-depth`) keep b = 1.

Like torch pipelining's `_simulate_comms_compute`, this predicts the makespan instead of running it; it knows
nothing of MPI or the trace.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from pprs_mpi.graph import Graph
from pprs_mpi.ops._util import MACS_PER_COST_UNIT

AUTO, MEASURED = "auto", "measured"
REQUESTS = (AUTO, MEASURED)
#: the fixed machine model of `auto`, from this project's 2-core x86 VM, float64, one BLAS thread: seconds per
#: action (engine and op call, benchmarks/engine_overhead.py), per multiply-add of a forward and its VJP, per
#: message (pipeline_efficiency.py's empty pipeline), and the rows b₀ a product costs beyond its b (a
#: b × 512 × 512 NumPy product takes about (b + 15) × 8.2 µs for b from 8 to 64: microbatch_sweep.py).
ACTION_S, MAC_S, MESSAGE_S, EFFICIENT_ROWS = 8e-6, 6e-11, 1e-5, 16


Regroup = Callable[[dict[str, float]], Sequence[Sequence[str]]]  # per-node seconds -> the nodes of each stage


class LayoutError(ValueError):
    """A microbatch size no run can use; the message is one line naming the value and the limit."""


@dataclass(frozen=True)
class Candidate:
    microbatch_size: int
    n_microbatches: int
    predicted_s: float  # per iteration (gradient pass), by the model
    nodes_per_stage: tuple[int, ...] = ()  # the grouping weighed with it (empty in traces written before it)


@dataclass(frozen=True)
class Layout:
    """The chosen microbatch size, why (`rule`), the candidates weighed (empty when none were), and the
    nodes of each stage where the planner grouped them (None: the caller's grouping stands)."""

    microbatch_size: int
    rule: str
    candidates: tuple[Candidate, ...] = ()
    stages: tuple[tuple[str, ...], ...] | None = None

    def as_dict(self) -> dict:
        """What the trace records (its stage_nodes hold the grouping)."""
        return {"microbatch_size": self.microbatch_size, "rule": self.rule,
                "candidates": [asdict(c) for c in self.candidates]}

    def describe(self) -> str:
        """b and why, with the predicted time per iteration of the choice and of the runner-up."""
        ranked = sorted(self.candidates, key=lambda c: c.predicted_s)
        if len(ranked) < 2:
            return f"b={self.microbatch_size} ({self.rule})"
        return (f"b={self.microbatch_size} ({self.rule}; predicted {_ms(ranked[0])} per iteration, "
                f"next best b={ranked[1].microbatch_size}: {_ms(ranked[1])})")


def _ms(candidate: Candidate) -> str:
    return f"{candidate.predicted_s * 1e3:.3g} ms"


def parse(text: str) -> int | str:
    """A --microbatch-size value: a count of copies, `auto` or `measured`."""
    if text in REQUESTS:
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"microbatch-size must be a count >= 1, auto or measured, got {text!r}") from None


def valid(value) -> bool:
    return value in REQUESTS or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def choose(request: int | str, K: int, stages: Sequence[Sequence[str]], graph: Graph, parallel: bool,
           max_rows: int, simulated: bool = False, stored: int | None = None,
           measure: Callable[[int], dict[str, float]] | None = None, regroup: Regroup | None = None) -> Layout:
    """The layout for `request` (a forced b, `auto` or `measured`) of K copies over len(stages) stages; `parallel`
    when each stage has its own rank, `max_rows` the most copies one microbatch may hold (memory), `stored` a
    resumed run's earlier choice, `measure(b)` seconds of each node's forward and VJP on b copies.

    With `regroup` (which groups the nodes into len(stages) stages by per-node seconds) each candidate b is
    weighed with the nodes regrouped by the model's cost of each node at b, and the layout holds the grouping
    chosen; without it every candidate keeps `stages`."""
    fixed = _fixed(request, K, stored, simulated)
    if fixed is not None and regroup is None:
        return Layout(*fixed)
    if fixed is None and request == MEASURED and measure is not None:
        sizes = _sizes(K, len(stages) if parallel else 1, max_rows)
        seconds = _measured_seconds(graph, measure, sorted({1, min(K, max_rows), sizes[len(sizes) // 2]}))
        rule = "measured on this machine"
    else:
        seconds, rule = _declared_seconds(graph), "the ops' declared costs"

    def grouping(b: int) -> tuple[tuple[str, ...], ...]:
        return tuple(map(tuple, stages if regroup is None else regroup(seconds(b))))

    if fixed is not None:
        return Layout(*fixed, stages=grouping(fixed[0]))
    rule += (f", {len(stages)} ranks in parallel" if parallel and len(stages) > 1
             else ", one process: nothing overlaps")
    if regroup is not None and parallel and len(stages) > 1:
        rule += ", nodes grouped into stages by the same model"
    candidates = []
    for b in _sizes(K, len(stages) if parallel else 1, max_rows):
        grouped, M = grouping(b), -(-K // b)
        costs = _stage_seconds(grouped, seconds(b), graph)
        predicted = (M + len(costs) - 1) * max(costs) if parallel else M * sum(costs)
        candidates.append(Candidate(b, M, predicted, tuple(map(len, grouped))))
    best = min(candidates, key=lambda c: (c.predicted_s, -c.microbatch_size))
    return Layout(best.microbatch_size, rule, tuple(candidates), grouping(best.microbatch_size) if regroup else None)


def _fixed(request: int | str, K: int, stored: int | None, simulated: bool) -> tuple[int, str] | None:
    """(b, why) where no candidates are weighed: a forced b, a resumed run's, paper units; else None."""
    if isinstance(request, int):
        if request > K:
            raise LayoutError(f"microbatch-size {request} is larger than K = {K}: a microbatch holds at most the "
                              "K noisy copies")
        return request, "given"
    if stored is not None:
        if stored > K:
            raise LayoutError(f"the resumed run's microbatch size {stored} is larger than K = {K}")
        return stored, "the resumed run's choice"
    if simulated:
        return 1, "paper units (--simulated-depth): one copy per microbatch"
    return None


def _sizes(K: int, P: int, max_rows: int) -> list[int]:
    """Candidate b: ⌈K/M⌉ for M up to 4P microbatches (the pipeline's useful depth), largest first."""
    return sorted({min(max_rows, -(-K // M)) for M in range(1, min(K, 4 * P) + 1)}, reverse=True)


def _stage_seconds(stages, node_seconds: dict[str, float], graph: Graph) -> list[float]:
    """T_s(b): the stage's nodes' seconds at b plus its messages."""
    return [sum(node_seconds[n] for n in names) + _messages(s, stages, graph) * MESSAGE_S
            for s, names in enumerate(stages)]


def _declared_seconds(graph: Graph) -> Callable[[int], dict[str, float]]:
    """Each node's α + β·w·(b + b₀), w its op's declared multiply-adds per copy (`Op.macs`, else from a `cost`
    above the default)."""
    def macs(name: str) -> float:
        op = graph.op(name)
        return op.macs or (op.cost * MACS_PER_COST_UNIT if op.cost > 1.0 else 0.0)
    work = {name: macs(name) * MAC_S for name in graph.order}
    return lambda b: {name: ACTION_S + w * (b + EFFICIENT_ROWS) for name, w in work.items()}


def _measured_seconds(graph: Graph, measure, points: list[int]) -> Callable[[int], dict[str, float]]:
    """Each node's seconds at b, interpolated linearly between its timings at `points` copies."""
    timed = [measure(b) for b in points]
    return lambda b: {name: _interpolate(points, [t[name] for t in timed], b) for name in graph.order}


def _interpolate(xs: list[int], ys: list[float], x: int) -> float:
    for i in range(1, len(xs)):
        if x <= xs[i] or i == len(xs) - 1:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[0]


def _messages(stage: int, stages, graph: Graph) -> int:
    """Messages stage `stage` sends per microbatch, forward and backward: its edges to and from other stages
    (the root θ lives on stage 0)."""
    names = stages[stage]
    inside = set(names) | ({graph.root} if stage == 0 else set())
    out = sum(1 for n in names for c in graph.children[n] if c not in inside)
    back = sum(1 for n in names for p in graph.parents(n) if p not in inside)
    return out + back


def max_rows(graph: Graph, max_entries: int) -> int:
    """The most copies a microbatch may hold for its largest array to have at most `max_entries` entries."""
    largest = max(math.prod(graph.shape(name)) for name in (graph.root, *graph.order))
    return max(1, max_entries // largest)
