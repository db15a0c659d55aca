"""One stage's share of a PPRS iteration, written once for every engine.

A `StageRunner` executes its stage's forward and backward actions on microbatches of noisy copies
and exchanges activations and cotangents through a `Transport`. The serial engine gives every
stage a runner over an in-process mailbox; the MPI engine gives each rank one runner over MPI.
Both perform the same floating-point operations in the same order, so their results are
bitwise identical; in particular every sum over children or microbatches runs in a fixed order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pprs_mpi import noise
from pprs_mpi.backend import Backend
from pprs_mpi.faults import Fault
from pprs_mpi.graph import Graph
from pprs_mpi.schedule import Backward, Forward, Schedule, microbatch_samples, n_microbatches

ACTIVATION, COTANGENT, VALUE = 0, 1, 2
FORWARD_PHASE, BACKWARD_PHASE, WAIT_PHASE = 0, 1, 2


@dataclass(frozen=True)
class Message:
    """What travels between stages: an activation or cotangent along an edge, or the leaf's values.

    `mb == n_microbatches` is the extra microbatch of an evaluation pass f(y) (no noise, no backward).
    """

    kind: int
    edge: int
    mb: int


class ShapeError(RuntimeError):
    """An op's output, a VJP's cotangent or a received message has the wrong shape; the message names
    the node, the edge, the microbatch and both shapes."""


class Transport(Protocol):
    def expect(self, messages: list[Message], check_shapes: bool = True) -> None: ...
    def send(self, message: Message, array) -> None: ...
    def arrived(self, message: Message) -> bool: ...
    def recv(self, message: Message): ...
    def complete_sends(self) -> None: ...


class Timeline:
    """Per-rank records (iteration, microbatch, phase, node, start, end), seconds since `origin`.

    Only every `every`-th iteration is recorded, so that a long run's timeline stays small in memory
    and in the trace; the records are handed over (and forgotten) at each gather.
    """

    def __init__(self, rank: int, every: int = 1):
        self.rank, self.every, self.origin = rank, max(1, every), time.perf_counter()
        self.iteration, self.active = 0, True
        self.rows: list[tuple] = []

    def start(self, iteration: int) -> None:
        self.iteration, self.active = iteration, iteration % self.every == 0

    def record(self, mb: int, phase: int, node: int, start: float, end: float) -> None:
        if self.active:
            self.rows.append((self.rank, self.iteration, mb, phase, node, start - self.origin, end - self.origin))

    def take(self, dtype: np.dtype) -> np.ndarray:
        """The records so far as a structured array; the buffer is emptied (gathered at checkpoints)."""
        rows, self.rows = self.rows, []
        return np.array(rows, dtype=dtype)


class Wiring:
    """Static facts of a placement: which stage owns each node, and the edges numbered once."""

    def __init__(self, graph: Graph, stages: list[tuple[str, ...]]):
        self.graph, self.stages = graph, [tuple(s) for s in stages]
        self.stage_of = {graph.root: 0, **{n: s for s, names in enumerate(self.stages) for n in names}}
        self.edges = graph.edges()
        self.edge_index = {edge: i for i, edge in enumerate(self.edges)}
        self.node_index = {name: i for i, name in enumerate(graph.order)}

    @property
    def n_edges(self) -> int:
        return len(self.edge_index)

    def crosses(self, parent: str, child: str) -> bool:
        return self.stage_of[parent] != self.stage_of[child]

    def source(self, message: Message) -> int:
        """The stage that sends `message`."""
        if message.kind == VALUE:
            return self.stage_of[self.graph.leaf]
        parent, child = self.edges[message.edge]
        return self.stage_of[parent if message.kind == ACTIVATION else child]

    def destination(self, message: Message) -> int:
        if message.kind == VALUE:
            return 0
        parent, child = self.edges[message.edge]
        return self.stage_of[child if message.kind == ACTIVATION else parent]

    def shape(self, message: Message) -> tuple[int, ...]:
        """Per-sample shape of the array `message` carries."""
        if message.kind == VALUE:
            return ()
        return self.graph.shape(self.edges[message.edge][0])


@dataclass(frozen=True)
class Sampling:
    """How the K noisy copies θ + γX_k are drawn and grouped into microbatches."""

    K: int
    gamma: float
    seed: int
    microbatch_size: int
    noise_on_device: bool = True  # False: draw on the host (bitwise the CPU noise) and copy to the GPU

    @property
    def n_microbatches(self) -> int:
        return n_microbatches(self.K, self.microbatch_size)

    def samples(self, mb: int) -> range:
        return microbatch_samples(self.K, self.microbatch_size, mb)


class StageRunner:
    """Executes one stage's actions for an iteration and, on stage 0, assembles the mean gradient."""

    def __init__(self, wiring: Wiring, schedule: Schedule, stage: int, sampling: Sampling,
                 backend: Backend, transport: Transport, timeline: Timeline, fault: Fault | None = None):
        self.wiring, self.graph, self.stage = wiring, wiring.graph, stage
        self.schedule, self.sampling, self.backend, self.xp = schedule, sampling, backend, backend.xp
        self.transport, self.timeline, self.fault = transport, timeline, fault
        self.timed_actions = [(unit, a) for unit, a in enumerate(schedule.actions[stage]) if a is not None]
        self.eval_mb = sampling.n_microbatches
        self.eval_actions = [Forward(n, self.eval_mb) for n in self.graph.order if wiring.stage_of[n] == stage]
        self._expected = self._expected_messages([a for _, a in self.timed_actions], range(sampling.n_microbatches))
        self._expected_eval = self._expected_messages(self.eval_actions, [self.eval_mb])
        self._unchecked = {False, True}  # pass kinds (evaluation or not) whose shapes are still to be checked
        self._checking = True
        self.peak_stash = 0  # most (node, microbatch) inputs kept for a backward at once: GPipe K, 1F1B ~depth
        self._local_root_children = [c for c in self.graph.children[self.graph.root] if wiring.stage_of[c] == stage]
        self._roots_in_order = _roots_by_first_use(schedule, self.graph) if stage == 0 else []

    # -- one pass: begin, execute this stage's actions, end ----------------------------------------

    def run(self, t: int, x=None, evaluation: bool = False):
        """Runs this stage's whole part of a pass (see `begin`); returns what `end` returns."""
        self.begin(t, x, evaluation)
        if evaluation:
            for action in self.eval_actions:
                self.execute(action)
        else:
            for unit, action in self.timed_actions:
                self.step(unit, action)
        return self.end(evaluation)

    def step(self, unit: int, action) -> None:
        """Time unit `unit` of a gradient pass: stage 0 first sends out the noisy copies that any stage
        needs by then, then this stage executes its action (None: a bubble)."""
        if self.stage == 0:
            self._draw_roots(until=unit)
        if action is not None:
            self.execute(action)

    def begin(self, t: int, x=None, evaluation: bool = False) -> None:
        """Starts iteration t's gradient pass at x_t, or with `evaluation` a forward pass of x alone."""
        self.timeline.start(t)
        # Shapes are fixed by the graph: checked on the first pass of each kind, which covers every
        # microbatch's rows, and not again on the hot path.
        self._checking = evaluation in self._unchecked
        self._unchecked.discard(evaluation)
        if self.fault is not None and not evaluation:
            self.fault.trigger(self.stage, t)
        self._begin(self._expected_eval if evaluation else self._expected)
        if self.stage != 0:
            return
        if evaluation:
            self._set_root(self.eval_mb, self.xp.reshape(x, (1, -1)))
        else:
            self._x, self._t, self._roots_drawn = x, t, 0
            self._gradient_sum = self.xp.zeros(self.graph.dim, dtype=self.backend.dtype)
            self._values, self._folded = [], 0

    def execute(self, action) -> None:
        (self._forward if isinstance(action, Forward) else self._backward)(action.node, action.mb)
        if self.stage == 0 and action.mb < self.eval_mb:
            self._fold_arrived()

    def end(self, evaluation: bool = False):
        """Completes the pass; stage 0 returns f(x) for an evaluation, else (G_t, the K values f(x_t + γX_k))."""
        result = None
        if self.stage == 0 and evaluation:
            result = float(self.backend.to_host(self._value(self.eval_mb))[0])
        elif self.stage == 0:
            self._draw_roots(until=math.inf)
            result = self._mean_gradient()
        self.transport.complete_sends()
        return result

    def _begin(self, expected: list[Message]) -> None:
        self._outputs: dict[tuple[str, int], object] = {}
        self._stash: dict[tuple[str, int], list] = {}
        self._local_cotangents: dict[tuple[str, str, int], object] = {}
        self._local_values: dict[int, object] = {}
        self._root_readers: dict[int, int] = {}
        self.transport.expect(expected, self._checking)

    def _noisy_copies(self, x, t: int, mb: int):
        """θ_mb = x_t + γ X_k for the samples k of microbatch mb, stacked along the batch axis."""
        samples = self.sampling.samples(mb)
        base = self.xp.broadcast_to(x, (len(samples), x.shape[0]))
        if self.sampling.gamma == 0.0:
            return self.xp.array(base)
        if self.sampling.noise_on_device and self.backend.on_gpu:
            perturbation = noise.device_perturbations(self.backend, self.sampling.seed, t, samples, x.shape[0])
        else:
            perturbation = self.backend.asarray(noise.perturbations(self.sampling.seed, t, samples, x.shape[0]))
        return base + self.sampling.gamma * perturbation

    def _draw_roots(self, until: float) -> None:
        """Draws and sends the noisy copies of the microbatches first used at time units <= `until`.

        Drawn when first needed rather than all at the start of the pass, so that stage 0 keeps only
        the copies in use (1F1B: ~depth of them) and the first forward starts at once. Deadlock-free:
        a copy is sent before stage 0 executes any action of its first-use time unit or later.
        """
        drawn = self._roots_drawn
        while self._roots_drawn < len(self._roots_in_order) and self._roots_in_order[self._roots_drawn][0] <= until:
            mb = self._roots_in_order[self._roots_drawn][1]
            self._roots_drawn += 1
            self._set_root(mb, self._noisy_copies(self._x, self._t, mb))
        if self.timeline.active and self._roots_drawn > drawn:  # the next recorded action is not charged for the noise
            self.backend.synchronize()

    def _set_root(self, mb: int, batch) -> None:
        root = self.graph.root
        if self._local_root_children:  # until the last local child has read it
            self._outputs[(root, mb)] = batch
            self._root_readers[mb] = len(self._local_root_children)
        for child in self.graph.children[root]:
            if self.wiring.crosses(root, child):
                self._send(ACTIVATION, root, child, mb, batch)

    # -- actions -------------------------------------------------------------------------------

    def _forward(self, node: str, mb: int) -> None:
        parents = self.graph.parents(node)
        arrays = {parent: self._input(parent, node, mb) for parent in dict.fromkeys(parents)}
        inputs = [arrays[parent] for parent in parents]
        start = time.perf_counter()
        output = self.graph.op(node).forward(self.xp, *inputs)
        self._record(mb, FORWARD_PHASE, node, start)
        if self._checking:
            self._check_output(node, mb, output)
        self._outputs[(node, mb)] = output
        self._stash[(node, mb)] = inputs
        self.peak_stash = max(self.peak_stash, len(self._stash))
        for child in self.graph.children[node]:
            if self.wiring.crosses(node, child):
                self._send(ACTIVATION, node, child, mb, output)
        if node == self.graph.leaf:
            if self.stage == 0:
                self._local_values[mb] = output
            else:
                self._transmit(Message(VALUE, 0, mb), output)

    def _backward(self, node: str, mb: int) -> None:
        output = self._outputs.pop((node, mb))
        cotangent = self._cotangent(node, mb, like=output)
        inputs = self._stash.pop((node, mb))
        start = time.perf_counter()
        grads = self.graph.op(node).vjp(self.xp, inputs, output, cotangent)
        if self._checking:
            self._check_cotangents(node, mb, grads)
        per_parent = _sum_by_parent(self.graph.parents(node), grads)
        self._record(mb, BACKWARD_PHASE, node, start)
        for parent, grad in per_parent.items():
            if self.wiring.crosses(parent, node):
                self._send(COTANGENT, parent, node, mb, grad)
            else:
                self._local_cotangents[(parent, node, mb)] = grad

    def _which(self, mb: int) -> str:
        return "the evaluation pass f(y)" if mb == self.eval_mb else f"microbatch {mb}"

    def _rows(self, mb: int) -> int:
        return 1 if mb == self.eval_mb else len(self.sampling.samples(mb))

    def _check_output(self, node: str, mb: int, output) -> None:
        """Raises ShapeError unless `output` has the node's declared shape (before it is used or sent)."""
        expected = (self._rows(mb), *self.graph.shape(node))
        if tuple(getattr(output, "shape", ())) != expected:
            edges = ", ".join(f"'{node}' -> '{child}'" for child in self.graph.children[node]) or "the leaf's value"
            raise ShapeError(f"node '{node}' ({self.graph.op(node).describe()}), {self._which(mb)}: forward returned "
                             f"shape {_shape(output)}, expected {expected} (edge {edges})")

    def _check_cotangents(self, node: str, mb: int, grads) -> None:
        """Raises ShapeError unless the VJP gave one cotangent per parent slot, each of its parent's shape."""
        parents, op = self.graph.parents(node), self.graph.op(node).describe()
        if len(grads) != len(parents):
            raise ShapeError(f"node '{node}' ({op}), {self._which(mb)}: VJP returned {len(grads)} cotangent(s) "
                             f"for {len(parents)} parent(s)")
        for parent, grad in zip(parents, grads):
            expected = (self._rows(mb), *self.graph.shape(parent))
            if tuple(getattr(grad, "shape", ())) != expected:
                raise ShapeError(f"node '{node}' ({op}), {self._which(mb)}: VJP returned a cotangent of shape "
                                 f"{_shape(grad)} for edge '{parent}' -> '{node}', expected {expected}")

    def _record(self, mb: int, phase: int, node: str, start: float) -> None:
        """Records an action that began at `start`; on a GPU its kernels are waited for first, since
        they run asynchronously and the launch alone would look nearly free (only in recorded iterations)."""
        if self.timeline.active:
            self.backend.synchronize()
            self.timeline.record(mb, phase, self.wiring.node_index[node], start, time.perf_counter())

    def _input(self, parent: str, node: str, mb: int):
        if self.wiring.crosses(parent, node):
            return self._receive(ACTIVATION, parent, node, mb)
        if parent != self.graph.root:
            return self._outputs[(parent, mb)]
        self._root_readers[mb] -= 1
        return self._outputs.pop((parent, mb)) if self._root_readers[mb] == 0 else self._outputs[(parent, mb)]

    def _cotangent(self, node: str, mb: int, like):
        """Sum of the children's cotangents for (node, mb), in the fixed order of `children`."""
        if node == self.graph.leaf:
            return self.xp.ones_like(like)
        total = None
        for child in self.graph.children[node]:
            part = (self._receive(COTANGENT, node, child, mb) if self.wiring.crosses(node, child)
                    else self._local_cotangents.pop((node, child, mb)))
            total = part if total is None else total + part
        return total

    def _mean_gradient(self):
        """G_t = (1/K) Σ_k ∇f(x_t + γX_k), summed microbatch by microbatch, and the K sample values."""
        while self._folded < self.sampling.n_microbatches:
            self._fold()
        return self._gradient_sum / self.sampling.K, np.concatenate(self._values)

    def _fold_arrived(self) -> None:
        """Adds in, in microbatch order, the root cotangents and sample values already here: consumed as
        they come, they free their senders' and this rank's buffers instead of piling up until the end."""
        while self._folded < self.sampling.n_microbatches and self._all_arrived(self._folded):
            self._fold()

    def _fold(self) -> None:
        mb, self._folded = self._folded, self._folded + 1
        self._gradient_sum += self._cotangent(self.graph.root, mb, like=None).sum(axis=0)
        self._values.append(self.backend.to_host(self._value(mb)))

    def _all_arrived(self, mb: int) -> bool:
        """Whether the root's cotangents and the leaf's values of microbatch mb can be read without waiting."""
        graph, wiring = self.graph, self.wiring
        for child in graph.children[graph.root]:
            if wiring.crosses(graph.root, child):
                if not self.transport.arrived(Message(COTANGENT, wiring.edge_index[(graph.root, child)], mb)):
                    return False
            elif (graph.root, child, mb) not in self._local_cotangents:
                return False
        if wiring.stage_of[graph.leaf] == 0:
            return mb in self._local_values
        return self.transport.arrived(Message(VALUE, 0, mb))

    def _value(self, mb: int):
        leaf = self.graph.leaf
        if self.wiring.stage_of[leaf] == 0:
            return self._local_values.pop(mb)
        return self.transport.recv(Message(VALUE, 0, mb))

    # -- messages ------------------------------------------------------------------------------

    def _send(self, kind: int, parent: str, child: str, mb: int, array) -> None:
        self._transmit(Message(kind, self.wiring.edge_index[(parent, child)], mb), array)

    def _transmit(self, message: Message, array) -> None:
        self.transport.send(message, self.xp.ascontiguousarray(array))

    def _receive(self, kind: int, parent: str, child: str, mb: int):
        return self.transport.recv(Message(kind, self.wiring.edge_index[(parent, child)], mb))

    def _expected_messages(self, actions, microbatches) -> list[Message]:
        """Every message this stage receives while executing `actions`, in the order it needs them."""
        graph, wiring, index = self.graph, self.wiring, self.wiring.edge_index
        expected = []
        for action in actions:
            node = action.node
            if isinstance(action, Forward):
                expected += [Message(ACTIVATION, index[(p, node)], action.mb)
                             for p in dict.fromkeys(graph.parents(node)) if wiring.crosses(p, node)]
            elif isinstance(action, Backward):
                expected += [Message(COTANGENT, index[(node, c)], action.mb)
                             for c in graph.children[node] if wiring.crosses(node, c)]
        if self.stage == 0:
            for mb in microbatches:
                expected += [Message(COTANGENT, index[(graph.root, c)], mb) for c in graph.children[graph.root]
                             if wiring.crosses(graph.root, c) and mb < self.sampling.n_microbatches]
                if wiring.stage_of[graph.leaf] != 0:
                    expected.append(Message(VALUE, 0, mb))
        return expected


def _roots_by_first_use(schedule: Schedule, graph: Graph) -> list[tuple[int, int]]:
    """(first time unit at which any stage reads the root's microbatch mb, mb), in that order.
    Only the rows of stages holding a child of the root are scanned: this runs at start-up."""
    readers = set(graph.children[graph.root])
    first = {}
    for nodes, row in zip(schedule.stages, schedule.actions):
        if readers.isdisjoint(nodes):
            continue
        for unit, action in enumerate(row):
            if isinstance(action, Forward) and action.node in readers:
                first[action.mb] = min(unit, first.get(action.mb, unit))
    return sorted((unit, mb) for mb, unit in first.items())


def _shape(array) -> tuple | str:
    shape = getattr(array, "shape", None)
    return tuple(shape) if shape is not None else f"a {type(array).__name__}, not an array"


def _sum_by_parent(parents: tuple[str, ...], grads) -> dict[str, object]:
    """Cotangents per distinct parent: a parent used in several input slots gets their sum, in slot order."""
    per_parent: dict[str, object] = {}
    for parent, grad in zip(parents, grads):
        per_parent[parent] = grad if parent not in per_parent else per_parent[parent] + grad
    return per_parent
