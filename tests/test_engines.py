"""The serial engine against plain backpropagation, the |x| closed form, and the noise contract."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import noncontiguous
import test_schedule
from pprs_mpi import noise
from pprs_mpi.api import engine_for
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Abs, Add, L1Norm, SquaredNorm
from pprs_mpi.problems import build
from pprs_mpi.schedule import SPECS
from reference import backprop, evaluate


def serial_engine(graph, sampling, n_stages=None, schedule="gpipe"):
    return engine_for(graph, graph.stages(n_stages or len(graph.order)), sampling, schedule=schedule)


@pytest.mark.parametrize("problem", ["lad", "linf", "branch"])
@pytest.mark.parametrize("n_stages, schedule, b", [(None, "gpipe", 1), (2, "1f1b", 3), (3, "gpipe", 2)])
def test_gradient_is_the_mean_of_per_sample_backprops(problem, n_stages, schedule, b):
    graph = build(problem, depth=5, dim=6, rows=8, radius=1.0, problem_seed=2).graph
    sampling = Sampling(K=7, gamma=0.3, seed=11, microbatch_size=b)
    x, t = np.linspace(-1, 1, 6), 4
    grad, values = serial_engine(graph, sampling, n_stages, schedule).gradient(x, t)
    thetas = np.stack([x + 0.3 * noise.standard_normal(11, t, k, 6) for k in range(7)])
    per_sample = [backprop(graph, evaluate(graph, th[None])) for th in thetas]
    expected_values = evaluate(graph, thetas)[graph.leaf]
    np.testing.assert_allclose(grad, np.sum(per_sample, axis=0)[0] / 7, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(values, expected_values, rtol=1e-13)


def test_evaluate_is_the_plain_forward_value():
    graph = build("branch", depth=4, dim=5, rows=6, radius=1.0, problem_seed=0).graph
    y = np.full(5, 0.2)
    value = serial_engine(graph, Sampling(3, 0.1, 0, 1), 2).evaluate(y, 0)
    assert value == evaluate(graph, y[None])[graph.leaf][0]


def test_abs_smoothed_gradient_matches_closed_form():
    """For f = |x|, E[f'(x + γX)] = 2Φ(x/γ) − 1 = erf(x / (γ√2)); K = 4000 gives a standard error below 0.016."""
    graph, gamma, K = Graph.chain(1, [L1Norm()]), 0.5, 4000
    engine = serial_engine(graph, Sampling(K, gamma, seed=5, microbatch_size=500))
    for x in (-0.7, -0.2, 0.1, 0.4, 1.5):
        grad, _ = engine.gradient(np.array([x]), t=0)
        assert grad[0] == pytest.approx(math.erf(x / (gamma * math.sqrt(2))), abs=0.06)


def test_noise_is_philox_keyed_by_seed_with_counter_k_t():
    """The documented construction, from a fresh generator: what a user can reproduce without pprs_mpi."""
    for seed, t, k in ((0, 0, 0), (5, 3, 7), (5, 7, 3), (2**40, 11, 2)):
        bits = np.random.Philox(key=np.array([seed, 0], dtype=np.uint64),
                                counter=np.array([0, 0, k, t], dtype=np.uint64))
        assert np.array_equal(noise.standard_normal(seed, t, k, 9), np.random.Generator(bits).standard_normal(9))


def test_noise_depends_only_on_seed_iteration_and_sample():
    a = noise.perturbations(3, 7, range(2, 5), 4)
    assert np.array_equal(a[1], noise.standard_normal(3, 7, 3, 4))
    assert not np.array_equal(noise.standard_normal(3, 7, 3, 4), noise.standard_normal(3, 8, 3, 4))
    assert not np.array_equal(noise.standard_normal(3, 7, 3, 4), noise.standard_normal(4, 7, 3, 4))
    draws = np.stack([noise.standard_normal(0, 0, k, 1)[0] for k in range(4000)])
    assert abs(draws.mean()) < 0.06 and abs(draws.std() - 1) < 0.05


@pytest.mark.parametrize("antithetic", [False, True])
def test_noise_drawn_ahead_while_waiting_is_the_noise_drawn_when_needed(antithetic):
    """Stage 0 draws X ahead when a receive would wait (the MPI transport's `idle`): at any point of a pass,
    into the next pass, or for a pass that never comes (t jumps), G_t stays bitwise the same."""
    graph = build("lad", depth=4, dim=5, rows=7, radius=1.0, problem_seed=1).graph
    sampling = Sampling(6, 0.2, 9, 2, antithetic=antithetic)
    plain, ahead = serial_engine(graph, sampling, 2, "1f1b"), serial_engine(graph, sampling, 2, "1f1b")
    root, transport = ahead.runners[0].root, ahead.runners[0].transport
    assert root.draw_ahead() is False  # before the first pass: no iteration to draw for
    drawn, receive = [], transport.recv

    def recv_as_if_waiting(channel, mb):  # as the MPI transport does when a message is not there yet
        drawn.append(transport.idle())
        return receive(channel, mb)

    transport.recv = recv_as_if_waiting
    rows, draws = root._noise._rows, []
    rows.draw = lambda t, samples, draw=rows.draw: draws.append(t) or draw(t, samples)
    x = np.linspace(-1, 1, 5)
    for t in (3, 4, 9, 10):
        expected, got = plain.gradient(x, t), ahead.gradient(x, t)
        assert np.array_equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert False in drawn  # no more than AHEAD at a time
    # Each pass's 3 microbatches drawn once, ahead or not; wasted: the 2 drawn ahead for t = 5 and t = 11
    assert sorted(draws) == [3] * 3 + [4] * 3 + [5] * 2 + [9] * 3 + [10] * 3 + [11] * 2


def test_no_noise_is_drawn_ahead_without_smoothing():
    graph = build("lad", depth=3, dim=4, rows=5, radius=1.0, problem_seed=1).graph
    engine = serial_engine(graph, Sampling(4, 0.0, 9, 2), 2)
    engine.gradient(np.ones(4), 0)
    assert engine.runners[0].root.draw_ahead() is False


def test_microbatch_size_and_schedule_do_not_change_the_iterates_beyond_rounding():
    graph = build("lad", depth=4, dim=5, rows=7, radius=1.0, problem_seed=1).graph
    x = np.ones(5)
    g1, v1 = serial_engine(graph, Sampling(6, 0.2, 9, 1), schedule="gpipe").gradient(x, 3)
    g2, v2 = serial_engine(graph, Sampling(6, 0.2, 9, 1), 2, schedule="1f1b").gradient(x, 3)
    g3, _ = serial_engine(graph, Sampling(6, 0.2, 9, 4)).gradient(x, 3)
    assert np.array_equal(g1, g2) and np.array_equal(v1, v2)  # same math, other order of actions
    np.testing.assert_allclose(g1, g3, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(dag=test_schedule.dags(max_nodes=7), data=st.data())
def test_any_dag_placement_and_schedule_give_the_mean_of_per_sample_gradients(dag, data):
    """Random DAGs with nodes placed on stages in any way (a root child may sit on any stage): the
    lazily drawn noisy copies reach every reader in time (the in-process mailbox raises otherwise),
    root cotangents are folded in as they come, and G_t is the mean of plain backprops."""
    order, parents = dag
    nodes = [Node(v, Abs() if len(parents[v]) == 1 else Add(), tuple(parents[v])) for v in order]
    graph = Graph(3, [*nodes, Node("out", SquaredNorm(), (order[-1],))], root=test_schedule.ROOT)
    P = data.draw(st.integers(1, len(graph.order)), label="stages")
    shuffled = data.draw(st.permutations(graph.order), label="placement")
    stage = {v: i if i < P else data.draw(st.integers(0, P - 1)) for i, v in enumerate(shuffled)}
    stages = [tuple(v for v in graph.order if stage[v] == s) for s in range(P)]
    K, b = data.draw(st.integers(1, 7), label="K"), data.draw(st.integers(1, 3), label="microbatch size")
    sampling = Sampling(K, gamma=0.3, seed=5, microbatch_size=b)
    schedule = data.draw(st.sampled_from(list(SPECS)))
    x, t = np.array([0.4, -0.3, 0.2]), 2
    grad, values = engine_for(graph, stages, sampling, schedule=schedule).gradient(x, t)
    thetas = np.stack([x + 0.3 * noise.standard_normal(5, t, k, 3) for k in range(K)])
    expected = np.mean([backprop(graph, evaluate(graph, th[None]))[0] for th in thetas], axis=0)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(values, evaluate(graph, thetas)["out"], rtol=1e-13)


@pytest.mark.parametrize("schedule", SPECS)
def test_a_placement_not_contiguous_in_topological_order_works_in_the_serial_engine(schedule):
    """Stages [("a", "c", "out"), ("b",)] on a chain: c needs b from a later stage. The gradient pass
    follows the schedule; the evaluation runs its forwards in topological order across stages (it used
    to run stage after stage, and raised 'channel 2, microbatch 4 is needed before it is sent')."""
    graph, x = noncontiguous.chain(), noncontiguous.point()
    engine = engine_for(graph, noncontiguous.STAGES, noncontiguous.sampling(), schedule=schedule)
    contiguous = serial_engine(graph, noncontiguous.sampling(), 2, schedule)
    assert engine.evaluate(x, 2) == evaluate(graph, x[None])["out"][0]
    grad, values = engine.gradient(x, 2)
    expected_grad, expected_values = contiguous.gradient(x, 2)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-14)
    assert np.array_equal(values, expected_values)


@pytest.mark.mpi
def test_a_placement_not_contiguous_in_topological_order_is_bitwise_the_same_under_mpi():
    import json
    import sys
    from pathlib import Path

    from conftest import run
    here = Path(__file__).parent
    result = run(["mpirun", "-n", "2", sys.executable, str(here / "noncontiguous_run.py")],
                 env={"PYTHONPATH": str(here)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    engine = engine_for(noncontiguous.chain(), noncontiguous.STAGES, noncontiguous.sampling(), schedule="1f1b")
    grad, values = engine.gradient(noncontiguous.point(), 2)
    assert report["grad"] == [float(g).hex() for g in grad]
    assert report["values"] == [float(v).hex() for v in values]
    assert report["f"] == float(engine.evaluate(noncontiguous.point(), 2)).hex()
