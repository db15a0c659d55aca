"""The layout chosen for the user: the microbatch size b, and the grouping of nodes into stages, that minimise
the predicted time per iteration.

A pass of M = ⌈K/b⌉ microbatches over P stages that work in parallel (one rank each) takes about
(M + P − 1) times its slowest stage's forward and backward of one microbatch; in one process nothing
overlaps and it takes M times the sum of the nodes' (no messages: its stages hand on arrays in memory).
A stage's forward and backward of b copies costs

    T_s(b) = Σ_nodes (α + β · w · (b + b₀)) + μ · (its messages)

for a node doing w multiply-adds per copy (its op's `macs`): a fixed α per action (the engine's and the op's
Python), β per multiply-add once b₀ rows keep the matrix kernels busy, μ per message. When there are fewer
stages than nodes, each candidate b groups the nodes into contiguous stages balanced by the same per-node
costs at b (`--balance auto`, the default), so a stage of many cheap nodes pays for its actions.
With `--microbatch-size auto` (the default) these are the constants below, so the choice is a function of the
configuration and the graph alone and the same command always computes the same iterates; with `measured`
T_s(b) comes from timing the stage's nodes at a few batch sizes on this machine, and on ranks μ also from timing
messages between neighbouring ranks (`MessageCost`: this network's latency beyond the reference machine's, and
its cost per byte of the microbatch's array); the choice is recorded in the trace and reused by a resume. Runs
whose pipeline time follows the paper's units (`--simulated-depth`) keep b = 1.

That formula holds for equal stages. Where the layout is small (`SIMULATED_ACTIONS`), the planner instead
simulates the run's own schedule with these action times, as torch pipelining's `_simulate_comms_compute`
does, and moves stage boundaries while the simulated makespan falls: under 1F1B the stage holding the leaf
runs a microbatch's forward and backward back to back, so giving it fewer nodes than an even split can
shorten the pass. The planner predicts the makespan instead of running it; it knows nothing of MPI or the trace.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

from pprs_mpi.graph import Graph
from pprs_mpi.ops._util import MACS_PER_COST_UNIT
from pprs_mpi.schedule import Forward, Schedule

AUTO, MEASURED = "auto", "measured"
DECLARED_RULE = "the ops' declared costs"  # how a rule from the fixed machine model below begins
REQUESTS = (AUTO, MEASURED)
#: the fixed machine model of `auto`, from this project's 2-core x86 VM, float64, one BLAS thread: seconds per
#: action (engine and op call, benchmarks/engine_overhead.py), per multiply-add of a forward and its VJP, per
#: message (pipeline_efficiency.py's empty pipeline), and the rows b₀ a product costs beyond its b (a
#: b × 512 × 512 NumPy product takes about (b + 15 to 18) × 8.2 to 8.8 µs for b from 8 to 64: microbatch_sweep.py).
ACTION_S, MAC_S, MESSAGE_S, EFFICIENT_ROWS = 8e-6, 6e-11, 1e-5, 16
#: the MPI ping-pong latency of the machine MESSAGE_S was measured on (pipeline_efficiency.py): MESSAGE_S is that
#: machine's engine and MPI cost of a message, so a measured network adds what its latency exceeds this by
PING_PONG_S = 2e-6
BYTES_PER_ENTRY = 8  # a message's array entries are float64 (float32 runs send half: the model errs high)
#: the planner simulates the candidates' schedules when they have at most SIMULATED_ACTIONS actions in all and
#: SEARCHED_STAGES stages (a few tenths of a second of start-up); larger layouts are predicted by the formula
SIMULATED_ACTIONS, SEARCHED_STAGES = 20_000, 16
#: one process is worth suggesting when the model predicts the pipeline this many times slower: the declared model
#: errs by a fifth and more (vs_hand_loop: it predicts two ranks 14-23% slower than one process for the attack CNN
#: and the width-64 MLP, which measure within 1% of it or faster), not by half (lad: 1.55x predicted, 1.22x measured)
ONE_PROCESS_RATIO = 1.5


Regroup = Callable[[dict[str, float]], Sequence[Sequence[str]]]  # per-node seconds -> the nodes of each stage


class LayoutError(ValueError):
    """A microbatch size no run can use; the message is one line naming the value and the limit."""


@dataclass(frozen=True)
class MessageCost:
    """Messages between neighbouring ranks as timed at start-up (`message_cost.measure`): the slowest pair's half
    round trip of one number, the cost of each further byte, and how many pairs were timed."""

    latency_s: float
    per_byte_s: float
    pairs: int

    def seconds(self, nbytes: float) -> float:
        """The model's μ for a message of `nbytes`: the reference machine's MESSAGE_S, plus this network's latency
        beyond that machine's, plus its bytes."""
        return MESSAGE_S + max(0.0, self.latency_s - PING_PONG_S) + nbytes * self.per_byte_s

    def describe(self) -> str:
        return (f"messages timed between {self.pairs} neighbouring rank pair(s): {self.latency_s * 1e6:.3g} µs "
                f"+ {self.per_byte_s * 1e9:.3g} ns per byte")


@dataclass(frozen=True)
class Candidate:
    microbatch_size: int
    n_microbatches: int
    predicted_s: float  # per iteration (gradient pass), by the model
    nodes_per_stage: tuple[int, ...] = ()  # the grouping weighed with it (empty in traces written before it)
    schedule: str = ""  # the schedule weighed with it, where the planner weighed several ("" otherwise)


@dataclass(frozen=True)
class Layout:
    """The chosen microbatch size, why (`rule`), the candidates weighed (empty when none were), the nodes of each
    stage where the planner grouped them and the schedule where it chose one (None: the caller's stands), and
    for a pipeline the model's time per iteration of the same graph in one process (`one_process_s`)."""

    microbatch_size: int
    rule: str
    candidates: tuple[Candidate, ...] = ()
    stages: tuple[tuple[str, ...], ...] | None = None
    schedule: str | None = None
    one_process_s: float | None = None
    messages: MessageCost | None = None  # timed at start-up (`measured` on ranks); else the fixed MESSAGE_S

    def as_dict(self) -> dict:
        """What the trace records (its stage_nodes hold the grouping)."""
        return {"microbatch_size": self.microbatch_size, "rule": self.rule, "schedule": self.schedule,
                "candidates": [asdict(c) for c in self.candidates], "one_process_s": self.one_process_s,
                "messages": None if self.messages is None else asdict(self.messages)}

    def describe(self) -> str:
        """b and why, with the predicted time per iteration of the choice, of the best other candidate and, for a
        pipeline, of one process."""
        chosen = self._chosen()
        others = sorted((c for c in self.candidates if c is not chosen), key=lambda c: c.predicted_s)
        if chosen is None or not others:
            return f"b={self.microbatch_size} ({self.rule})"
        one = f", one process: {self.one_process_s * 1e3:.3g} ms" if self.one_process_s is not None else ""
        return (f"b={self.microbatch_size}{_under(chosen)} ({self.rule}; predicted {_ms(chosen)} per "
                f"iteration, next best b={others[0].microbatch_size}{_under(others[0])}: {_ms(others[0])}{one})")

    @property
    def predicted_s(self) -> float | None:
        """The model's time per iteration (gradient pass) of the choice; None where no candidates were weighed."""
        chosen = self._chosen()
        return None if chosen is None else chosen.predicted_s

    def one_process_note(self, stages: int) -> str | None:
        """A line for the user when the model predicts this pipeline of `stages` stages ONE_PROCESS_RATIO times
        slower than one process or more (a graph too light for its messages), else None."""
        chosen = self._chosen()
        if self.one_process_s is None or chosen is None or chosen.predicted_s < ONE_PROCESS_RATIO * self.one_process_s:
            return None
        return (f"note: the planner predicts {self.one_process_s * 1e3:.3g} ms per iteration in one process against "
                f"{_ms(chosen)} on these {stages} stages: this graph's stages are too light for what their messages "
                "cost, so one process (no mpirun, no --stages) or fewer stages should be faster")

    def _chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.microbatch_size == self.microbatch_size
                     and c.schedule == (self.schedule or c.schedule)), None)


def _ms(candidate: Candidate) -> str:
    return f"{candidate.predicted_s * 1e3:.3g} ms"


def _under(candidate: Candidate) -> str:
    return f" under {candidate.schedule}" if candidate.schedule else ""


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
           measure: Callable[[int], dict[str, float]] | None = None, regroup: Regroup | None = None,
           schedules: Mapping[str, Callable[[tuple, int], Schedule]] | None = None,
           messages: MessageCost | None = None) -> Layout:
    """The layout for `request` (a forced b, `auto` or `measured`) of K copies over len(stages) stages; `parallel`
    when each stage has its own rank, `max_rows` the most copies one microbatch may hold (memory), `stored` a
    resumed run's earlier choice, `measure(b)` seconds of each node's forward and VJP on b copies, `messages`
    the timed cost of a message between the ranks (`measured`; else every message costs MESSAGE_S).

    With `regroup` (which groups the nodes into len(stages) stages by per-node seconds) each candidate b is
    weighed with the nodes regrouped by the model's cost of each node at b, and the layout holds the grouping
    chosen; without it every candidate keeps `stages`. `schedules` maps the schedules to weigh (the run's one, or
    several for `--schedule auto`, the preferred first) to their builders `build(stages, M)`: on a small enough
    layout each candidate (b, schedule) is its schedule simulated with the model's action times rather than the
    formula, the grouping is improved by moving stage boundaries while that helps, and the layout holds the
    schedule chosen; elsewhere the first schedule stands. Near-ties go to the larger b, then the earlier schedule."""
    fixed = _fixed(request, K, stored, simulated)
    names = list(schedules or ())
    if fixed is not None and regroup is None and len(names) <= 1:
        return Layout(*fixed)
    P = len(stages) if parallel else 1
    sizes = [fixed[0]] if fixed is not None else _sizes(K, P, max_rows)
    seconds, rule = _cost_model(request if fixed is None else None, graph, measure, K, max_rows, sizes)
    messages = messages if rule != DECLARED_RULE and P > 1 else None
    simulating = P > 1 and bool(names) and _simulable(P, [-(-K // b) for b in sizes], len(graph.order))
    model = _Model(K, P, graph, seconds, schedules or {}, simulating, names if simulating else names[:1], messages)
    groupings = {b: tuple(map(tuple, stages if regroup is None else regroup(seconds(b)))) for b in sizes}
    candidates = {(b, name): model.candidate(b, name, grouped)
                  for b, grouped in groupings.items() for name in model.options}
    searching = regroup is not None and simulating and _contiguous(next(iter(groupings.values())), graph)
    finalists = {}  # per schedule, its best b with that b's stage boundaries moved while its simulated time falls
    for name in model.options:
        b = _preferred([c for (_, n), c in candidates.items() if n == name], model.weighed).microbatch_size
        grouping = groupings[b]
        if searching:
            grouping, predicted = _improve(grouping, lambda grouped: model.predict(grouped, b, name))
            candidates[b, name] = model.candidate(b, name, grouping, predicted)
        finalists[name] = (candidates[b, name], grouping)
    name = _preferred([c for c, _ in finalists.values()], model.weighed).schedule or model.options[0]
    best, grouping = finalists[name]
    stages_chosen, schedule_chosen = (grouping if regroup else None), (name if model.choosing else None)
    if fixed is not None:
        return Layout(*fixed, stages=stages_chosen, schedule=schedule_chosen)
    one_process = None
    if P > 1:  # the same model's best time in one process (nothing overlaps, no messages), for the user to compare
        alone = _Model(K, 1, graph, seconds, {}, False, [])
        one_process = min(alone.predict((tuple(graph.order),), b, None) for b in _sizes(K, 1, max_rows))
    rule += f", {P} ranks in parallel" if P > 1 else ", one process: nothing overlaps"
    if messages is not None:
        rule += f", {messages.describe()}"
    if simulating:
        rule += f", the schedules {' and '.join(model.weighed)} simulated" if model.choosing else \
            ", the schedule simulated"
    if regroup is not None and P > 1:
        rule += ", nodes grouped into stages by the same model" + (
            " and moved while the simulated time falls" if searching else "")
    return Layout(best.microbatch_size, rule, tuple(candidates.values()), stages_chosen, schedule_chosen, one_process,
                  messages)


def _cost_model(request, graph: Graph, measure, K: int, max_rows: int, sizes: list[int]):
    """(b -> each node's seconds at b, the words saying where they come from): timed for `measured` where a
    `measure` is given, else the ops' declared multiply-adds under the fixed machine model."""
    if request == MEASURED and measure is not None:
        points = sorted({1, min(K, max_rows), sizes[len(sizes) // 2]})
        return _measured_seconds(graph, measure, points), "measured on this machine"
    return _declared_seconds(graph), DECLARED_RULE


@dataclass(frozen=True)
class _Model:
    """The predicted time per iteration of a candidate (grouping, b, schedule): its schedule simulated with the
    model's action times where `simulating`, else the formula."""

    K: int
    P: int
    graph: Graph
    seconds: Callable[[int], dict[str, float]]
    schedules: Mapping[str, Callable[[tuple, int], Schedule]]
    simulating: bool
    weighed: list[str]  # the schedules weighed: several only where the planner chooses between them
    messages: MessageCost | None = None  # timed; None: every message costs MESSAGE_S

    @property
    def choosing(self) -> bool:
        """Whether a schedule is chosen (and named in the candidates and the layout)."""
        return len(self.weighed) > 1

    @property
    def options(self) -> list:
        return self.weighed or [None]

    def predict(self, grouped: tuple, b: int, name: str | None) -> float:
        M, node_seconds = -(-self.K // b), self.seconds(b)
        if self.P == 1:  # one process: nothing overlaps, and its stages hand on arrays in memory, not as messages
            return M * sum(node_seconds.values())
        message_seconds = self.message_seconds(b)
        if self.simulating:
            return _simulate(self.schedules[name](grouped, M), self.graph, node_seconds, message_seconds)
        costs = _stage_seconds(grouped, node_seconds, self.graph, message_seconds)
        return (M + len(costs) - 1) * max(costs)

    def message_seconds(self, b: int) -> dict[str, float]:
        """Per node (and the root), μ for a message carrying its array (its output, or its cotangent) at b copies."""
        names = (self.graph.root, *self.graph.order)
        if self.messages is None:
            return dict.fromkeys(names, MESSAGE_S)
        return {n: self.messages.seconds(b * math.prod(self.graph.shape(n)) * BYTES_PER_ENTRY) for n in names}

    def candidate(self, b: int, name: str | None, grouped: tuple, predicted: float | None = None) -> Candidate:
        """The candidate (b, schedule `name`, grouping), predicted unless its `predicted` time is known."""
        predicted = self.predict(grouped, b, name) if predicted is None else predicted
        return Candidate(b, -(-self.K // b), predicted, tuple(map(len, grouped)), name if self.choosing else "")


def _preferred(candidates, names: list[str]) -> Candidate:
    """The fastest candidate, where those within rounding of it (relative 1e-9) go to the larger b and then to the
    schedule listed first: a schedule is not switched for a difference the model cannot tell."""
    candidates = list(candidates)
    fastest = min(c.predicted_s for c in candidates)
    near = [c for c in candidates if c.predicted_s <= fastest * (1 + 1e-9)]
    return min(near, key=lambda c: (-c.microbatch_size, names.index(c.schedule) if c.schedule in names else 0))


def _contiguous(stages: tuple, graph: Graph) -> bool:
    """Whether the stages are consecutive runs of the topological order (a schedule's own placement may not be,
    and its grouping then stands)."""
    return [name for group in stages for name in group] == list(graph.order)


def _simulable(P: int, Ms: list[int], nodes: int) -> bool:
    """Whether the planner simulates the candidates' schedules (of Ms microbatches): few stages, few actions."""
    return P <= SEARCHED_STAGES and 2 * nodes * sum(Ms) <= SIMULATED_ACTIONS


def _simulate(plan: Schedule, graph: Graph, node_seconds: dict[str, float], message_seconds: dict[str, float]) -> float:
    """The makespan of `plan` when each stage runs its actions in the schedule's order, each as soon as its
    inputs are there: a forward or a backward takes half its node's modelled seconds plus μ per edge it sends
    over to another stage, and a message arrives μ after it was sent (μ: `message_seconds` of the node whose
    array it carries)."""
    stage_of = {name: s for s, names in enumerate(plan.stages) for name in names}
    stage_of[graph.root] = 0
    sends_forward = {v: message_seconds[v] * sum(stage_of[c] != stage_of[v] for c in graph.children[v])
                     for v in graph.order}
    sends_backward = {v: sum(message_seconds[p] for p in graph.parents(v) if stage_of[p] != stage_of[v])
                      for v in graph.order}
    forward_done, backward_done, free = {}, {}, [0.0] * len(plan.stages)
    for _, s, action in sorted(((t, s, a) for s, row in enumerate(plan.timed) for t, a in row),
                               key=lambda event: event[:2]):
        v, mb = action.node, action.mb
        if isinstance(action, Forward):
            ready = [_arrival(forward_done, p, mb, s, stage_of, message_seconds[p])
                     for p in graph.parents(v) if p != graph.root]
            seconds, done = node_seconds[v] / 2 + sends_forward[v], forward_done
        else:
            ready = [forward_done[v, mb], *(_arrival(backward_done, c, mb, s, stage_of, message_seconds[v])
                                            for c in graph.children[v])]
            seconds, done = node_seconds[v] / 2 + sends_backward[v], backward_done
        free[s] = done[v, mb] = max([free[s], *ready]) + seconds
    return max(free)


def _arrival(done: dict, node: str, mb: int, stage: int, stage_of: dict, seconds: float) -> float:
    """When `node`'s output (or cotangent) for microbatch mb is at `stage`: at once on its own stage, `seconds`
    (the message's μ) after it is done on another (a pipeline that waits on each message, like 1F1B's steady
    state, pays it)."""
    return done[node, mb] + (seconds if stage_of[node] != stage else 0.0)


def _improve(stages: tuple, predict: Callable[[tuple], float]) -> tuple[tuple, float]:
    """A local search from `stages`: moves one boundary between neighbouring stages by one node, keeping every
    move that lowers the prediction (beyond rounding), until none does; returns the grouping and its prediction."""
    best, best_s, improved = stages, predict(stages), True
    while improved:
        improved = False
        for i in range(len(best) - 1):
            for step in (-1, 1):
                moved = _move_boundary(best, i, step)
                if moved is not None and (seconds := predict(moved)) < best_s * (1 - 1e-9):  # not a rounding
                    best, best_s, improved = moved, seconds, True
    return best, best_s


def _move_boundary(stages: tuple, i: int, step: int) -> tuple | None:
    """`stages` (contiguous in one order) with the boundary after stage i moved `step` nodes later; None when a
    stage would be left empty."""
    names = [name for group in stages for name in group]
    bounds = [0, *itertools.accumulate(map(len, stages))]
    bounds[i + 1] += step
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        return None
    return tuple(tuple(names[a:b]) for a, b in zip(bounds, bounds[1:]))


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


def _stage_seconds(stages, node_seconds: dict[str, float], graph: Graph, message_seconds: dict[str, float]) -> list:
    """T_s(b): the stage's nodes' seconds at b plus its messages'."""
    return [sum(node_seconds[n] for n in names) + _messages(s, stages, graph, message_seconds)
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


def _messages(stage: int, stages, graph: Graph, message_seconds: dict[str, float]) -> float:
    """Seconds of the messages stage `stage` sends per microbatch, forward and backward: one per edge to or from
    another stage (the root θ lives on stage 0), each carrying the array of the edge's parent."""
    names = stages[stage]
    inside = set(names) | ({graph.root} if stage == 0 else set())
    out = sum(message_seconds[n] for n in names for c in graph.children[n] if c not in inside)
    back = sum(message_seconds[p] for n in names for p in graph.parents(n) if p not in inside)
    return out + back


def max_rows(graph: Graph, max_entries: int) -> int:
    """The most copies a microbatch may hold for its largest array to have at most `max_entries` entries."""
    return max(1, max_entries // largest_entries(graph))


def largest_entries(graph: Graph) -> int:
    """Entries per copy of the graph's largest array (θ's or a node's output): a microbatch's largest message."""
    return max(math.prod(graph.shape(name)) for name in (graph.root, *graph.order))
