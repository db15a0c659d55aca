"""The schedule seam, measured: a new policy is one `ScheduleSpec` (here in this test file, as a plugin
module would hold it) and its tests; registered, it is a `--schedule` choice and both engines run it."""

import numpy as np
import pytest

import noncontiguous
from pprs_mpi import config
from pprs_mpi.api import engine_for
from pprs_mpi.schedule import SPECS, ScheduleSpec, build
from test_schedule import CHAIN3, DIAMOND


def eager(stage, ready, state):
    """Whatever is ready first by the common priority, forward or backward alike, with no in-flight cap."""
    return min(ready, key=state.dag.priority, default=None)


EAGER = ScheduleSpec("eager", eager, "the lowest-priority ready action, no preference")


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(SPECS, EAGER.name, EAGER)


@pytest.mark.parametrize("parents, stages", [
    (CHAIN3, [("a",), ("b",), ("c",)]), (CHAIN3, [("a", "c"), ("b",)]), (DIAMOND, [("a", "d"), ("b", "c")]),
    (DIAMOND, [("a",), ("b",), ("c",), ("d",)]),
])
@pytest.mark.parametrize("M", [1, 3])
def test_eager_schedules_are_legal(parents, stages, M):
    schedule = build("eager", stages, parents, M)  # validated by build
    assert schedule.makespan <= 2 * M * len(parents)


def test_eager_is_a_choice_of_the_configuration_and_gives_the_same_gradient():
    assert config.resolve({"schedule": "eager"}).pipeline.schedule == "eager"
    graph, x = noncontiguous.chain(), noncontiguous.point()
    engine = engine_for(graph, noncontiguous.STAGES, noncontiguous.sampling(), schedule="eager")
    reference = engine_for(graph, noncontiguous.STAGES, noncontiguous.sampling(), schedule="gpipe")
    grad, values = engine.gradient(x, 2)
    expected, expected_values = reference.gradient(x, 2)
    np.testing.assert_allclose(grad, expected, rtol=1e-14)
    assert np.array_equal(values, expected_values) and engine.evaluate(x, 2) == reference.evaluate(x, 2)


def round_robin(graph, n_stages, costs=None):
    """Node i of the topological order on stage i mod n_stages: every edge crosses stages, half of them back."""
    return [tuple(graph.order[s::n_stages]) for s in range(n_stages)]


def test_a_spec_places_the_nodes_of_a_run(tmp_trace, monkeypatch):
    """A spec's own placement is the run's: round-robin over 2 stages, recorded in the trace, with the iterates
    of the default placement (the same nodes compute the same values wherever they sit)."""
    from mpi4py import MPI

    from pprs_mpi import minimize, trace
    monkeypatch.setitem(SPECS, "eager-round-robin", ScheduleSpec("eager-round-robin", eager, "round-robin",
                                                                 placement=round_robin))
    runs = {name: minimize("lad", comm=MPI.COMM_SELF, depth=4, K=4, iters=3, stages=2, schedule=name, quiet=True,
                           out=tmp_trace(f"{name}.h5")) for name in ("eager-round-robin", "gpipe")}
    graph = trace.load(runs["eager-round-robin"].trace).graph
    assert graph["stage_of"] == [i % 2 for i in range(len(graph["names"]))]
    assert trace.load(runs["gpipe"].trace).graph["stage_of"] == sorted(graph["stage_of"])
    np.testing.assert_allclose(runs["eager-round-robin"].y, runs["gpipe"].y, rtol=1e-13)
