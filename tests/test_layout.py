"""The microbatch size chosen for the user (pprs_mpi.layout): the cost model's arithmetic, the rules that fix b,
its record in the trace and the report, bad values in one line, and bitwise equality where the choice is equal."""

import json

import numpy as np
import pytest

from conftest import mpirun, solve
from pprs_mpi import layout
from layout_problems import cheap_then_dense_graph, mlp_graph
from pprs_mpi.graph import Graph
from pprs_mpi.layout import LayoutError, choose
from pprs_mpi.problems import build
from pprs_mpi.schedule import SPECS
from pprs_mpi.analysis import summarize
from pprs_mpi.cli.report import main as report_main
from pprs_mpi.report import _planner_lines
from pprs_mpi.solve import main
from pprs_mpi.trace import load

MLP = "tests/layout_problems.py:mlp"


def halves(graph: Graph) -> list[tuple[str, ...]]:
    return graph.stages(2)


def test_one_process_takes_all_copies_in_one_microbatch():
    """Nothing overlaps in one process, so every extra microbatch only adds per-action costs: b = K."""
    graph = mlp_graph(64, 4)
    chosen = choose(layout.AUTO, 64, graph.stages(len(graph.order)), graph, parallel=False, max_rows=10**6)
    assert chosen.microbatch_size == 64 and "one process" in chosen.rule
    by_size = {c.microbatch_size: c.predicted_s for c in chosen.candidates}
    assert len(by_size) > 1 and min(by_size, key=by_size.get) == 64


def test_declared_model_matches_its_formula_and_pipelines_heavy_stages():
    """Two ranks over a width-512 MLP: the predicted time of each candidate is (M + P − 1)·max_s T_s(b) with
    T_s(b) = Σ (α + β·w·(b + b₀)) + μ·messages, and a microbatch smaller than K wins (the stages overlap)."""
    graph, K = mlp_graph(512, 8), 64
    stages = halves(graph)
    chosen = choose(layout.AUTO, K, stages, graph, parallel=True, max_rows=10**6)
    macs = [sum(512 * 512 for n in names if n.startswith("a")) for names in stages]
    messages = [1, 1]  # stage 0 sends its last activation, stage 1 the cotangent back
    for c in chosen.candidates:
        T = [len(names) * layout.ACTION_S + messages[s] * layout.MESSAGE_S
             + macs[s] * layout.MAC_S * (c.microbatch_size + layout.EFFICIENT_ROWS) for s, names in enumerate(stages)]
        assert c.n_microbatches == -(-K // c.microbatch_size)
        assert c.predicted_s == pytest.approx((c.n_microbatches + 1) * max(T), rel=1e-12)
    best = min(chosen.candidates, key=lambda c: c.predicted_s)
    assert chosen.microbatch_size == best.microbatch_size < K


def model_seconds(graph: Graph, stages, b: int, M: int) -> float:
    """The model's time per iteration of `stages` on their own ranks, from its formula (one message each way
    between consecutive stages of a chain)."""
    def node(name):
        return layout.ACTION_S + graph.op(name).macs * layout.MAC_S * (b + layout.EFFICIENT_ROWS)
    T = [sum(map(node, names)) + (2 if 0 < s < len(stages) - 1 else 1) * layout.MESSAGE_S
         for s, names in enumerate(stages)]
    return (M + len(stages) - 1) * max(T)


def test_the_planner_groups_nodes_by_their_cost_at_b_not_by_count():
    """Six cheap nodes, then two 64 × 64 layers: the declared costs (1.0 each) split the nine nodes 4 | 5; the
    planner weighs every candidate b with its own grouping, and the one it keeps is the best contiguous split
    of all (found here by trying every cut) and faster by the model than the declared one."""
    graph, K = cheap_then_dense_graph(), 64
    declared = graph.stages(2)
    chosen = choose(layout.AUTO, K, declared, graph, True, 10**6, regroup=lambda costs: graph.stages(2, costs))
    b, M = chosen.microbatch_size, -(-K // chosen.microbatch_size)
    order = graph.order
    every_cut = [(order[:i], order[i:]) for i in range(1, len(order))]
    best = min(every_cut, key=lambda stages: model_seconds(graph, stages, b, M))
    assert chosen.stages == best != tuple(declared) and [len(s) for s in declared] == [4, 5]
    kept = next(c for c in chosen.candidates if c.microbatch_size == b)
    assert kept.predicted_s == pytest.approx(model_seconds(graph, best, b, M), rel=1e-12)
    assert kept.predicted_s < model_seconds(graph, declared, b, M)
    assert kept.nodes_per_stage == tuple(map(len, best)) and "grouped into stages" in chosen.rule
    given = choose(4, K, declared, graph, True, 10**6, regroup=lambda costs: graph.stages(2, costs))
    assert given.microbatch_size == 4 and given.stages == min(
        every_cut, key=lambda stages: model_seconds(graph, stages, 4, K // 4))


def fixed_messages(graph: Graph) -> dict[str, float]:
    """The declared model's μ for every node's array: MESSAGE_S, whatever its size."""
    return dict.fromkeys((graph.root, *graph.order), layout.MESSAGE_S)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_the_simulation_with_unit_actions_is_the_schedules_own_makespan(schedule):
    """Every action taking the same time, the planner's simulation (each stage runs its row as soon as inputs are
    done) must end when the list scheduler's unit-time schedule does: two independent computations of one pass."""
    graph = mlp_graph(16, 3)
    parents = {name: graph.parents(name) for name in graph.order}
    unit = {name: 1000.0 for name in graph.order}  # a node's forward and backward: 500 s each; messages negligible
    for P in (1, 2, 3, 7):
        for M in (1, 2, 5):
            plan = SPECS[schedule].build(graph.stages(P), parents, M)
            assert layout._simulate(plan, graph, unit, fixed_messages(graph)) == pytest.approx(500.0 * plan.makespan,
                                                                                                  rel=1e-6)


def test_under_1f1b_the_planner_gives_the_leafs_stage_fewer_nodes():
    """1F1B on two ranks, two microbatches of seven equal nodes: the stage holding the leaf runs each microbatch's
    forward and backward back to back, so 4 | 3 takes 10 units where the balanced 3 | 4 takes 11; the planner's
    local search finds the best of all cuts (tried here one by one in the simulation)."""
    graph = mlp_graph(16, 3)  # seven nodes of equal measured cost
    parents = {name: graph.parents(name) for name in graph.order}
    unit = {name: 1000.0 for name in graph.order}
    chosen = choose(layout.MEASURED, 2, graph.stages(2), graph, True, 1, measure=lambda b: unit,
                    regroup=lambda costs: graph.stages(2, costs),
                    schedules={"1f1b": lambda stages, M: SPECS["1f1b"].build(stages, parents, M)})
    order = graph.order
    cuts = {i: layout._simulate(SPECS["1f1b"].build((order[:i], order[i:]), parents, 2), graph, unit,
                                fixed_messages(graph))
            for i in range(1, len(order))}
    best = min(cuts, key=cuts.get)
    assert chosen.microbatch_size == 1 and [len(s) for s in chosen.stages] == [best, len(order) - best]
    even = len(graph.stages(2)[0])  # the balanced split by cost: 3 | 4, the leaf's stage holding more
    assert (even, best) == (3, 4) and cuts[best] == pytest.approx(10_000, rel=1e-6) and cuts[even] >= 11_000
    assert chosen.candidates[0].predicted_s == pytest.approx(cuts[best], rel=1e-12)
    assert "simulated" in chosen.rule


def test_auto_weighs_both_schedules_and_a_tie_goes_to_gpipe():
    """--schedule auto: each (b, schedule) is simulated and the fastest kept. Seven equal heavy nodes on 2 ranks
    with two microbatches: 1F1B with 4 | 3 (10 units) beats GPipe (11 at best); with one microbatch both take
    the same time and GPipe, the paper's, stays; the choice is named in the candidates and the description."""
    graph = mlp_graph(16, 3)
    parents = {name: graph.parents(name) for name in graph.order}
    builders = {name: (lambda stages, M, name=name: SPECS[name].build(stages, parents, M))
                for name in ("gpipe", "1f1b")}
    unit = {name: 1000.0 for name in graph.order}

    def chosen(K):
        return choose(layout.MEASURED, K, graph.stages(2), graph, True, 1, measure=lambda b: unit,
                      regroup=lambda costs: graph.stages(2, costs), schedules=builders)

    two = chosen(2)
    assert (two.schedule, [len(s) for s in two.stages]) == ("1f1b", [4, 3])
    by_schedule = {c.schedule: c.predicted_s for c in two.candidates}
    assert by_schedule["1f1b"] == pytest.approx(10_000, rel=1e-6) and by_schedule["gpipe"] >= 11_000
    assert "b=1 under 1f1b" in two.describe() and "gpipe and 1f1b simulated" in two.rule
    one = chosen(1)
    assert one.schedule == "gpipe" and {c.schedule for c in one.candidates} == {"gpipe", "1f1b"}


def test_many_cheap_microbatches_stay_with_gpipe_whose_sends_do_not_wait(tmp_trace):
    """lad at b = 1 on 4 stages: 1F1B waits on each message's round trip, which the model's message latency
    makes slower than GPipe's stream of forwards; the run records the schedule it ran under."""
    args = ["--stages", "4", "--microbatch-size", "1", "--iters", "2", "--quiet", "--eval-every", "0"]
    assert main([*args, "--out", tmp_trace("auto.h5")]) == 0
    assert main([*args, "--schedule", "1f1b", "--out", tmp_trace("1f1b.h5")]) == 0
    auto, forced = load(tmp_trace("auto.h5")), load(tmp_trace("1f1b.h5"))
    assert auto.attrs["schedule"] == "gpipe" and auto.config["schedule"] == "auto"
    assert forced.attrs["schedule"] == "1f1b"
    assert np.array_equal(auto.result["y"], forced.result["y"])  # the schedule never changes the iterates


def test_the_grouping_reaches_the_trace_and_declared_keeps_the_old_one(tmp_trace):
    """At b = 64 a dense layer costs more than three cheap nodes: the planner's grouping is 6 | 3."""
    args = ["--problem", "tests/layout_problems.py:cheap_then_dense", "--stages", "2", "-K", "64",
            "--microbatch-size", "64", "--iters", "2", "--eval-every", "0", "--quiet"]
    assert main([*args, "--out", tmp_trace("auto.h5")]) == 0
    assert main([*args, "--balance", "declared", "--out", tmp_trace("declared.h5")]) == 0
    auto, declared = load(tmp_trace("auto.h5")), load(tmp_trace("declared.h5"))
    assert np.bincount(auto.graph["stage_of"]).tolist() == [6, 3]
    assert np.bincount(declared.graph["stage_of"]).tolist() == [4, 5]
    assert np.array_equal(auto.result["y"], declared.result["y"])  # the grouping never changes the iterates


def test_cheap_stages_keep_one_microbatch_even_on_several_ranks():
    """lad's 32 × 16 layers cost less than one action's overhead per copy: splitting K only adds actions."""
    graph = build("lad", depth=8, dim=16, rows=32, radius=1.0, problem_seed=0).graph
    chosen = choose(layout.AUTO, 8, graph.stages(4), graph, parallel=True, max_rows=10**6)
    assert chosen.microbatch_size == 8


def test_a_pipeline_is_compared_with_one_process_and_the_user_told_when_that_is_clearly_faster():
    """The one-process time is what the planner predicts for the graph without --stages (its best b, all nodes
    on one stage); lad's light stages pay more for their messages than they overlap, a width-512 MLP's do not."""
    lad = build("lad", depth=8, dim=16, rows=32, radius=1.0, problem_seed=0).graph
    pipeline = choose(layout.AUTO, 8, lad.stages(4), lad, parallel=True, max_rows=10**6)
    alone = choose(layout.AUTO, 8, lad.stages(1), lad, parallel=False, max_rows=10**6)  # what one process runs
    assert pipeline.one_process_s == pytest.approx(min(c.predicted_s for c in alone.candidates), rel=1e-12)
    # the serial engine's own stages (one per node) exchange arrays in memory: it predicts the same as one stage
    per_node = choose(layout.AUTO, 8, lad.stages(len(lad.order)), lad, parallel=False, max_rows=10**6)
    assert [c.predicted_s for c in per_node.candidates] == [c.predicted_s for c in alone.candidates]
    assert alone.one_process_s is None and choose(2, 8, lad.stages(4), lad, True, 10**6).one_process_s is None
    note = pipeline.one_process_note(4)
    assert note.startswith("note: the planner predicts") and "on these 4 stages" in note
    assert "one process: " in pipeline.describe()
    mlp = mlp_graph(512, 8)
    heavy = choose(layout.AUTO, 64, halves(mlp), mlp, parallel=True, max_rows=10**6)
    assert heavy.one_process_s > min(c.predicted_s for c in heavy.candidates)
    assert heavy.one_process_note(2) is None
    light = mlp_graph(64, 8)  # predicted a little faster alone: within the model's error, so no note
    within = choose(layout.AUTO, 16, halves(light), light, parallel=True, max_rows=10**6)
    assert within.one_process_s < min(c.predicted_s for c in within.candidates) < 1.5 * within.one_process_s
    assert within.one_process_note(2) is None


def test_the_one_process_comparison_reaches_the_banner_the_trace_and_the_report(tmp_trace, capsys):
    out = tmp_trace()
    assert main(["--stages", "4", "--iters", "2", "--eval-every", "0", "--out", out]) == 0
    assert "note: the planner predicts" in capsys.readouterr().out
    assert report_main([out]) == 0
    assert "one process: " in " ".join(capsys.readouterr().out.split())


def test_the_report_sets_the_predicted_time_beside_the_measured_one(tmp_trace, capsys):
    """The planner's prediction for the chosen layout (from the trace's record) stands next to the timeline's
    measured pass, with their ratio. A pipeline weighed by the declared costs that is off by 2x or more gets a
    hint: to time the nodes where its busiest rank computed longer than the predicted pass, else that messages
    cost more than the model says; a run whose b the model could not change (one process) gets none."""
    out = tmp_trace()
    assert main(["--stages", "2", "--iters", "3", "--eval-every", "0", "--quiet", "--out", out]) == 0
    record = json.loads(load(out).attrs["layout_choice"])
    chosen = next(c for c in record["candidates"] if c["microbatch_size"] == record["microbatch_size"]
                  and c["schedule"] == (record["schedule"] or c["schedule"]))
    summary = summarize(load(out))
    assert summary["predicted_iteration_time"] == chosen["predicted_s"] and summary["declared_model_on_ranks"]
    assert report_main([out]) == 0
    text = " ".join(capsys.readouterr().out.split())
    ratio = summary["iteration_time"] / chosen["predicted_s"]
    assert f"planner predicted {chosen['predicted_s'] * 1e6:.3g} µs per iteration, measured " in text
    assert f"({ratio:.2g}× the prediction)" in text
    def hinted(**changes) -> bool:  # to time the nodes
        return "declared costs are far from this machine's: --microbatch-size measured times the nodes" in \
            _planner_lines({**summary, **changes})[0][1]

    predicted = chosen["predicted_s"]
    assert hinted(iteration_time=3 * predicted) and hinted(iteration_time=predicted / 3)
    assert not hinted(iteration_time=1.5 * predicted)
    assert not hinted(iteration_time=3 * predicted, declared_model_on_ranks=False)
    waiting = {"iteration_time": 3 * predicted, "rank_fractions": [{"rank": 0, "compute": 0.3, "wait": 0.6}]}
    line = _planner_lines({**summary, **waiting})[0][1]
    assert not hinted(**waiting) and "messages cost more here" in line and line.endswith("measured times")
    out = tmp_trace("alone.h5")
    assert main(["--iters", "3", "--eval-every", "0", "--quiet", "--out", out]) == 0
    alone = summarize(load(out))
    assert alone["predicted_iteration_time"] > 0 and not alone["declared_model_on_ranks"]


def test_timed_messages_enter_the_model_by_the_bytes_they_carry():
    """With `measured` on ranks, μ is MESSAGE_S plus the network's latency beyond the reference machine's plus
    its cost per byte of the message's array (b rows of the edge's parent): a network that adds nothing predicts
    what the fixed μ does, a slow one predicts each candidate by that formula and takes fewer, larger
    microbatches; the declared model ignores timings."""
    graph, K = mlp_graph(64, 4), 16
    stages = halves(graph)
    measured = {b: {name: 1e-6 + 1e-4 * b for name in graph.order} for b in range(1, K + 1)}  # per copy, mostly

    def chosen(messages, request=layout.MEASURED):
        return choose(request, K, stages, graph, True, 10**6, measure=measured.__getitem__, messages=messages)

    none = layout.MessageCost(layout.PING_PONG_S, 0.0, 1)
    slow = layout.MessageCost(layout.PING_PONG_S + 5e-3, 2e-9, 1)
    assert [c.predicted_s for c in chosen(none).candidates] == [c.predicted_s for c in chosen(None).candidates]
    timed = chosen(slow)
    for c in timed.candidates:
        b = c.microbatch_size
        mu = layout.MESSAGE_S + 5e-3 + b * 64 * layout.BYTES_PER_ENTRY * 2e-9  # every crossing carries 64 wide rows
        T = [sum(measured[b][n] for n in names) + mu for names in stages]  # one message each way
        assert c.predicted_s == pytest.approx((c.n_microbatches + 1) * max(T), rel=1e-12)
    assert timed.microbatch_size > chosen(none).microbatch_size and "messages timed between" in timed.rule
    assert timed.messages == slow and json.loads(json.dumps(timed.as_dict()))["messages"]["latency_s"] > 5e-3
    assert chosen(slow, layout.AUTO).messages is None and "messages timed" not in chosen(slow, layout.AUTO).rule


def test_measured_costs_drive_the_choice_and_a_resume_keeps_the_stored_one():
    graph, K = mlp_graph(16, 4), 16
    stages = halves(graph)
    seen = []

    def per_copy_heavy(b):  # each node costs 1 ms per copy and nothing fixed: as many microbatches as allowed
        seen.append(b)
        return {name: 1e-3 * b for name in graph.order}

    chosen = choose(layout.MEASURED, K, stages, graph, parallel=True, max_rows=10**6, measure=per_copy_heavy)
    assert "measured" in chosen.rule and chosen.microbatch_size == 2 and 1 in seen and K in seen

    def fixed_heavy(b):  # 1 s fixed per node call: one microbatch
        return {name: 1.0 + 1e-9 * b for name in graph.order}

    assert choose(layout.MEASURED, K, stages, graph, True, 10**6, measure=fixed_heavy).microbatch_size == K

    def never(b):
        raise AssertionError("a resume must not measure again")

    resumed = choose(layout.MEASURED, K, stages, graph, True, 10**6, stored=4, measure=never)
    assert (resumed.microbatch_size, resumed.rule) == (4, "the resumed run's choice")


def test_paper_units_and_memory_cap():
    graph = mlp_graph(16, 2)
    assert choose(layout.AUTO, 8, halves(graph), graph, True, 10**6, simulated=True).microbatch_size == 1
    capped = choose(layout.AUTO, 64, [tuple(graph.order)], graph, False, max_rows=5)
    assert capped.microbatch_size == 5 and all(c.microbatch_size <= 5 for c in capped.candidates)


def test_a_forced_size_above_K_is_refused_naming_both():
    graph = mlp_graph(16, 2)
    with pytest.raises(LayoutError, match="microbatch-size 9 is larger than K = 8"):
        choose(9, 8, halves(graph), graph, True, 10**6)
    assert choose(3, 8, halves(graph), graph, True, 10**6).microbatch_size == 3


@pytest.mark.parametrize("value, expected", [
    ("0", "microbatch-size must be >= 1, auto or measured, got 0"),
    ("fast", "microbatch-size must be a count >= 1, auto or measured, got 'fast'"),
    ("9", "microbatch-size 9 is larger than K = 8"),
])
def test_bad_sizes_are_one_line(tmp_trace, value, expected):
    result = solve("--microbatch-size", value, "--iters", "2", "--quiet", "--out", tmp_trace())
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


def test_the_choice_is_in_the_trace_and_the_report(tmp_trace, capsys):
    out = tmp_trace()
    assert main(["--iters", "3", "--quiet", "--out", out]) == 0
    trace = load(out)
    assert trace.attrs["microbatch_size"] == 8 and trace.attrs["n_microbatches"] == 1
    assert trace.config["microbatch_size"] == "auto" and trace.attrs["makespan"] == 16
    capsys.readouterr()
    assert report_main([out]) == 0
    assert "microbatch size b=8 (the ops' declared costs, one process" in capsys.readouterr().out


def test_toml_takes_a_count_or_a_rule(tmp_path, tmp_trace):
    for value, b in (("2", 2), ('"auto"', 8)):
        config = tmp_path / "run.toml"
        config.write_text(f"microbatch_size = {value}\niters = 2\nquiet = true\n")
        assert main(["--config", str(config), "--out", tmp_trace(f"{b}.h5")]) == 0
        assert load(tmp_trace(f"{b}.h5")).attrs["microbatch_size"] == b


@pytest.mark.mpi
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_default_choice_is_bitwise_the_same_serially_with_stages_and_on_ranks(tmp_trace, schedule):
    """The default depends on the configuration and the graph only: `--stages 2` emulates two ranks, so the
    serial engine and mpirun -n 2 choose the same b < K and grouping and compute the same iterates."""
    args = ["--problem", MLP, "-K", "64", "--iters", "3", "--eval-every", "0", "--quiet", "--schedule", schedule]
    serial = solve(*args, "--stages", "2", "--out", tmp_trace("serial.h5"))
    ranks = mpirun(2, *args, "--out", tmp_trace("mpi.h5"), timeout=120)
    assert serial.returncode == 0 and ranks.returncode == 0, serial.stderr + ranks.stderr
    a, b = load(tmp_trace("serial.h5")), load(tmp_trace("mpi.h5"))
    assert a.attrs["microbatch_size"] == b.attrs["microbatch_size"] < 64
    assert np.array_equal(a.graph["stage_of"], b.graph["stage_of"])
    assert np.array_equal(a.result["y"], b.result["y"])


def test_measured_on_ranks_times_the_messages_and_records_them(tmp_trace):
    """mpirun -n 2 with --microbatch-size measured times one neighbouring pair before choosing, records what it
    found in the trace and names it in the rule; the b it chose computes the iterates that b gives serially."""
    args = ["--problem", MLP, "-K", "16", "--iters", "3", "--eval-every", "0", "--quiet"]
    ranks = mpirun(2, *args, "--microbatch-size", "measured", "--out", tmp_trace("mpi.h5"), timeout=120)
    assert ranks.returncode == 0, ranks.stderr
    trace = load(tmp_trace("mpi.h5"))
    record = json.loads(trace.attrs["layout_choice"])
    assert record["messages"]["pairs"] == 1 and record["messages"]["latency_s"] > 0
    assert record["messages"]["per_byte_s"] >= 0 and "messages timed between 1 neighbouring" in record["rule"]
    b = int(trace.attrs["microbatch_size"])
    serial = solve(*args, "--stages", "2", "--microbatch-size", b, "--out", tmp_trace("serial.h5"))
    assert serial.returncode == 0, serial.stderr
    assert np.array_equal(load(tmp_trace("serial.h5")).result["y"], trace.result["y"])


def test_a_resumed_measured_run_continues_bitwise(tmp_trace):
    """A run whose b was measured is resumed with the b it recorded: bitwise the uninterrupted run of that b."""
    first, whole = tmp_trace("first.h5"), tmp_trace("whole.h5")
    args = ["--problem", MLP, "-K", "16", "--stages", "2", "--eval-every", "0", "--quiet"]
    assert main([*args, "--microbatch-size", "measured", "--iters", "4", "--checkpoint-every", "2",
                 "--out", first]) == 0
    b = load(first).attrs["microbatch_size"]
    assert main(["--resume", first, "--iters", "8", "--quiet"]) == 0
    assert main([*args, "--microbatch-size", str(b), "--iters", "8", "--out", whole]) == 0
    resumed = load(first)
    assert resumed.attrs["microbatch_size"] == b and "resumed" in resumed.attrs["layout_choice"]
    assert np.array_equal(resumed.result["y"], load(whole).result["y"])




@pytest.mark.parametrize("problem, stages", [("lad", 1), ("branch", 10)])
def test_a_serial_run_of_one_microbatch_takes_one_stage_only_where_that_keeps_the_time_units(problem, stages,
                                                                                              tmp_path):
    """A chain's 2Δ units per iteration are the same in one stage; a DAG's branches would add units, so it keeps
    one stage per node. Either way the iterates and the pipeline time are those of one stage per node."""
    from pprs_mpi.cli.solve import main
    from pprs_mpi.trace import load
    flags = ["--problem", problem, "-K", "8", "--iters", "3", "--eval-every", "0", "--quiet"]
    assert main([*flags, "--out", str(tmp_path / "default.h5")]) == 0
    nodes = len(build(problem).graph.order)
    assert main([*flags, "--stages", str(nodes), "--out", str(tmp_path / "per_node.h5")]) == 0
    default, per_node = load(str(tmp_path / "default.h5")), load(str(tmp_path / "per_node.h5"))
    assert (default.attrs["stages"], per_node.attrs["stages"]) == (stages, nodes)
    assert default.attrs["n_microbatches"] == per_node.attrs["n_microbatches"] == 1
    assert np.array_equal(default.columns["pipeline_time"], per_node.columns["pipeline_time"])
    assert np.array_equal(default.result["y"], per_node.result["y"])
