"""Shape checks at run time: an op's output, a VJP's cotangents and every received message must have the
shape the graph gives them. A mismatch is one line naming the node (or edge), the microbatch and both
shapes, in the serial engine and under MPI alike, and the trace never says `completed`."""

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import mpirun, run, solve
from pprs_mpi.trace import load

HERE = Path(__file__).parent
ARGS = ["--problem", f"{HERE / 'faulty_problem.py'}:faulty", "--iters", "3", "-K", "3", "--microbatch-size", "1",
        "--quiet"]
EXPECTED = {
    "forward-long": "ShapeError: node 'mix' (Mix), the evaluation pass f(y): forward returned shape (1, 5), "
                    "expected (1, 4) (edge 'mix' -> 'abs')",
    "vjp-short": "ShapeError: node 'mix' (Mix), microbatch 0: VJP returned a cotangent of shape (1, 3) for edge "
                 "'scale' -> 'mix', expected (1, 4)",
    "forward-dtype": "DtypeError: node 'mix' (Mix), the evaluation pass f(y): forward returned dtype float64, "
                     "expected float32 (edge 'mix' -> 'abs')",
    "vjp-dtype": "DtypeError: node 'mix' (Mix), microbatch 0: VJP returned a cotangent of dtype float64 for edge "
                 "'scale' -> 'mix', expected float32",
}


def solve_faulty(fault, ranks, out):
    """The user's problem solved serially (ranks=None) or under mpirun; (exit code, pprs_mpi lines).
    The dtype faults run under --dtype float32, where a float64 array is the op's mistake."""
    args = [*ARGS, "--problem-arg", f"fault={fault}", "--out", out, *(["--dtype", "float32"] * ("dtype" in fault))]
    if ranks is None:
        result = solve(*args, "--engine", "serial", "--stages", 3, timeout=60)
    else:
        result = mpirun(ranks, *args, timeout=60)
    return result.returncode, [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]


@pytest.mark.parametrize("fault", sorted(EXPECTED))
@pytest.mark.parametrize("ranks", [None, *(pytest.param(n, marks=pytest.mark.mpi) for n in (2, 3))])
def test_a_wrong_forward_or_cotangent_shape_is_one_line_naming_the_node_in_both_engines(tmp_trace, fault, ranks):
    code, lines = solve_faulty(fault, ranks, tmp_trace())
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("pprs_mpi.solve: error on rank ")
    assert lines[0].endswith(EXPECTED[fault])  # the same line in both engines, but for the rank
    assert load(tmp_trace()).status == "failed"


NONFINITE = {  # the evaluation f(y_0) comes first, and the forward fault makes it NaN already
    "nan-forward": "f(y_0) is not finite; the first non-finite value: the forward output of node 'mix' (Mix), "
                   "the evaluation pass f(y_0)",
    "nan-vjp": "f or its gradient is not finite; the first non-finite value: the cotangent node 'mix' (Mix) "
               "returned for edge 'scale' -> 'mix', microbatch 0",
}


@pytest.mark.parametrize("fault", ["nan-forward", "nan-vjp"])
@pytest.mark.parametrize("ranks", [None, pytest.param(3, marks=pytest.mark.mpi)])
def test_divergence_names_the_node_and_microbatch_of_the_first_nan_in_both_engines(tmp_trace, fault, ranks):
    """Found after the run has diverged (the failing pass redone with checks on rank 0), the same line in
    both engines; no NumPy warning on any rank."""
    args = [*ARGS, "--problem-arg", f"fault={fault}", "--out", tmp_trace()]
    result = solve(*args, "--engine", "serial", "--stages", 3, timeout=60) if ranks is None else mpirun(
        ranks, *args, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]
    assert result.returncode == 1 and "Warning" not in result.stderr, result.stderr
    expected = f"pprs_mpi.solve: diverged at iteration 0: {NONFINITE[fault]}; trace {tmp_trace()} marked diverged"
    assert lines == [expected]
    assert load(tmp_trace()).status == "diverged"


@pytest.mark.mpi
def test_the_helper_problem_runs_when_its_op_behaves(tmp_trace):
    """The control: without a fault both engines complete, bitwise equal (so the failures above are the checks')."""
    assert solve_faulty("none", None, tmp_trace("serial.h5")) == (0, [])
    assert solve_faulty("none", 2, tmp_trace("mpi.h5")) == (0, [])
    serial, mpi = load(tmp_trace("serial.h5")), load(tmp_trace("mpi.h5"))
    assert serial.status == mpi.status == "completed"
    assert np.array_equal(serial.result["y"], mpi.result["y"])


@pytest.mark.mpi
@pytest.mark.parametrize("width, received", [(5, "more elements"), (3, "3 elements")])
def test_a_message_longer_or_shorter_than_the_receivers_graph_says_names_the_edge(width, received):
    """Ranks that disagree on a node's width (each sender's own check passes): the receiver counts the
    elements from the MPI status instead of failing with a bare MPI_ERR_TRUNCATE or reading a short message."""
    result = run(["mpirun", "-n", "2", sys.executable, str(HERE / "shape_disagree_run.py")],
                 env={"PPRS_RANK0_WIDTH": str(width)}, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error on rank")]
    assert lines == [f"error on rank 1: ShapeError: rank 1 received {received} as the activation of edge 'spread' -> "
                     "'abs' (microbatch 0, iteration 0, from rank 0), expected shape (1, 4) (4 elements)"]
