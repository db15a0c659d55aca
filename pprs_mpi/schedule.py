"""Pipeline schedules as data (paper Algorithm 1, step 3, and Figure 2).

A schedule says, for every stage (one MPI rank) and every time unit, which forward or backward
of which node on which microbatch runs there, or that the stage idles (an explicit bubble,
`None`). One action takes one time unit, completes at the end of it, and its result can be used
from the next unit on (the paper's model with communication time τ = 0).

Every schedule is a greedy list schedule: unit after unit, every stage starts at most one action
whose dependencies completed at earlier units, chosen by a policy. A policy is registered as a
`ScheduleSpec` (`register`); `SPECS` holds them by name, and `--schedule`, `build` and the tests
that hold for every schedule go through it, so a new policy is its spec and its tests. The built-in
ones:

- `gpipe` (fill-drain, the paper's Figure 2): a stage runs all its forwards before any backward.
- `1f1b` (PipeDream-flush): a stage prefers a ready backward, and stage s keeps at most P - s
  microbatches in flight per node (forward done, backward not), which bounds activation memory
  by the number of stages instead of the number of microbatches.

Tie-breaking is deterministic. Every node handles its microbatches in increasing order, in both
directions, so the root receives the gradients in sample order whatever the schedule. Among a
stage's candidates, the lower microbatch goes first; on equal microbatches a forward goes to the
node earliest in topological order and a backward to the node latest in it (the backward wave
mirrors the forward one). The topological order is Kahn's algorithm over `parents`, breaking
ties by the insertion order of `parents`.

Guarantees (proofs in tests/test_schedule.py). No legal schedule beats max(2(M + Δ - 1),
2M × nodes of the biggest stage). With one node per stage in topological order both schedulers
reach 2(M + Δ - 1) exactly, Δ the longest path in nodes. With grouped stages both are legal and
finish within 2M × nodes units; 1F1B holds at most nodes × min(M, P - s) activations on stage s,
GPipe exactly nodes × M, and either may be the faster one.

This module is pure: no arrays, no MPI.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from pprs_mpi.graph import topological_order


class ScheduleError(ValueError):
    """An illegal schedule or an unschedulable stage layout; the message names the culprit."""


@dataclass(frozen=True)
class Forward:
    """Forward pass of `node` on microbatch `mb`."""

    node: str
    mb: int


@dataclass(frozen=True)
class Backward:
    """Vector-Jacobian product of `node` on microbatch `mb`."""

    node: str
    mb: int


Action = Forward | Backward | None  # None is an explicit bubble



@dataclass(frozen=True)
class Schedule:
    """Per-stage actions with their time units: `timed[stage]` lists (unit, action) in unit order, bubbles
    left out, so that a schedule of P stages holds its O(P × M) actions, not P × makespan cells; `row(stage)`
    is one stage's full row, one entry per unit."""

    stages: tuple[tuple[str, ...], ...]
    n_microbatches: int
    timed: tuple[tuple[tuple[int, Action], ...], ...]
    makespan: int  # number of time units (the rows' length)

    @classmethod
    def from_rows(cls, stages, n_microbatches: int, actions) -> "Schedule":
        """A schedule from full rows, `actions[stage][unit]` (None: a bubble), every row as long as the makespan."""
        makespan = max((len(row) for row in actions), default=0)
        for s, row in enumerate(actions):
            if len(row) != makespan:
                raise ScheduleError(f"stage {s}: {len(row)} units, other stages have {makespan}")
        timed = tuple(tuple((t, a) for t, a in enumerate(row) if a is not None) for row in actions)
        return cls(tuple(tuple(nodes) for nodes in stages), n_microbatches, timed, makespan)

    def row(self, stage: int) -> tuple[Action, ...]:
        """Stage `stage`'s action at every time unit (None: a bubble)."""
        cells: list[Action] = [None] * self.makespan
        for t, action in self.timed[stage]:
            cells[t] = action
        return tuple(cells)

    @property
    def actions(self) -> tuple[tuple[Action, ...], ...]:
        """Every stage's full row: P × makespan cells, for small schedules (tests, `grid`)."""
        return tuple(self.row(s) for s in range(len(self.timed)))

    def stage_of(self, node: str) -> int:
        """Index of the stage that owns `node`."""
        for s, nodes in enumerate(self.stages):
            if node in nodes:
                return s
        raise KeyError(f"node {node!r} is in no stage")

    def validate(self, parents: Mapping[str, Sequence[str]]) -> None:
        """Raise ScheduleError naming the first illegal action; return None if the schedule is legal."""
        dag = _Dag(self.stages, parents)
        M = self.n_microbatches
        if M < 1:
            raise ScheduleError(f"n_microbatches must be >= 1, got {M}")
        if len(self.timed) != len(self.stages):
            raise ScheduleError(f"{len(self.timed)} action rows for {len(self.stages)} stages")
        if self.makespan and all(not row or row[-1][0] != self.makespan - 1 for row in self.timed):
            raise ScheduleError(f"unit {self.makespan - 1}: every stage idles; the makespan is not tight")
        done: dict[Action, int] = {}
        for s, row in enumerate(self.timed):
            previous = -1
            for t, action in row:
                if not previous < t < self.makespan:
                    raise ScheduleError(f"stage {s}: unit {t} is out of order or outside 0..{self.makespan - 1}")
                previous = t
                if not isinstance(action, (Forward, Backward)):
                    raise ScheduleError(f"stage {s}, unit {t}: {action!r} is not an action")
                if dag.stage.get(action.node) != s:
                    raise ScheduleError(f"stage {s}, unit {t}: {action!r} belongs to a node this stage does not own")
                if not 0 <= action.mb < M:
                    raise ScheduleError(f"stage {s}, unit {t}: {action!r} has a microbatch outside 0..{M - 1}")
                if action in done:
                    raise ScheduleError(f"stage {s}, unit {t}: {action!r} already ran at unit {done[action]}")
                done[action] = t
        every = [kind(node, mb) for node in dag.order for mb in range(M) for kind in (Forward, Backward)]
        for action in every:
            if action not in done:
                raise ScheduleError(f"{action!r} never runs")
        for action in every:
            for dep in dag.dependencies(action):
                if done[dep] >= done[action]:
                    raise ScheduleError(
                        f"{action!r} runs at unit {done[action]} but needs {dep!r}, "
                        f"which completes at the end of unit {done[dep]}")

    def live_activations(self) -> list[int]:
        """Per stage, the peak number of (node, mb) whose forward is done and backward is not (legal schedules)."""
        peaks = []
        for row in self.timed:
            live = peak = 0
            for _, action in row:
                live += isinstance(action, Forward) - isinstance(action, Backward)
                peak = max(peak, live)
            peaks.append(peak)
        return peaks

    def grid(self) -> str:
        """Stage × time table, one row per stage: 'F<mb>'/'B<mb>', with ':<node>' on stages of several nodes."""
        def cell(action: Action, several: bool) -> str:
            if action is None:
                return "."
            text = f"{'F' if isinstance(action, Forward) else 'B'}{action.mb}"
            return f"{text}:{action.node}" if several else text

        cells = [[cell(a, len(nodes) > 1) for a in row] for nodes, row in zip(self.stages, self.actions)]
        width = max([len(str(self.makespan - 1))] + [len(c) for row in cells for c in row])
        label = len(f"stage {len(self.stages) - 1}")
        lines = [f"{'unit':<{label}} | " + " ".join(f"{t:<{width}}" for t in range(self.makespan)).rstrip()]
        lines += [f"{f'stage {s}':<{label}} | " + " ".join(f"{c:<{width}}" for c in row).rstrip()
                  for s, row in enumerate(cells)]
        return "\n".join(lines)


def contiguous_placement(graph, n_stages: int, costs: Mapping[str, float] | None = None) -> list[tuple[str, ...]]:
    """The default placement: contiguous runs of the topological order, balanced by cost (`Graph.stages`)."""
    return graph.stages(n_stages, costs)


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule.

    - policy: `policy(stage, ready, state)` picks the action `stage` starts at the current unit among its
      `ready` ones (or None to idle); the list scheduler makes every result legal, and `build` checks it.
      The choice may depend on the stage, its ready actions and its own nodes' counters in `state` only:
      a stage that idled is asked again only once one of those changed.
    - placement: `placement(graph, n_stages, costs)` groups the graph's nodes into stages, by default into
      contiguous runs of the topological order of balanced cost (`Graph.stages`); any grouping works in
      both engines, edges may point to an earlier stage (an interleaved schedule places round-robin).
    - evaluation pass: not the policy's: f(y) is one forward of each node in topological order, which
      both engines run without a schedule (serial: in that order across stages; MPI: each rank in its
      own order, waiting on its receives).
    """

    name: str
    policy: Callable[[int, list[Action], "_State"], Action]
    summary: str
    placement: Callable[..., list[tuple[str, ...]]] = contiguous_placement

    def build(self, stages: Sequence[Sequence[str]], parents: Mapping[str, Sequence[str]],
              n_microbatches: int) -> Schedule:
        return _list_schedule(stages, parents, n_microbatches, self.policy)


SPECS: dict[str, ScheduleSpec] = {}  # by name; `SPECS.keys()` is a live view, the choices of --schedule


AUTO = "auto"  # --schedule auto: the layout planner weighs AUTO_SCHEDULES (pprs_mpi/layout.py)
AUTO_SCHEDULES = ("gpipe", "1f1b")  # the paper's first: near-ties go to it


class ScheduleNames(Collection):
    """`auto` and every registered schedule's name, live: the choices of --schedule."""

    def __contains__(self, name) -> bool:
        return name == AUTO or name in SPECS

    def __iter__(self):
        return iter((AUTO, *SPECS))

    def __len__(self) -> int:
        return 1 + len(SPECS)


def register(spec: ScheduleSpec) -> ScheduleSpec:
    """Makes `spec` selectable by name (`--schedule`, `build`); a name is registered once."""
    if spec.name in SPECS:
        raise ValueError(f"schedule {spec.name!r} is already registered")
    SPECS[spec.name] = spec
    return spec


def _gpipe_policy(s: int, ready: list[Action], state: _State) -> Action:
    """GPipe fill-drain: each stage runs all its forwards, then all its backwards.

    Backwards go in increasing microbatch order (first in, first out) rather than GPipe's reverse
    autograd order: same makespan, and the same per-node order as 1F1B.
    """
    if any(state.next_f[v] < state.M for v in state.dag.stages[s]):
        ready = [a for a in ready if isinstance(a, Forward)]
    return min(ready, key=state.dag.priority, default=None)


def _one_f_one_b_policy(s: int, ready: list[Action], state: _State) -> Action:
    """1F1B (PipeDream-flush): ready backwards first; stage s keeps at most P - s microbatches in flight per node.

    Warm-up needs no special case: no backward is ready before the first microbatch comes back.
    The cap cannot deadlock: take the lowest microbatch m not finished everywhere. Either one of
    its backwards is ready (backwards are never capped), or the topologically first node v whose
    forward on m is missing is ready; v handles microbatches in order and all below m are done,
    so v has nothing in flight and the cap (>= 1) lets it run.
    """
    P = len(state.dag.stages)
    backwards = [a for a in ready if isinstance(a, Backward)]
    allowed = backwards or [a for a in ready if state.next_f[a.node] - state.next_b[a.node] < P - s]
    return min(allowed, key=state.dag.priority, default=None)


GPIPE = register(ScheduleSpec("gpipe", _gpipe_policy, "fill-drain: all forwards, then all backwards"))
ONE_F_ONE_B = register(ScheduleSpec("1f1b", _one_f_one_b_policy,
                                    "PipeDream-flush: backwards first, at most P - s microbatches in flight"))
SCHEDULES = tuple(SPECS)  # the built-in ones


def gpipe(stages: Sequence[Sequence[str]], parents: Mapping[str, Sequence[str]], n_microbatches: int) -> Schedule:
    """GPipe fill-drain (see `_gpipe_policy`)."""
    return GPIPE.build(stages, parents, n_microbatches)


def one_f_one_b(stages: Sequence[Sequence[str]], parents: Mapping[str, Sequence[str]], n_microbatches: int) -> Schedule:
    """1F1B (see `_one_f_one_b_policy`)."""
    return ONE_F_ONE_B.build(stages, parents, n_microbatches)


def build(name: str, stages: Sequence[Sequence[str]], parents: Mapping[str, Sequence[str]],
          n_microbatches: int) -> Schedule:
    """The schedule of the registered policy `name`, validated: the engines' deadlock freedom rests on
    its legality."""
    if name not in SPECS:
        raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SPECS)}")
    schedule = SPECS[name].build(stages, parents, n_microbatches)
    schedule.validate(parents)
    return schedule


def n_microbatches(K: int, microbatch_size: int) -> int:
    """Number of microbatches that carry K samples, `microbatch_size` at a time: ceil(K / b)."""
    if K < 1 or microbatch_size < 1:
        raise ValueError(f"K and microbatch_size must be >= 1, got K={K}, microbatch_size={microbatch_size}")
    return -(-K // microbatch_size)


def microbatch_samples(K: int, microbatch_size: int, mb: int) -> range:
    """Sample indices k of microbatch `mb`: contiguous blocks of `microbatch_size`, the last one possibly short."""
    M = n_microbatches(K, microbatch_size)
    if not 0 <= mb < M:
        raise ValueError(f"microbatch {mb} out of range 0..{M - 1} for K={K}, microbatch_size={microbatch_size}")
    return range(mb * microbatch_size, min(K, (mb + 1) * microbatch_size))


def ideal_makespan(n_microbatches: int, depth: int) -> int:
    """Paper's time for M microbatches through depth Δ, one node per unit: 2(M + Δ - 1)."""
    if n_microbatches < 1 or depth < 1:
        raise ValueError(f"n_microbatches and depth must be >= 1, got {n_microbatches} and {depth}")
    return 2 * (n_microbatches + depth - 1)


class _Dag:
    """The stage layout checked against `parents`: node → stage, children, topological order."""

    def __init__(self, stages: Sequence[Sequence[str]], parents: Mapping[str, Sequence[str]]):
        self.stages = tuple(tuple(nodes) for nodes in stages)
        self.parents = {v: tuple(p for p in dict.fromkeys(ps) if p in parents) for v, ps in parents.items()}
        self.stage: dict[str, int] = {}
        for s, nodes in enumerate(self.stages):
            if not nodes:
                raise ScheduleError(f"stage {s} has no nodes")
            for v in nodes:
                if v not in parents:
                    raise ScheduleError(f"stage {s}: node {v!r} is not a key of parents")
                if v in self.stage:
                    raise ScheduleError(f"node {v!r} is in stages {self.stage[v]} and {s}")
                self.stage[v] = s
        for v in parents:
            if v not in self.stage:
                raise ScheduleError(f"node {v!r} is in no stage")
        self.children: dict[str, list[str]] = {v: [] for v in parents}
        for v, ps in self.parents.items():
            for p in ps:
                self.children[p].append(v)
        self.order = self._topological_order()
        self.position = {v: i for i, v in enumerate(self.order)}

    def _topological_order(self) -> tuple[str, ...]:
        order, stuck = topological_order(self.parents)
        if stuck:
            raise ScheduleError(f"node {stuck[0]!r} lies on a cycle or depends on one")
        return order

    def dependencies(self, action: Forward | Backward) -> list[Forward | Backward]:
        """Actions that must complete before `action` starts (same microbatch)."""
        v, mb = action.node, action.mb
        if isinstance(action, Forward):
            return [Forward(p, mb) for p in self.parents[v]]
        return [Forward(v, mb)] + [Backward(c, mb) for c in self.children[v]]

    def priority(self, action: Forward | Backward) -> tuple[int, int]:
        """Sort key: lower microbatch first; forwards early nodes first, backwards late nodes first."""
        position = self.position[action.node]
        return action.mb, position if isinstance(action, Forward) else -position


@dataclass
class _State:
    """Progress of a list schedule: per node, the next microbatch to run forward and backward."""

    dag: _Dag
    M: int
    next_f: dict[str, int]
    next_b: dict[str, int]


def _list_schedule(stages, parents, M: int, pick: Callable[[int, list[Action], _State], Action]) -> Schedule:
    """Greedy list scheduling: at each unit, every stage runs `pick` of its ready actions (or idles).

    A node's only candidates are its next forward and its next backward, so every node handles the
    microbatches in increasing order in both directions. Event-driven: a stage is asked at a unit only if
    it acted at the unit before or an action it may depend on completed then; otherwise its candidates,
    their readiness and its counters are those of the unit before, so it idles again. The work is linear
    in the number of actions, 2M × nodes, not in stages × makespan.
    """
    if M < 1:
        raise ScheduleError(f"n_microbatches must be >= 1, got {M}")
    dag = _Dag(stages, parents)
    state = _State(dag, M, dict.fromkeys(dag.order, 0), dict.fromkeys(dag.order, 0))
    stage_of = dag.stage
    wake_forward = {v: {stage_of[v], *(stage_of[c] for c in dag.children[v])} for v in dag.order}
    wake_backward = {v: {stage_of[v], *(stage_of[p] for p in dag.parents[v])} for v in dag.order}
    done: dict[Action, int] = {}
    rows: list[list[tuple[int, Action]]] = [[] for _ in dag.stages]
    remaining, asked, t = 2 * M * len(dag.order), set(range(len(dag.stages))), 0
    while remaining:
        started = []
        for s in sorted(asked):
            nodes = dag.stages[s]
            candidates = [Forward(v, state.next_f[v]) for v in nodes if state.next_f[v] < M]
            candidates += [Backward(v, state.next_b[v]) for v in nodes if state.next_b[v] < state.next_f[v]]
            ready = [a for a in candidates if all(done.get(d, t) < t for d in dag.dependencies(a))]
            action = pick(s, ready, state)
            if action is not None:
                rows[s].append((t, action))
                started.append(action)
        if not started:
            raise RuntimeError(f"list scheduler stalled at unit {t}")  # cannot happen, see one_f_one_b
        asked = set()
        for action in started:
            done[action] = t
            if isinstance(action, Forward):
                state.next_f[action.node] += 1
                asked |= wake_forward[action.node]
            else:
                state.next_b[action.node] += 1
                asked |= wake_backward[action.node]
        remaining -= len(started)
        t += 1
    return Schedule(dag.stages, M, tuple(tuple(row) for row in rows), t)
