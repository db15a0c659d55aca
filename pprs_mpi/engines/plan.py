"""Each stage's part of a pass, compiled once from the `Schedule` into integer slots and channels.

A rank compiles its own stage only, from its own row of the schedule: the work and the plan are linear in
the makespan and the stage's actions, whatever the number of stages.

The schedule stays the single source of truth: a `StagePlan` lists, per time unit, the action the
schedule gives the stage, with everything a runner needs resolved in advance: where each input
comes from (a channel or a local slot), where each output and cotangent goes, the shapes to check,
and, per channel, the microbatches the stage receives in the order it needs them. At run time no
name is looked up and no message object is made. Pure data: no arrays, no MPI.
"""

from __future__ import annotations

from dataclasses import dataclass

from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.schedule import Forward, Schedule

ACTIVATION, COTANGENT, VALUE = 0, 1, 2
RECV, LOCAL, ROOT_PEEK, ROOT_TAKE = range(4)  # where an input or a cotangent comes from
SEND = 4  # where a cotangent goes (else LOCAL)


@dataclass(frozen=True)
class Channel:
    """One kind of message along one crossing edge (or the leaf's values to stage 0): numbered once for
    every rank, `id = kind * n_edges + edge`, so that ranks agree on tags without talking."""

    id: int
    source: int
    destination: int
    shape: tuple[int, ...]  # per sample
    name: str  # what it carries, for error messages


@dataclass(frozen=True)
class ForwardStep:
    node: int  # index in the graph's topological order (the timeline's node)
    name: str
    mb: int
    sources: tuple[tuple[int, int], ...]  # per distinct parent: (RECV, channel) | (LOCAL | ROOT_*, slot)
    slots: tuple[int, ...] | None  # per input slot, the distinct parent it reads; None: parents are distinct
    output: int  # local slot of the output
    sends: tuple[int, ...]  # activation channels (and the value channel, for the leaf off stage 0)
    leaf_value: bool  # the leaf on stage 0: the output is a sample value kept locally
    shape: tuple[int, ...]  # the output's expected shape, batch axis included


@dataclass(frozen=True)
class BackwardStep:
    node: int
    name: str
    mb: int
    output: int  # local slot of the node's output (and of its stashed inputs)
    cotangents: tuple[tuple[int, int], ...]  # per child: (RECV, channel) | (LOCAL, cotangent slot); () for the leaf
    slots: tuple[int, ...] | None  # per input slot, the distinct parent it feeds; None: parents are distinct
    destinations: tuple[tuple[int, int], ...]  # per distinct parent: (SEND, channel) | (LOCAL, cotangent slot)
    shapes: tuple[tuple[int, ...], ...]  # per input slot, the cotangent's expected shape


Step = ForwardStep | BackwardStep


@dataclass(frozen=True)
class Segment:
    """Consecutive actions of one stage on one microbatch down (or, backward, up) a chain of its own nodes,
    each the only child of the one before: nothing another stage does can come between them, so a runner
    executes them as one, in the same order, without the bookkeeping of separate actions."""

    steps: tuple[Step, ...]
    forward: bool
    last_unit: int  # the time unit of the last step (gradient pass)


@dataclass(frozen=True)
class RootPlan:
    """Stage 0's extra role: the noisy copies it draws and sends, and the cotangents and values it folds."""

    draws: tuple[tuple[int, int, int], ...]  # (first unit any stage reads the root's microbatch mb, mb, slot), by unit
    eval_slot: int  # where the evaluation point goes
    sends: tuple[int, ...]  # activation channels of the root's crossing edges
    keep: bool  # a child of the root is local: the copy goes to the root's slot too
    folds: tuple[tuple[tuple[int, int], ...], ...]  # per microbatch, per child of the root: as BackwardStep.cotangents
    value: int | None  # the value channel, or None when the leaf is on stage 0


@dataclass(frozen=True)
class StagePlan:
    stage: int
    units: tuple[Step | None, ...]  # the gradient pass, one entry per time unit (None: a bubble)
    evaluation: tuple[ForwardStep, ...]  # a forward pass of one point, microbatch `eval_mb`
    segments: tuple[Segment | None, ...]  # per time unit, the segment that starts there (else None)
    eval_segments: tuple[Segment, ...]  # the evaluation's steps, grouped the same way
    receives: tuple[tuple[int, tuple[int, ...]], ...]  # gradient pass: (channel, microbatches in order needed)
    eval_receives: tuple[tuple[int, tuple[int, ...]], ...]
    incoming: tuple[Channel, ...]
    outgoing: tuple[Channel, ...]
    n_slots: int  # output slots: local nodes (and the root on stage 0) × (microbatches + 1)
    n_cotangent_slots: int  # local edges × (microbatches + 1)
    root: RootPlan | None  # stage 0 only


def channels(wiring: Wiring) -> list[Channel]:
    """Every channel of a placement: activations and cotangents of crossing edges, the values if the
    leaf is off stage 0."""
    graph, n_edges, found = wiring.graph, max(1, wiring.n_edges), []
    for e, (parent, child) in enumerate(wiring.edges):
        if wiring.crosses(parent, child):
            a, b, shape = wiring.stage_of[parent], wiring.stage_of[child], graph.shape(parent)
            found += [Channel(ACTIVATION * n_edges + e, a, b, shape, f"the activation of edge '{parent}' -> '{child}'"),
                      Channel(COTANGENT * n_edges + e, b, a, shape, f"the cotangent of edge '{parent}' -> '{child}'")]
    if wiring.stage_of[graph.leaf] != 0:
        found.append(Channel(VALUE * n_edges, wiring.stage_of[graph.leaf], 0, (), "the leaf's sample values"))
    return found


def n_channels(wiring: Wiring) -> int:
    """An upper bound on the channel ids, for tables indexed by channel."""
    return 3 * max(1, wiring.n_edges)


def compile_stage(wiring: Wiring, schedule: Schedule, sampling: Sampling, stage: int) -> StagePlan:
    """The plan of `stage` for this schedule (see the module docstring)."""
    return _Compiler(wiring, schedule, sampling, stage).plan()


class _Compiler:
    def __init__(self, wiring: Wiring, schedule: Schedule, sampling: Sampling, stage: int):
        self.wiring, self.graph, self.schedule, self.stage = wiring, wiring.graph, schedule, stage
        self.M, self.sampling = sampling.n_microbatches, sampling
        graph = self.graph
        self.n_edges = max(1, wiring.n_edges)
        local = [n for n in graph.order if wiring.stage_of[n] == stage]
        self.local = ([graph.root] if stage == 0 else []) + local
        self.node_slot = {name: i for i, name in enumerate(self.local)}
        local_edges = [e for e in wiring.edges if not wiring.crosses(*e) and wiring.stage_of[e[1]] == stage]
        self.local_edges = {edge: i for i, edge in enumerate(local_edges)}
        self.stride = self.M + 1  # microbatches 0..M-1 and the evaluation microbatch M
        self.eval_actions = [Forward(n, self.M) for n in local]

    def plan(self) -> StagePlan:
        every = channels(self.wiring)
        timed = self.schedule.row(self.stage)
        readers, eval_readers = self._last_root_readers(timed), self._last_root_readers(self.eval_actions)
        units = tuple(None if a is None else self._step(a, readers) for a in timed)
        evaluation = tuple(self._step(a, eval_readers) for a in self.eval_actions)
        root = self._root_plan() if self.stage == 0 else None
        segments: list[Segment | None] = [None] * len(units)
        for first, segment in _segments(units):
            segments[first] = segment
        return StagePlan(
            self.stage, units, evaluation, tuple(segments), tuple(segment for _, segment in _segments(evaluation)),
            self._receives([a for a in timed if a is not None], root, range(self.M)),
            self._receives(self.eval_actions, root, [self.M]),
            tuple(c for c in every if c.destination == self.stage),
            tuple(c for c in every if c.source == self.stage),
            len(self.local) * self.stride, len(self.local_edges) * self.stride, root)

    # -- slots and channels ----------------------------------------------------------------------

    def slot(self, node: str, mb: int) -> int:
        return self.node_slot[node] * self.stride + mb

    def cotangent_slot(self, parent: str, child: str, mb: int) -> int:
        return self.local_edges[(parent, child)] * self.stride + mb

    def channel(self, kind: int, parent: str, child: str) -> int:
        return kind * self.n_edges + self.wiring.edge_index[(parent, child)]

    def rows(self, mb: int) -> int:
        return 1 if mb == self.M else len(self.sampling.samples(mb))

    # -- steps -----------------------------------------------------------------------------------

    def _step(self, action, readers: dict) -> Step:
        graph, wiring, node, mb = self.graph, self.wiring, action.node, action.mb
        parents = graph.parents(node)
        distinct = list(dict.fromkeys(parents))
        slots = None if len(distinct) == len(parents) else tuple(distinct.index(p) for p in parents)
        index = wiring.node_index[node]
        if isinstance(action, Forward):
            sources = tuple(self._source(p, node, mb, readers) for p in distinct)
            sends = tuple(self.channel(ACTIVATION, node, c) for c in graph.children[node] if wiring.crosses(node, c))
            leaf = node == graph.leaf
            if leaf and self.stage != 0:
                sends += (VALUE * self.n_edges,)
            return ForwardStep(index, node, mb, sources, slots, self.slot(node, mb), sends, leaf and self.stage == 0,
                               (self.rows(mb), *graph.shape(node)))
        cotangents = tuple((RECV, self.channel(COTANGENT, node, c)) if wiring.crosses(node, c)
                           else (LOCAL, self.cotangent_slot(node, c, mb)) for c in graph.children[node])
        destinations = tuple((SEND, self.channel(COTANGENT, p, node)) if wiring.crosses(p, node)
                             else (LOCAL, self.cotangent_slot(p, node, mb)) for p in distinct)
        return BackwardStep(index, node, mb, self.slot(node, mb), cotangents, slots, destinations,
                            tuple((self.rows(mb), *graph.shape(p)) for p in parents))

    def _source(self, parent: str, node: str, mb: int, readers: dict) -> tuple[int, int]:
        if self.wiring.crosses(parent, node):
            return RECV, self.channel(ACTIVATION, parent, node)
        if parent != self.graph.root:
            return LOCAL, self.slot(parent, mb)
        return (ROOT_TAKE if readers[mb] == node else ROOT_PEEK), self.slot(parent, mb)

    def _last_root_readers(self, actions) -> dict[int, str]:
        """Per microbatch, the local child of the root that reads its noisy copy last: it frees the slot."""
        last = {}
        for action in actions:
            if isinstance(action, Forward) and self.graph.root in self.graph.parents(action.node):
                last[action.mb] = action.node
        return last

    def _root_plan(self) -> RootPlan:
        graph, wiring = self.graph, self.wiring
        children = graph.children[graph.root]
        return RootPlan(
            tuple((unit, mb, self.slot(graph.root, mb)) for unit, mb in _roots_by_first_use(self.schedule, graph)),
            self.slot(graph.root, self.M),
            tuple(self.channel(ACTIVATION, graph.root, c) for c in children if wiring.crosses(graph.root, c)),
            any(not wiring.crosses(graph.root, c) for c in children),
            tuple(tuple((RECV, self.channel(COTANGENT, graph.root, c)) if wiring.crosses(graph.root, c)
                        else (LOCAL, self.cotangent_slot(graph.root, c, mb)) for c in children)
                  for mb in range(self.M)),
            None if wiring.stage_of[graph.leaf] == 0 else VALUE * self.n_edges)

    def _receives(self, actions, root: RootPlan | None, microbatches) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """Per incoming channel, the microbatches this stage receives, in the order it needs them."""
        order: dict[int, list[int]] = {}
        readers = dict.fromkeys(range(self.M + 1))
        for action in actions:
            step = self._step(action, readers)
            pairs = step.sources if isinstance(step, ForwardStep) else step.cotangents
            for how, channel in pairs:
                if how == RECV:
                    order.setdefault(channel, []).append(action.mb)
        if root is not None:
            for mb in microbatches:
                if mb < self.M:
                    for how, channel in root.folds[mb]:
                        if how == RECV:
                            order.setdefault(channel, []).append(mb)
                if root.value is not None:
                    order.setdefault(root.value, []).append(mb)
        return tuple((channel, tuple(mbs)) for channel, mbs in order.items())


def _segments(steps) -> list[tuple[int, Segment]]:
    """(first unit, segment) for one stage's steps in time order (None: a bubble); every step is in one segment."""
    found: list[list] = []  # [first unit, steps, last unit]
    for unit, step in enumerate(steps):
        if step is None:
            continue
        if found and _continues(found[-1][1][-1], step):
            found[-1][1].append(step)
            found[-1][2] = unit
        else:
            found.append([unit, [step], unit])
    return [(first, Segment(tuple(chain), chain[0].__class__ is ForwardStep, last)) for first, chain, last in found]


def _continues(previous: Step, step: Step) -> bool:
    """Whether `step` can follow `previous` in one segment: the same microbatch and direction, and the edge
    between them the step's only way in: forward, its one input is the previous output (which the previous
    step sends nowhere); backward, its one cotangent is the one the previous step keeps for it."""
    if step.mb != previous.mb or step.__class__ is not previous.__class__:
        return False
    if step.__class__ is ForwardStep:
        return (step.sources == ((LOCAL, previous.output),) and step.slots is None and not previous.sends
                and not previous.leaf_value)
    return (len(previous.destinations) == 1 and previous.destinations[0][0] == LOCAL and previous.slots is None
            and step.cotangents == previous.destinations)


def _roots_by_first_use(schedule: Schedule, graph) -> tuple[tuple[int, int], ...]:
    """(first time unit at which any stage reads the root's microbatch mb, mb), in that order.
    Only the rows of stages holding a child of the root are scanned: this runs at start-up."""
    readers = set(graph.children[graph.root])
    first: dict[int, int] = {}
    for nodes, row in zip(schedule.stages, schedule.timed):
        if readers.isdisjoint(nodes):
            continue
        for unit, action in row:
            if isinstance(action, Forward) and action.node in readers:
                first[action.mb] = min(unit, first.get(action.mb, unit))
    return tuple(sorted((unit, mb) for mb, unit in first.items()))

