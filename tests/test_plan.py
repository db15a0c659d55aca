"""The per-stage plans against the schedule they are compiled from, on random DAGs, placements and both
schedules; and the MPI transport's receive window."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import test_schedule
from pprs_mpi.backend import Staging, select
from pprs_mpi.engines.plan import (LOCAL, RECV, ROOT_PEEK, ROOT_TAKE, SEND, BackwardStep, ForwardStep, channels,
                                   compile_stage)
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Abs, Add, SquaredNorm
from pprs_mpi.schedule import SPECS, Backward, Forward, build as build_schedule


@st.composite
def placements(draw):
    """(wiring, schedule, sampling): a random DAG with its nodes on stages in any way, either schedule."""
    order, parents = draw(test_schedule.dags(max_nodes=7))
    nodes = [Node(v, Abs() if len(parents[v]) == 1 else Add(), tuple(parents[v])) for v in order]
    graph = Graph(3, [*nodes, Node("out", SquaredNorm(), (order[-1],))], root=test_schedule.ROOT)
    P = draw(st.integers(1, len(graph.order)), label="stages")
    shuffled = draw(st.permutations(graph.order), label="placement")
    stage = {v: i if i < P else draw(st.integers(0, P - 1)) for i, v in enumerate(shuffled)}
    stages = [tuple(v for v in graph.order if stage[v] == s) for s in range(P)]
    sampling = Sampling(draw(st.integers(1, 7), label="K"), 0.3, 5, draw(st.integers(1, 3), label="microbatch size"))
    schedule = build_schedule(draw(st.sampled_from(list(SPECS))), stages,
                              {n: graph.parents(n) for n in graph.order}, sampling.n_microbatches)
    return Wiring(graph, stages), schedule, sampling


def expected_messages(wiring, M):
    """(kind name, parent, child, mb) of every message a pass must carry, from the graph and placement alone."""
    graph, messages = wiring.graph, set()
    for parent, child in wiring.edges:
        if wiring.crosses(parent, child):
            messages |= {(kind, parent, child, mb) for kind in ("activation", "cotangent") for mb in range(M)}
    if wiring.stage_of[graph.leaf] != 0:
        messages |= {("values", graph.leaf, None, mb) for mb in range(M)}
    return messages


def label(channel, mb):
    """A channel's message as expected_messages names it."""
    if channel.name == "the leaf's sample values":
        return "values", None, mb
    kind, _, edge = channel.name.removeprefix("the ").partition(" of edge ")
    parent, child = (name.strip("'") for name in edge.split(" -> "))
    return kind, (parent, child), mb


@settings(max_examples=80, deadline=None)
@given(placement=placements())
def test_plans_execute_the_schedules_actions_and_carry_exactly_the_pass_messages(placement):
    wiring, schedule, sampling = placement
    graph, M = wiring.graph, sampling.n_microbatches
    plans = [compile_stage(wiring, schedule, sampling, s) for s in range(len(wiring.stages))]
    by_id = {c.id: c for c in channels(wiring)}
    sent, needed = {}, {}  # (channel, mb) -> unit

    for s, plan in enumerate(plans):
        # the same actions, unit by unit
        decoded = tuple(None if step is None else
                        (Forward if isinstance(step, ForwardStep) else Backward)(step.name, step.mb)
                        for step in plan.units)
        assert decoded == schedule.actions[s]
        local = [n for n in graph.order if wiring.stage_of[n] == s]
        assert [(step.name, step.mb) for step in plan.evaluation] == [(n, M) for n in local]
        written = set()  # output slots written so far on this stage
        for unit, step in enumerate(plan.units):
            if isinstance(step, ForwardStep):
                parents = list(dict.fromkeys(graph.parents(step.name)))
                for parent, (how, where) in zip(parents, step.sources):
                    if how == RECV:
                        assert by_id[where].destination == s and label(by_id[where], step.mb)[1] == (parent, step.name)
                        needed[where, step.mb] = unit
                    else:
                        assert how in (LOCAL, ROOT_PEEK, ROOT_TAKE) and (parent == graph.root) == (how != LOCAL)
                        assert how != LOCAL or where in written  # a local parent ran earlier on this stage
                for channel in step.sends:
                    assert by_id[channel].source == s and (channel, step.mb) not in sent
                    sent[channel, step.mb] = unit
                written.add(step.output)
            elif isinstance(step, BackwardStep):
                assert step.output in written
                for how, where in step.cotangents:
                    if how == RECV:
                        needed[where, step.mb] = unit
                for how, where in step.destinations:
                    if how == SEND:
                        sent[where, step.mb] = unit
        if s == 0:
            first_use = {}
            for row in schedule.actions:
                for unit, action in enumerate(row):
                    if isinstance(action, Forward) and graph.root in graph.parents(action.node):
                        first_use.setdefault(action.mb, unit)
                        first_use[action.mb] = min(first_use[action.mb], unit)
            assert [(unit, mb) for unit, mb, _ in plan.root.draws] == sorted((u, mb) for mb, u in first_use.items())
            for unit, mb, _ in plan.root.draws:
                for channel in plan.root.sends:
                    sent[channel, mb] = unit - 0.5  # drawn and sent before the unit's action
            for mb in range(M):
                for how, where in plan.root.folds[mb]:
                    if how == RECV:
                        needed[where, mb] = schedule.makespan
                if plan.root.value is not None:
                    needed[plan.root.value, mb] = schedule.makespan
        # what the stage expects to receive, per channel in increasing microbatch order (the MPI transport's FIFO)
        for channel, mbs in plan.receives:
            assert by_id[channel].destination == s and list(mbs) == sorted(mbs) == list(range(M))
        mine = {key for key in needed if by_id[key[0]].destination == s}
        assert {(c, mb) for c, mbs in plan.receives for mb in mbs} == mine
        check_segments(plan)

    labels = {(kind, *(edge or (graph.leaf, None)), mb) for (kind, edge, mb) in
              (label(by_id[c], mb) for c, mb in sent)}
    assert labels == expected_messages(wiring, M) and set(sent) == set(needed)
    assert all(sent[key] < needed[key] for key in sent)  # every message exists before it is needed
    for channel in {c for c, _ in sent}:  # a channel's messages are sent in increasing microbatch order
        times = [sent[channel, mb] for mb in range(M)]
        assert times == sorted(times)


def check_segments(plan):
    """The segments regroup the plan's steps, each once and in order, and only where nothing from another
    stage can be needed in between: every step after a segment's first takes its one input (or cotangent)
    from the step before it, on the same microbatch."""
    for units, segments in ((plan.units, plan.segments), (plan.evaluation, plan.eval_segments)):
        grouped = [s for s in segments if s is not None]
        assert [step for segment in grouped for step in segment.steps] == [step for step in units if step is not None]
    for unit, segment in enumerate(plan.segments):
        if segment is not None:
            assert plan.units[unit] is segment.steps[0] and plan.units[segment.last_unit] is segment.steps[-1]
    for segment in [s for s in plan.segments if s is not None] + list(plan.eval_segments):
        for before, step in zip(segment.steps, segment.steps[1:]):
            assert step.mb == before.mb and isinstance(step, ForwardStep) == segment.forward
            if segment.forward:
                assert step.sources == ((LOCAL, before.output),) and not before.sends
            else:
                assert before.destinations == step.cotangents and step.cotangents[0][0] == LOCAL


def test_a_chain_of_two_nodes_per_stage_runs_as_one_segment_per_microbatch_and_direction():
    """The README default (lad, depth 8, on 4 ranks): each stage's two layers go forward as one segment and
    backward as another, so a rank handles 2M segments per pass instead of 4M actions."""
    from pprs_mpi.problems import build
    graph = build("lad", depth=8).graph
    wiring, sampling = Wiring(graph, graph.stages(4)), Sampling(8, 0.01, 0, 1)
    schedule = build_schedule("gpipe", wiring.stages, {n: graph.parents(n) for n in graph.order}, 8)
    for stage in range(4):
        plan = compile_stage(wiring, schedule, sampling, stage)
        segments = [s for s in plan.segments if s is not None]
        assert len(segments) == 2 * 8 and all(len(s.steps) == 2 for s in segments)
        assert [len(s.steps) for s in plan.eval_segments] == [2]
        check_segments(plan)


def self_transport(K: int):
    """An MPI transport with one channel whose both ends are this rank, on its own copy of COMM_SELF (no
    receive left posted by another test can match its messages), and its staging."""
    from mpi4py import MPI
    from pprs_mpi.engines.mpi import MpiTransport, Poller
    from pprs_mpi.engines.plan import Channel
    from pprs_mpi.engines.timeline import Timeline
    staging = Staging(select("cpu"), cuda_aware=False)
    channel = Channel(0, 0, 0, (2,), "the activation of edge 'a' -> 'b'")
    comm = MPI.COMM_SELF.Dup()
    return MpiTransport(comm, [channel], Sampling(K, 0.1, 0, 1), staging, Timeline(0), Poller(comm, 10.0)), staging


def test_transport_posts_a_window_of_receives_and_reuses_their_buffers_in_order():
    """Ported from tests/test_backend.py when messages became (channel, microbatch) pairs."""
    from pprs_mpi.engines.mpi import RECEIVE_WINDOW
    transport, staging = self_transport(6)
    transport.expect([(0, tuple(range(6)))])
    assert staging.allocated_bytes == RECEIVE_WINDOW * 16  # 4 receives of 2 doubles posted, not 6
    for mb in range(6):
        transport.send(0, mb, np.full((1, 2), float(mb)))
    assert transport.arrived(0, 0)
    assert [transport.recv(0, mb)[0, 0] for mb in range(6)] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    transport.complete_sends()
    assert staging.allocated_bytes == RECEIVE_WINDOW * 16  # the window's buffers were reused
    transport.expect([(0, (0, 1))])
    transport.send(0, 1, np.ones((1, 2)))
    with pytest.raises(RuntimeError, match=r"edge 'a' -> 'b' \(microbatch 1.*out of its channel's order"):
        transport.recv(0, 1)


def test_a_receive_that_would_wait_does_the_idle_work_first_and_only_until_the_message_is_there():
    transport, _ = self_transport(2)
    transport.expect([(0, (0, 1))])
    calls = []

    def idle():  # stage 0 draws noise ahead here; the message comes in during the second piece of work
        calls.append(len(calls))
        if len(calls) == 2:
            transport.send(0, 0, np.full((1, 2), 7.0))
        return True

    transport.idle = idle
    assert transport.recv(0, 0)[0, 0] == 7.0 and calls == [0, 1]
    transport.send(0, 1, np.full((1, 2), 8.0))
    assert transport.recv(0, 1)[0, 0] == 8.0 and calls == [0, 1]  # there already: no work done first
    transport.complete_sends()


def test_waits_poll_where_every_rank_of_the_host_has_a_core_and_soon_sleep_where_they_share(monkeypatch):
    import os

    from mpi4py import MPI
    from pprs_mpi.engines import mpi
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert mpi.polling_seconds(MPI.COMM_SELF) == mpi.OWN_CORE_YIELDING_SECONDS
    monkeypatch.setenv("OMP_NUM_THREADS", str(len(mpi._usable_cores()) + 1))  # its threads need more cores
    assert mpi.polling_seconds(MPI.COMM_SELF) == mpi.YIELDING_SECONDS
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS: every CPU counts
    monkeypatch.setenv("OMP_NUM_THREADS", str(os.cpu_count()))
    assert mpi.polling_seconds(MPI.COMM_SELF) == mpi.OWN_CORE_YIELDING_SECONDS


def test_transport_frees_its_persistent_receives_when_closed():
    from mpi4py import MPI
    transport, _ = self_transport(3)
    requests = [request for request, _ in transport._inboxes[0].free]
    transport.expect([(0, (0, 1, 2))])
    for mb in range(3):
        transport.send(0, mb, np.full((1, 2), float(mb)))
    assert [transport.recv(0, mb)[0, 0] for mb in range(3)] == [0.0, 1.0, 2.0]
    transport.complete_sends()
    assert len(requests) == 3 and all(request != MPI.REQUEST_NULL for request in requests)
    transport.close()
    assert all(request == MPI.REQUEST_NULL for request in requests)


def chain_wiring(P: int) -> Wiring:
    """A chain of P nodes, one per stage: the shape of `lad` with D = P."""
    graph = Graph.chain(2, [Abs()] * (P - 1) + [SquaredNorm()])
    return Wiring(graph, [(name,) for name in graph.order])


def decoded(plan) -> list:
    """A plan's gradient pass as (unit, action) pairs."""
    return [(unit, (Forward if isinstance(step, ForwardStep) else Backward)(step.name, step.mb))
            for unit, step in enumerate(plan.units) if step is not None]


def gpipe_row(wiring: Wiring, s: int, M: int) -> list:
    """Stage s's GPipe row on a chain of P stages in closed form: F(mb) at s + mb, B(mb) at 2P - 2 + M - s + mb."""
    P, name = len(wiring.stages), wiring.stages[s][0]
    return ([(s + mb, Forward(name, mb)) for mb in range(M)]
            + [(2 * P - 2 + M - s + mb, Backward(name, mb)) for mb in range(M)])


def test_the_closed_form_of_gpipe_on_a_chain_is_the_schedule():
    wiring, sampling = chain_wiring(7), Sampling(K=10, gamma=0.3, seed=0, microbatch_size=3)
    schedule = build_schedule("gpipe", wiring.stages, {n: wiring.graph.parents(n) for n in wiring.graph.order}, 4)
    for s in range(7):
        assert decoded(compile_stage(wiring, schedule, sampling, s)) == gpipe_row(wiring, s, 4)
        assert [(t, a) for t, a in enumerate(schedule.actions[s]) if a is not None] == gpipe_row(wiring, s, 4)


@pytest.mark.parametrize("name", SPECS)
def test_one_stage_of_a_4096_stage_pipeline_gets_its_plan(name):
    """What each rank of a 4096-rank run builds: its own stage's plan, from the schedule that every rank
    computes in time linear in the actions (timings in benchmarks/scale.py). The rows of neighbouring stages
    keep each microbatch's order, and under GPipe match the closed form."""
    P, M = 4096, 8
    wiring, sampling = chain_wiring(P), Sampling(K=16, gamma=0.3, seed=0, microbatch_size=2)
    schedule = build_schedule(name, wiring.stages, {n: wiring.graph.parents(n) for n in wiring.graph.order}, M)
    assert schedule.makespan == 2 * (M + P - 1)
    rows = {s: decoded(compile_stage(wiring, schedule, sampling, s)) for s in (0, 1, 2047, 2048, P - 2, P - 1)}
    for s, row in rows.items():
        assert row == list(schedule.timed[s]) and len(row) == 2 * M
        if name == "gpipe":
            assert row == gpipe_row(wiring, s, M)
        if s + 1 in rows:  # F(mb) before the next stage's, B(mb) after it
            unit = {(type(a), a.mb): t for t, a in rows[s + 1]}
            assert all(t < unit[Forward, a.mb] if isinstance(a, Forward) else t > unit[Backward, a.mb]
                       for t, a in row)
