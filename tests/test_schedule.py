"""Pipeline schedules: exact tables for small cases, makespan and memory guarantees, legality checks."""

import functools

import pytest
from hypothesis import given, settings, strategies as st

from pprs_mpi.schedule import (
    SCHEDULES, SPECS, Backward, Forward, Schedule, ScheduleError, build, gpipe, ideal_makespan,
    microbatch_samples, n_microbatches, one_f_one_b)

ROOT = "theta"
CHAIN3 = {"a": [ROOT], "b": ["a"], "c": ["b"]}
DIAMOND = {"a": [ROOT], "b": ["a"], "c": ["a", ROOT], "d": ["b", "c"]}
DIAMOND_STAGES = [("a",), ("b", "c"), ("d",)]


def chain(depth):
    """Parents of a chain n0 -> ... -> n{depth-1} and its stages, one node per stage."""
    names = [f"n{i}" for i in range(depth)]
    return {v: [p] for v, p in zip(names, [ROOT] + names[:-1])}, [(v,) for v in names]


def table(stages, rows):
    """Actions from literal rows: 'F3' / 'B3' on a one-node stage, 'F3:b' naming the node otherwise, '.' a bubble."""
    def action(cell, nodes):
        if cell == ".":
            return None
        kind = Forward if cell[0] == "F" else Backward
        mb, _, node = cell[1:].partition(":")
        return kind(node or nodes[0], int(mb))

    return tuple(tuple(action(c, nodes) for c in row.split()) for nodes, row in zip(stages, rows))


def depth_of(parents):
    """Number of nodes on the longest path from the root."""
    @functools.cache
    def level(v):
        return 1 + max((level(p) for p in parents[v] if p in parents), default=0)

    return max(level(v) for v in parents)


@st.composite
def dags(draw, max_nodes=8):
    """(topological order, parents): one leaf, every node reachable from the root, parents' keys shuffled."""
    n = draw(st.integers(1, max_nodes))
    names = [f"n{i}" for i in range(n)]
    parents = {v: [] for v in names}
    for j in range(n - 1):  # every node but the last gets a later child, so the last is the only leaf
        parents[names[draw(st.integers(j + 1, n - 1))]].append(names[j])
    for i, v in enumerate(names):
        parents[v] += draw(st.lists(st.sampled_from([ROOT] + names[:i]), max_size=2))
        parents[v] = draw(st.permutations(parents[v] or [ROOT]))
    return names, {v: parents[v] for v in draw(st.permutations(names))}


@st.composite
def layouts(draw):
    """(parents, stages, M): a random DAG, its topological order cut into contiguous stages, M microbatches."""
    order, parents = draw(dags())
    n = len(order)
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    stages = [tuple(order[a:b]) for a, b in zip(bounds, bounds[1:])]
    return parents, stages, draw(st.integers(1, 6))


# --- exact tables -------------------------------------------------------------------------------

def test_gpipe_chain_of_3_stages_4_microbatches():
    stages = [("a",), ("b",), ("c",)]
    schedule = gpipe(stages, CHAIN3, 4)
    assert schedule.actions == table(stages, [
        "F0 F1 F2 F3 .  .  .  .  B0 B1 B2 B3",
        ".  F0 F1 F2 F3 .  .  B0 B1 B2 B3 . ",
        ".  .  F0 F1 F2 F3 B0 B1 B2 B3 .  . ",
    ])


def test_1f1b_chain_of_3_stages_4_microbatches():
    stages = [("a",), ("b",), ("c",)]
    schedule = one_f_one_b(stages, CHAIN3, 4)
    assert schedule.actions == table(stages, [
        "F0 F1 F2 .  .  B0 F3 B1 .  B2 .  B3",
        ".  F0 F1 .  B0 F2 B1 F3 B2 .  B3 . ",
        ".  .  F0 B0 F1 B1 F2 B2 F3 B3 .  . ",
    ])


@pytest.mark.parametrize("name", SPECS)
def test_one_microbatch_is_the_naive_sequential_extension(name):
    stages = [("a",), ("b",), ("c",)]
    schedule = build(name, stages, CHAIN3, 1)
    assert schedule.actions == table(stages, [
        "F0 .  .  .  .  B0",
        ".  F0 .  .  B0 . ",
        ".  .  F0 B0 .  . ",
    ])
    assert schedule.makespan == 2 * 3


def test_gpipe_diamond_with_a_grouped_stage():
    schedule = gpipe(DIAMOND_STAGES, DIAMOND, 2)
    assert schedule.actions == table(DIAMOND_STAGES, [
        "F0 F1   .    .    .    .  .  .    .    B0   .    B1",
        ".  F0:b F0:c F1:b F1:c .  .  B0:c B0:b B1:c B1:b .",
        ".  .    .    F0   .    F1 B0 B1   .    .    .    .",
    ])


def test_1f1b_diamond_with_a_grouped_stage():
    schedule = one_f_one_b(DIAMOND_STAGES, DIAMOND, 2)
    assert schedule.actions == table(DIAMOND_STAGES, [
        "F0 F1   .    .    .    .    .    B0   .    B1",
        ".  F0:b F0:c F1:b F1:c B0:c B0:b B1:c B1:b .",
        ".  .    .    F0   B0   F1   B1   .    .    .",
    ])


def test_grid_prints_stage_by_time():
    assert gpipe([("a",), ("b",), ("c",)], CHAIN3, 4).grid() == (
        "unit    | 0  1  2  3  4  5  6  7  8  9  10 11\n"
        "stage 0 | F0 F1 F2 F3 .  .  .  .  B0 B1 B2 B3\n"
        "stage 1 | .  F0 F1 F2 F3 .  .  B0 B1 B2 B3 .\n"
        "stage 2 | .  .  F0 F1 F2 F3 B0 B1 B2 B3 .  .")
    assert "F0:b F0:c" in gpipe(DIAMOND_STAGES, DIAMOND, 2).grid()


# --- makespan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPECS)
def test_makespan_is_ideal_on_chains(name):
    for depth in range(1, 9):
        parents, stages = chain(depth)
        for M in range(1, 11):
            schedule = build(name, stages, parents, M)
            schedule.validate(parents)
            assert schedule.makespan == ideal_makespan(M, depth), (depth, M)


@settings(max_examples=150, deadline=None)
@given(dag=dags(max_nodes=10), M=st.integers(1, 8))
def test_makespan_is_ideal_on_dags_with_one_node_per_stage(dag, M):
    """One node per stage in topological order: both schedules reach 2(M + Δ - 1), which no schedule beats.

    Δ is the longest path in nodes, level(v) / h(v) the longest path from the root / to the leaf.
    Lower bound: the leaf starts after Δ - 1 units, runs 2M actions, then its last backward climbs
    Δ - 1 more nodes. GPipe: F(v, mb) runs at level(v) - 1 + mb, B(v, mb) at Δ + M + h(v) - 2 + mb.
    1F1B, by induction on time: F(v, mb) runs by Δ - h(v) + 2mb and B(v, mb) at Δ + h(v) - 1 + 2mb
    (not earlier: the leaf, capped at 1, alternates F and B). At an F deadline the parents and
    B(v, mb - cap) are done since cap = P - s >= h(v), and no backward can take the slot, as B
    deadlines have the other parity; a ready backward is never delayed.
    """
    order, parents = dag
    for name in SPECS:
        schedule = build(name, [(v,) for v in order], parents, M)
        schedule.validate(parents)
        assert schedule.makespan == ideal_makespan(M, depth_of(parents)), name


@settings(max_examples=200, deadline=None)
@given(layout=layouts())
def test_grouped_stages_are_legal_within_makespan_bounds_and_memory_caps(layout):
    """Legal; max(2(M + Δ - 1), 2M × biggest stage) <= makespan <= 2M × nodes.

    The upper bound holds because some stage works every unit: for the lowest unfinished microbatch,
    the topologically first missing forward, or else the last missing backward, is ready and allowed.

    Stage s with n_s nodes holds exactly n_s × M activations under GPipe, at most n_s × min(M, P - s)
    under 1F1B (the cap is per node).
    """
    parents, stages, M = layout
    P, busiest = len(stages), max(len(nodes) for nodes in stages)
    for name in SPECS:
        schedule = build(name, stages, parents, M)
        schedule.validate(parents)
        assert max(ideal_makespan(M, depth_of(parents)), 2 * M * busiest) <= schedule.makespan <= 2 * M * len(parents)
    assert gpipe(stages, parents, M).live_activations() == [len(nodes) * M for nodes in stages]
    live = one_f_one_b(stages, parents, M).live_activations()
    assert all(live[s] <= len(nodes) * min(M, P - s) for s, nodes in enumerate(stages))


@settings(max_examples=60, deadline=None)
@given(dag=dags(), data=st.data())
def test_stages_out_of_topological_order_are_still_scheduled(dag, data):
    """Schedulers do not assume edges point to later stages: any assignment of nodes to stages works."""
    order, parents = dag
    P = data.draw(st.integers(1, len(order)))
    shuffled = data.draw(st.permutations(order))
    stage = {v: i if i < P else data.draw(st.integers(0, P - 1)) for i, v in enumerate(shuffled)}
    stages = [tuple(v for v in order if stage[v] == s) for s in range(P)]
    M = data.draw(st.integers(1, 5))
    for name in SPECS:
        build(name, stages, parents, M).validate(parents)


def dense_list_schedule(stages, parents, M, pick):
    """The list scheduler the plain way, every stage asked at every unit: the reference for the event-driven one."""
    from pprs_mpi.schedule import _Dag, _State
    dag = _Dag(stages, parents)
    state = _State(dag, M, dict.fromkeys(dag.order, 0), dict.fromkeys(dag.order, 0))
    done, rows = {}, [[] for _ in dag.stages]
    while len(done) < 2 * M * len(dag.order):
        t, started = len(rows[0]), []
        for s, nodes in enumerate(dag.stages):
            candidates = [Forward(v, state.next_f[v]) for v in nodes if state.next_f[v] < M]
            candidates += [Backward(v, state.next_b[v]) for v in nodes if state.next_b[v] < state.next_f[v]]
            ready = [a for a in candidates if all(done.get(d, t) < t for d in dag.dependencies(a))]
            rows[s].append(pick(s, ready, state))
            started += [rows[s][-1]] if rows[s][-1] is not None else []
        for action in started:
            done[action] = t
            (state.next_f if isinstance(action, Forward) else state.next_b)[action.node] += 1
    return tuple(map(tuple, rows))


@settings(max_examples=120, deadline=None)
@given(dag=dags(), data=st.data())
def test_the_event_driven_scheduler_gives_the_plain_list_schedule(dag, data):
    """Asking only the stages whose ready actions or counters changed gives the same table, any layout."""
    order, parents = dag
    stage = {v: data.draw(st.integers(0, len(order) - 1)) for v in order}
    stages = [nodes for nodes in (tuple(v for v in order if stage[v] == s) for s in range(len(order))) if nodes]
    M = data.draw(st.integers(1, 6))
    for spec in SPECS.values():
        assert spec.build(stages, parents, M).actions == dense_list_schedule(stages, parents, M, spec.policy)


def test_live_activations_on_chains():
    """GPipe holds all M microbatches on every stage; 1F1B holds min(M, P - s) on stage s."""
    for P in range(1, 7):
        parents, stages = chain(P)
        for M in range(1, 9):
            assert gpipe(stages, parents, M).live_activations() == [M] * P
            assert one_f_one_b(stages, parents, M).live_activations() == [min(M, P - s) for s in range(P)]


# --- validation ---------------------------------------------------------------------------------

AB = {"a": [ROOT], "b": ["a"]}
AB_STAGES = [("a",), ("b",)]


def ab_schedule(*rows):
    """A one-microbatch schedule of the chain a -> b, from literal rows."""
    return Schedule.from_rows(tuple(AB_STAGES), 1, table(AB_STAGES, rows))


def test_validate_accepts_the_legal_schedule():
    ab_schedule("F0 .  .  B0", ".  F0 B0 .").validate(AB)


@pytest.mark.parametrize("rows, message", [
    (("F0 .  .  B0", ".  B0 F0 ."), r"Backward\(node='b', mb=0\) runs at unit 1 but needs Forward\(node='b', mb=0\)"),
    ((".  F0 .  B0", ".  F0 B0 ."), r"Forward\(node='b', mb=0\) runs at unit 1 but needs Forward\(node='a', mb=0\)"),
    (("F0 .  B0 .", ".  F0 .  B0"), r"Backward\(node='a', mb=0\) runs at unit 2 but needs Backward\(node='b', mb=0\)"),
    (("F0 F0 .  B0", ".  F0 B0 ."), r"unit 1: Forward\(node='a', mb=0\) already ran at unit 0"),
    (("F0 .  .  B0", ".  F0 .  ."), r"Backward\(node='b', mb=0\) never runs"),
    (("F0 .  .  B0", ".  F0 B0 B1"), r"Backward\(node='b', mb=1\) has a microbatch outside 0..0"),
    (("F0 .  .  B0", ".  F0:a B0 ."), r"stage 1, unit 1: Forward\(node='a', mb=0\) belongs to a node"),
    (("F0 .  .  B0 .", ".  F0 B0 .  ."), r"unit 4: every stage idles"),
    (("F0 .  .  B0", ".  F0 B0"), r"stage 1: 3 units"),
])
def test_validate_rejects_illegal_schedules(rows, message):
    with pytest.raises(ScheduleError, match=message):
        ab_schedule(*rows).validate(AB)


def test_validate_rejects_bad_rows_and_microbatch_counts():
    with pytest.raises(ScheduleError, match="1 action rows for 2 stages"):
        Schedule.from_rows(tuple(AB_STAGES), 1, ab_schedule("F0 .  .  B0", ".  F0 B0 .").actions[:1]).validate(AB)
    with pytest.raises(ScheduleError, match="n_microbatches must be >= 1"):
        Schedule.from_rows(tuple(AB_STAGES), 0, ((None,), (None,))).validate(AB)
    with pytest.raises(ScheduleError, match="'F0' is not an action"):
        rows = (("F0", None, None, Backward("a", 0)), (None, Forward("b", 0), Backward("b", 0), None))
        Schedule.from_rows(tuple(AB_STAGES), 1, rows).validate(AB)


@pytest.mark.parametrize("stages, parents, message", [
    ([("a", "b"), ("b",)], AB, "node 'b' is in stages 0 and 1"),
    ([("a",)], AB, "node 'b' is in no stage"),
    ([("a",), ("b", "z")], AB, "node 'z' is not a key of parents"),
    ([("a",), (), ("b",)], AB, "stage 1 has no nodes"),
    ([("a",), ("b",)], {"a": ["b"], "b": ["a"]}, "lies on a cycle"),
])
@pytest.mark.parametrize("name", SPECS)
def test_builders_reject_bad_layouts(name, stages, parents, message):
    with pytest.raises(ScheduleError, match=message):
        build(name, stages, parents, 2)


def test_build_names_and_stage_of():
    assert SCHEDULES == ("gpipe", "1f1b")
    assert build("gpipe", AB_STAGES, AB, 3) == gpipe(AB_STAGES, AB, 3)
    assert build("1f1b", AB_STAGES, AB, 3) == one_f_one_b(AB_STAGES, AB, 3)
    with pytest.raises(ValueError, match="unknown schedule 'zb'"):
        build("zb", AB_STAGES, AB, 3)
    with pytest.raises(ScheduleError, match="n_microbatches must be >= 1"):
        gpipe(AB_STAGES, AB, 0)
    schedule = gpipe(DIAMOND_STAGES, DIAMOND, 2)
    assert [schedule.stage_of(v) for v in "abcd"] == [0, 1, 1, 2]
    with pytest.raises(KeyError):
        schedule.stage_of(ROOT)


# --- microbatches -------------------------------------------------------------------------------

def test_microbatches_when_K_is_not_a_multiple_of_b():
    assert n_microbatches(10, 3) == 4
    assert [microbatch_samples(10, 3, mb) for mb in range(4)] == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert n_microbatches(2, 5) == 1 and microbatch_samples(2, 5, 0) == range(0, 2)
    assert n_microbatches(7, 1) == 7 and microbatch_samples(7, 1, 6) == range(6, 7)
    for args in [(0, 1), (1, 0)]:
        with pytest.raises(ValueError):
            n_microbatches(*args)
    for mb in (-1, 4):
        with pytest.raises(ValueError, match="out of range"):
            microbatch_samples(10, 3, mb)


@given(K=st.integers(1, 200), b=st.integers(1, 50))
def test_microbatches_cover_every_sample_once_in_order(K, b):
    M = n_microbatches(K, b)
    samples = [k for mb in range(M) for k in microbatch_samples(K, b, mb)]
    assert samples == list(range(K))
    assert all(len(microbatch_samples(K, b, mb)) == b for mb in range(M - 1))


def test_ideal_makespan():
    assert ideal_makespan(4, 3) == 12
    assert ideal_makespan(1, 5) == 10  # naive sequential extension: 2Δ
    with pytest.raises(ValueError):
        ideal_makespan(0, 3)
