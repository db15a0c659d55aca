"""How a run ends when stdout closes or only f(y_t) is not finite, and what a resume on another layout
records (issue 25)."""

import json
import os
import subprocess
import sys

import numpy as np

import pprs_mpi
from conftest import MPI_ENV
from pprs_mpi.graph import Graph
from pprs_mpi.ops import Op, SquaredNorm
from pprs_mpi.solve import main
from pprs_mpi.trace import load


class NanAlone(Op):
    """The identity, except on a batch of one row (f(y_t) is evaluated on y_t alone): NaN there."""

    def output_shape(self, shape):
        return shape

    def forward(self, xp, x):
        return x * xp.nan if x.shape[0] == 1 else x + 0.0

    def vjp(self, xp, inputs, output, cotangent):
        return [cotangent + 0.0]


def test_nan_only_in_f_of_y_ends_the_run_diverged(tmp_path):
    graph = Graph.chain(3, [NanAlone(), SquaredNorm()], names=["nan_alone", "sq"])
    result = pprs_mpi.minimize(graph, K=4, microbatch_size=4, iters=10, eval_every=5, quiet=True,
                               out=str(tmp_path / "run.h5"))
    assert result.status == "diverged" and result.exit_code == 1
    assert "f(y_0) is not finite" in result.message and np.isfinite(result.y).all()
    assert load(tmp_path / "run.h5").status == "diverged"
    at_the_end = pprs_mpi.minimize(graph, K=4, microbatch_size=4, iters=10, eval_every=0, quiet=True,
                                   out=str(tmp_path / "end.h5"))  # f(y_t) evaluated only after the last iteration
    assert at_the_end.status == "diverged" and "f(y_10) is not finite" in at_the_end.message
    assert load(tmp_path / "end.h5").status == "diverged"


def test_a_closed_stdout_does_not_stop_a_serial_run(tmp_path):
    """`solve ... | head -2`: the run goes on to the end, quietly, and completes."""
    out = tmp_path / "run.h5"
    command = [sys.executable, "-m", "pprs_mpi.solve", "--problem", "lad", "--depth", "3", "--dim", "4", "--rows",
               "6", "--iters", "400", "--progress-every", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, **MPI_ENV})
    for _ in range(2):
        process.stdout.readline()
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert b"Traceback" not in err and b"Broken" not in err
    assert load(out).status == "completed" and load(out).columns["iteration"][-1] == 400


def test_a_resume_on_another_layout_records_where_pipeline_time_changes_units(tmp_path):
    out = str(tmp_path / "run.h5")
    flags = ["--problem", "lad", "--depth", "3", "--dim", "4", "--rows", "6", "--microbatch-size", "1", "--quiet"]
    assert main([*flags, "--stages", "3", "--iters", "4", "--checkpoint-every", "2", "--out", out]) == 0
    assert main(["--resume", out, "--stages", "1", "--iters", "6"]) == 0
    segments = json.loads(load(out).attrs["layout_segments"])
    assert [(s["from_iteration"], s["stages"]) for s in segments] == [(0, 3), (4, 1)]
    assert segments[0]["makespan"] != segments[1]["makespan"]
    steps = np.diff(load(out).columns["pipeline_time"][1:])
    assert set(steps[:3]) == {segments[0]["makespan"]} and set(steps[3:]) == {segments[1]["makespan"]}



NO_READ_BACK = """
import sys
import pprs_mpi, pprs_mpi.trace

def refuse(*args, **kwargs):
    raise AssertionError("the trace was read back")

pprs_mpi.trace.load = refuse
result = pprs_mpi.minimize("lad", depth=3, K=4, iters=6, eval_every=2, out=sys.argv[1])
"""


def test_a_run_builds_its_result_and_summary_without_reading_its_trace_back(tmp_path):
    """On 2 ranks, the Result and the closing lines (each rank's compute and wait) come from the run's outcome, the
    rows it wrote and the timeline it gathered, not from reading the file back; they agree with the file."""
    script, out = tmp_path / "no_read_back.py", tmp_path / "run.h5"
    script.write_text(NO_READ_BACK)
    result = subprocess.run(["mpirun", "-n", "2", sys.executable, str(script), str(out)], capture_output=True,
                            text=True, timeout=90, env={**os.environ, **MPI_ENV})
    assert result.returncode == 0, result.stderr
    assert "done: f(y_T)" in result.stdout and "rank 1: compute" in result.stdout, result.stdout
    stored = load(out)
    f_eval = stored.columns["f_eval"]
    assert f"f(y_T) = {f_eval[-1]:.6g}" in result.stdout and stored.status == "completed"
