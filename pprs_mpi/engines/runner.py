"""One stage's share of a PPRS iteration: a `StagePlan` executed over a `Transport`, written once for every engine.

The serial engine gives every stage a runner over an in-process mailbox; the MPI engine gives each
rank one runner over MPI. Both execute the same plan, so they perform the same floating-point
operations in the same order and their results are bitwise identical; in particular every sum
over children, input slots or microbatches runs in a fixed order.
"""

from __future__ import annotations

import math
import time

import numpy as np

from pprs_mpi import noise
from pprs_mpi.backend import Backend
from pprs_mpi.engines import fusion
from pprs_mpi.engines.plan import RECV, ROOT_TAKE, SEND, BackwardStep, ForwardStep, RootPlan, compile_stage
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.engines.timeline import BACKWARD_PHASE, FORWARD_PHASE, Timeline
from pprs_mpi.engines.transport import Transport
from pprs_mpi.faults import Fault
from pprs_mpi.schedule import Schedule


class ShapeError(RuntimeError):
    """An op's output, a VJP's cotangent or a received message has the wrong shape; the message names
    the node, the edge, the microbatch and both shapes."""


class OpError(RuntimeError):
    """An op's forward or VJP raised; the message names the node, the microbatch and the op's own error."""


class DtypeError(ShapeError):
    """An op's output or a VJP's cotangent is not in the run's dtype (float64 under --dtype float32, say):
    named at the op that leaked it, before a receiver would see a message of the wrong size."""


class StageRunner:
    """Executes one stage's plan for a pass; on stage 0 a `RootRole` adds the noisy copies and G_t."""

    def __init__(self, wiring: Wiring, schedule: Schedule, stage: int, sampling: Sampling,
                 backend: Backend, transport: Transport, timeline: Timeline, fault: Fault | None = None):
        self.graph, self.stage, self.backend, self.xp = wiring.graph, stage, backend, backend.xp
        self.transport, self.timeline, self.fault = transport, timeline, fault
        self.plan = compile_stage(wiring, schedule, sampling, stage)
        self.eval_mb = sampling.n_microbatches
        # The units where a segment starts: alone, a rank need not visit the others, since stage 0 draws
        # before a segment every copy needed up to its end (see RootRole.draw).
        self._heads = tuple(unit for unit, segment in enumerate(self.plan.segments) if segment is not None)
        self._ops = {step.node: self.graph.op(step.name) for step in self.plan.evaluation}
        self._runs = fusion.runs_per_unit(self.plan.segments, self._ops)  # per unit: (first, stop) of each fused run
        self._outputs: list = [None] * self.plan.n_slots
        self._stash: list = [None] * self.plan.n_slots
        self._cotangents: list = [None] * self.plan.n_cotangent_slots
        self._live, self.peak_stash = 0, 0  # (node, microbatch) residuals kept for a backward: GPipe K, 1F1B ~depth
        self._unchecked, self._checking = {False, True}, True  # pass kinds whose shapes are still to be checked
        self.root = None if stage != 0 else RootRole(self.plan.root, self.graph.dim, sampling, backend, transport,
                                                     self._outputs, self._cotangents)
        if self.root is not None:
            transport.idle = self.root.draw_ahead

    # -- one pass: begin, execute this stage's actions, end ----------------------------------------

    def run(self, t: int, x=None, evaluation: bool = False):
        """Runs this stage's whole part of a pass (see `begin`); returns what `end` returns."""
        self.begin(t, x, evaluation)
        if evaluation:
            self.execute_evaluation()
        else:
            for unit in self._heads:
                self.step(unit)
        return self.end(evaluation)

    def begin(self, t: int, x=None, evaluation: bool = False) -> None:
        """Starts iteration t's gradient pass at x_t, or with `evaluation` a forward pass of x alone."""
        self.timeline.start(t, evaluation)
        # Shapes are fixed by the graph: checked on the first pass of each kind, which covers every
        # microbatch's rows, and not again on the hot path.
        self._checking = evaluation in self._unchecked
        self._unchecked.discard(evaluation)
        if self.fault is not None and not evaluation:
            self.fault.trigger(self.stage, t)
        self.transport.expect(self.plan.eval_receives if evaluation else self.plan.receives, self._checking)
        if self.root is not None:
            self.root.begin(t, x, evaluation)

    def step(self, unit: int) -> None:
        """Time unit `unit` of a gradient pass: stage 0 first sends out the noisy copies that any stage needs
        by the end of the segment starting here, then this stage executes that segment; at the other units
        of a segment, and in a bubble, it does nothing more."""
        segment, root = self.plan.segments[unit], self.root
        until = unit if segment is None else segment.last_unit
        if root is not None and root.next_draw <= until:
            root.draw(until, self.timeline)
        if segment is None:
            return
        if segment.forward:
            self._forward(segment.steps, keep_residuals=True, runs=self._runs[unit])
        else:
            self._backward(segment.steps, self._runs[unit])
        if root is not None:
            root.fold_arrived()

    def execute_evaluation(self, segments=None) -> None:
        """This stage's forwards of the evaluation point: all of them in order, or just `segments` of them."""
        for segment in self.plan.eval_segments if segments is None else segments:
            self._forward(segment.steps, keep_residuals=False)

    def end(self, evaluation: bool = False):
        """Completes the pass; stage 0 returns f(x) for an evaluation, else (G_t, the K values f(x_t + γX_k))."""
        result = None
        if self.root is not None:
            result = self.root.evaluation_value() if evaluation else self.root.mean_gradient()
        if evaluation:
            for step in self.plan.evaluation:
                self._outputs[step.output] = None
        self.transport.complete_sends()
        return result

    # -- actions -------------------------------------------------------------------------------

    def _forward(self, steps: tuple[ForwardStep, ...], keep_residuals: bool, runs: tuple = ()) -> None:
        """A forward segment: the first step's inputs fetched, then each op applied to the output before it
        (a fused run of them in one call, see fusion.py); the last output is sent on."""
        head, outputs = steps[0], self._outputs
        mb = head.mb
        fetched = []
        for how, where in head.sources:
            if how == RECV:
                fetched.append(self.transport.recv(where, mb))
            else:
                fetched.append(outputs[where])
                if how == ROOT_TAKE:  # the last local reader of this noisy copy
                    outputs[where] = None
        inputs = fetched if head.slots is None else [fetched[i] for i in head.slots]
        done = 0
        for first, stop in runs:
            inputs = self._forward_steps(steps[done:first], inputs, keep_residuals)
            inputs, done = self._forward_run(steps[first:stop], inputs), stop
        output = self._forward_steps(steps[done:] if done else steps, inputs, keep_residuals)[0]
        if keep_residuals:
            self._live += len(steps)
            if self._live > self.peak_stash:
                self.peak_stash = self._live
        step = steps[-1]
        if step.sends:
            contiguous = self.backend.contiguous(output)
            for channel in step.sends:
                self.transport.send(channel, mb, contiguous)
        if step.leaf_value:
            self.root.values[mb] = output

    def _forward_steps(self, steps, inputs: list, keep_residuals: bool) -> list:
        """Each step's op applied to the output before it, one by one; returns the last output as a list."""
        outputs, ops, xp, active = self._outputs, self._ops, self.xp, self.timeline.active
        for step in steps:
            start = time.perf_counter()
            try:
                if keep_residuals:  # a gradient pass: what the VJP will need (by default the inputs) is kept
                    output, self._stash[step.output] = ops[step.node].forward_with_residuals(xp, *inputs)
                else:
                    output = ops[step.node].forward(xp, *inputs)
            except Exception as err:  # noqa: BLE001 — a user's op may raise anything: named, then re-raised
                raise self._op_error(step, "forward", err) from err
            if active:
                self._record(step.mb, FORWARD_PHASE, step.node, start)
            if self._checking:
                self._check(output, step.shape, step, "forward returned {kind} {actual}, expected {expected} "
                            f"({self._destinations(step.name)})")
            outputs[step.output] = output
            inputs = [output]
        return inputs

    def _forward_run(self, run, inputs: list) -> list:
        """A fused run's forward in one call (fusion.py): every node's output kept, the run's tape stashed with
        its last node's; returns the last output as a list."""
        outputs, stash = self._outputs, self._stash
        start = time.perf_counter()
        try:
            ops = [self._ops[step.node] for step in run]
            results, tape = ops[0].forward_run(self.xp, inputs, ops)
        except Exception as err:  # noqa: BLE001 — as in _forward_steps
            raise self._op_error(run[0], "forward", err) from err
        if self.timeline.active:
            self._record_run(run[0].mb, FORWARD_PHASE, run, start)
        for step, output in zip(run, results):
            if self._checking:
                self._check(output, step.shape, step, "forward returned {kind} {actual}, expected {expected} "
                            f"({self._destinations(step.name)})")
            outputs[step.output], stash[step.output] = output, None
        stash[run[-1].output] = tape  # pulled back when the backward reaches the run's last node
        return [results[-1]]

    def _backward(self, steps: tuple[BackwardStep, ...], runs: tuple = ()) -> None:
        """A backward segment: the first step's cotangent summed from its children, each VJP's cotangent
        (or a fused run's, see fusion.py) handed straight to the next step, the last step's sent or kept for
        their parents."""
        head = steps[0]
        mb = head.mb
        cotangent = _sum_arrived(head.cotangents, mb, self.transport, self._cotangents) if head.cotangents else None
        done, grads = 0, None
        for first, stop in runs:
            if first > done:
                grads = self._backward_steps(steps[done:first], cotangent)
                cotangent = grads[0]
            grads, done = self._backward_run(steps[first:stop], cotangent), stop
            cotangent = grads[0]
        if done < len(steps):
            grads = self._backward_steps(steps[done:] if done else steps, cotangent)
        self._live -= len(steps)
        step = steps[-1]
        per_parent = grads if step.slots is None else _sum_by_parent(step.slots, len(step.destinations), grads)
        for (how, where), grad in zip(step.destinations, per_parent):
            if how == SEND:
                self.transport.send(where, mb, self.backend.contiguous(grad))
            else:
                self._cotangents[where] = grad

    def _backward_steps(self, steps, cotangent) -> list:
        """Each step's VJP, one by one, from `cotangent` (None: the leaf's ones); returns the last step's
        cotangents, one per parent slot."""
        outputs, stash, ops, xp, active = self._outputs, self._stash, self._ops, self.xp, self.timeline.active
        for step in steps:
            slot = step.output
            output, outputs[slot] = outputs[slot], None
            if cotangent is None:  # the leaf
                cotangent = xp.ones_like(output)
            residuals, stash[slot] = stash[slot], None
            start = time.perf_counter()
            try:
                grads = ops[step.node].vjp_with_residuals(xp, residuals, output, cotangent)
            except Exception as err:  # noqa: BLE001 — as in _forward_steps
                raise self._op_error(step, "VJP", err) from err
            if active:
                self._record(step.mb, BACKWARD_PHASE, step.node, start)
            if self._checking:
                self._check_cotangents(step, grads)
            cotangent = grads[0]
        return grads

    def _backward_run(self, run: tuple[BackwardStep, ...], cotangent) -> list:
        """A fused run's backward (its steps in backward order): one pull-back from the cotangent of its last
        node (the leaf's ones when it is the leaf) to the inputs of its first."""
        outputs, stash = self._outputs, self._stash
        if cotangent is None:
            cotangent = self.xp.ones_like(outputs[run[0].output])
        tape = stash[run[0].output]
        for step in run:
            outputs[step.output] = stash[step.output] = None
        start = time.perf_counter()
        try:
            grads = self._ops[run[-1].node].vjp_run(self.xp, tape, cotangent)  # run[-1]: the run's first node
        except Exception as err:  # noqa: BLE001 — as in _backward_steps
            raise self._op_error(run[-1], "VJP", err) from err
        if self.timeline.active:
            self._record_run(run[0].mb, BACKWARD_PHASE, run, start)
        if self._checking:
            self._check_cotangents(run[-1], grads)
        return grads

    def _record_run(self, mb: int, phase: int, run, start: float) -> None:
        """A fused run's one call, its time split evenly among its nodes (the timeline has one row per node)."""
        self.backend.synchronize()
        end = time.perf_counter()
        share = (end - start) / len(run)
        for k, step in enumerate(run):
            self.timeline.record(mb, phase, step.node, start + k * share, start + (k + 1) * share)

    def _record(self, mb: int, phase: int, node: int, start: float) -> None:
        """Records an action that began at `start` (in a recorded iteration); a device's kernels are waited
        for first, since they run asynchronously and the launch alone would look nearly free."""
        self.backend.synchronize()
        self.timeline.record(mb, phase, node, start, time.perf_counter())

    # -- shape checks (first pass of each kind) ---------------------------------------------------

    def _check(self, array, expected: tuple, step, text: str) -> None:
        """Raises ShapeError (`text` after the node and microbatch) unless `array` has shape `expected`, and
        DtypeError unless it has the run's dtype (a leaked float64 would otherwise pass unnoticed serially and
        under MPI surface as a wrong-size message at a downstream edge)."""
        actual = _shape(array)
        if actual != expected:
            self._fail(step, text.format(kind="shape", actual=actual, expected=expected))
        if array.dtype != self.backend.dtype:
            self._fail(step, text.format(kind="dtype", actual=array.dtype, expected=self.backend.dtype), DtypeError)

    def _check_cotangents(self, step: BackwardStep, grads) -> None:
        """One cotangent per parent slot, each of its parent's shape."""
        parents = self.graph.parents(step.name)
        if len(grads) != len(parents):
            self._fail(step, f"VJP returned {len(grads)} cotangent(s) for {len(parents)} parent(s)")
        for parent, grad, expected in zip(parents, grads, step.shapes):
            self._check(grad, expected, step, "VJP returned a cotangent of {kind} {actual} for edge "
                        f"'{parent}' -> '{step.name}', expected {{expected}}")

    def _destinations(self, node: str) -> str:
        children = self.graph.children[node]
        return "edge " + ", ".join(f"'{node}' -> '{c}'" for c in children) if children else "the leaf's value"

    def _fail(self, step, text: str, error: type = ShapeError) -> None:
        raise error(f"{self._where(step)}: {text}")

    def _op_error(self, step, what: str, err: Exception) -> OpError:
        text = " ".join(str(err).split())
        return OpError(f"{self._where(step)}: {what} raised {type(err).__name__}: {text}")

    def _where(self, step) -> str:
        which = "the evaluation pass f(y)" if step.mb == self.eval_mb else f"microbatch {step.mb}"
        return f"node '{step.name}' ({self._ops[step.node].describe()}), {which}"


class RootRole:
    """Stage 0's extra role: it draws the noisy copies θ_mb = x_t + γX_k and sends them out, and it sums
    the root's cotangents into G_t and collects the K sample values, microbatch by microbatch."""

    def __init__(self, plan: RootPlan, dim: int, sampling: Sampling, backend: Backend, transport: Transport,
                 outputs: list, cotangents: list):
        self.plan, self.sampling, self.backend, self.xp, self.transport = plan, sampling, backend, backend.xp, transport
        self._outputs, self._cotangents = outputs, cotangents
        self._M = sampling.n_microbatches  # the evaluation point's microbatch is M
        self.values: list = [None] * (self._M + 1)  # the leaf's outputs, when it is on stage 0
        self._noise = backend.noise_source(sampling, dim)
        self._samples = [sampling.samples(mb) for mb in range(self._M)]
        self._drawn = self._folded = 0
        self._t = None  # the gradient pass's iteration; None before the first
        self.next_draw = math.inf

    def begin(self, t: int, x, evaluation: bool) -> None:
        if evaluation:
            self._set(self.plan.eval_slot, self._M, self.xp.reshape(x, (1, -1)))
            return
        self._x, self._t, self._drawn, self._folded = x, t, 0, 0
        self.next_draw = self.plan.draws[0][0] if self.plan.draws else math.inf  # the unit of the next draw
        self._gradient_sum = self.xp.zeros(x.shape[0], dtype=self.backend.dtype)
        self._values: list = []

    def draw(self, until: float, timeline: Timeline | None = None) -> None:
        """Draws and sends the noisy copies of the microbatches first used at time units <= `until`.

        Drawn when first needed rather than all at the start of the pass, so that stage 0 keeps only
        the copies in use (1F1B: ~depth of them) and the first forward starts at once. Deadlock-free:
        a copy is sent before stage 0 executes any action of its first-use time unit or later (stage 0
        draws up to the end of each segment before executing it, and the rest when the pass ends).
        """
        draws, drawn = self.plan.draws, self._drawn
        while self._drawn < len(draws) and draws[self._drawn][0] <= until:
            _, mb, slot = draws[self._drawn]
            self._drawn += 1
            self._set(slot, mb, self._noisy_copies(mb))
        self.next_draw = draws[self._drawn][0] if self._drawn < len(draws) else math.inf
        # the next recorded action is not charged for the noise
        if timeline is not None and timeline.active and self._drawn > drawn:
            self.backend.synchronize()

    def draw_ahead(self) -> bool:
        """Draws the X_k of the next microbatch not drawn yet, of this pass or else the next one's (x and γ are
        added when it is used): work for a rank that would otherwise wait for a message. False if there is none
        to do (AHEAD drawn already, the device draws, or no noise: γ = 0)."""
        draws, t = self.plan.draws, self._t
        position = self._drawn + self._noise.drawn_ahead
        if t is None or position >= 2 * len(draws):
            return False
        if position >= len(draws):
            t, position = t + 1, position - len(draws)
        if self.sampling.gamma_at(t) == 0.0:
            return False
        return self._noise.draw_ahead(t, self._samples[draws[position][1]])

    def _set(self, slot: int, mb: int, batch) -> None:
        if self.plan.keep:  # until the last local child has read it
            self._outputs[slot] = batch
        if self.plan.sends:
            contiguous = self.backend.contiguous(batch)
            for channel in self.plan.sends:
                self.transport.send(channel, mb, contiguous)

    def _noisy_copies(self, mb: int):
        """θ_mb = x_t + γ X_k for the samples k of microbatch mb, stacked along the batch axis."""
        return noise.noisy_copies(self.backend, self.sampling, self._noise, self._x, self._t, self._samples[mb])

    def fold_arrived(self) -> None:
        """Adds in, in microbatch order, the root cotangents and sample values already here: consumed as
        they come, they free their senders' and this rank's buffers instead of piling up until the end."""
        while self._folded < self._M and self._all_arrived(self._folded):
            self._fold()

    def mean_gradient(self):
        """G_t = (1/K) Σ_k ∇f(x_t + γX_k), summed microbatch by microbatch, and the K sample values."""
        self.draw(until=math.inf)
        while self._folded < self._M:
            self._fold()
        return self._gradient_sum / self.sampling.K, np.concatenate(self._values)

    def evaluation_value(self) -> float:
        return float(self.backend.to_host(self._value(self._M))[0])

    def _fold(self) -> None:
        mb, self._folded = self._folded, self._folded + 1
        self._gradient_sum += _sum_arrived(self.plan.folds[mb], mb, self.transport, self._cotangents).sum(axis=0)
        self._values.append(self.backend.to_host(self._value(mb)))

    def _all_arrived(self, mb: int) -> bool:
        """Whether the root's cotangents and the leaf's values of microbatch mb can be read without waiting."""
        for how, where in self.plan.folds[mb]:
            if not (self.transport.arrived(where, mb) if how == RECV else self._cotangents[where] is not None):
                return False
        if self.plan.value is None:
            return self.values[mb] is not None
        return self.transport.arrived(self.plan.value, mb)

    def _value(self, mb: int):
        if self.plan.value is None:
            value, self.values[mb] = self.values[mb], None
            return value
        return self.transport.recv(self.plan.value, mb)


def _sum_arrived(sources, mb: int, transport: Transport, cotangents: list):
    """The sum of a node's children's cotangents for microbatch mb, received or taken from the local
    slots, in the fixed order of `sources` (the children's)."""
    total = None
    for how, where in sources:
        if how == RECV:
            part = transport.recv(where, mb)
        else:
            part, cotangents[where] = cotangents[where], None
        total = part if total is None else total + part
    return total


def _shape(array) -> tuple | str:
    shape = getattr(array, "shape", None)
    return tuple(shape) if shape is not None else f"a {type(array).__name__}, not an array"


def _sum_by_parent(slots: tuple[int, ...], n_parents: int, grads) -> list:
    """Cotangents per distinct parent: a parent used in several input slots gets their sum, in slot order."""
    per_parent: list = [None] * n_parents
    for i, grad in zip(slots, grads):
        per_parent[i] = grad if per_parent[i] is None else per_parent[i] + grad
    return per_parent
