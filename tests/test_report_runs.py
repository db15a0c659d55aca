"""The report on real traces: a serial run, a 3-rank mpirun run and a run still in progress.

Each summary number is checked against the trace's own data, computed here independently.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MPI_ENV, mpirun, run
from pprs_mpi.report import summarize
from pprs_mpi.solve import main
from pprs_mpi.trace import load

RUN = ["--problem", "lad", "--depth", "3", "--dim", "6", "--rows", "8", "-K", "4", "--lr", "0.05", "--quiet"]


def check_against_columns(summary, trace):
    f = trace.columns["f_eval"]
    evaluated = f[np.isfinite(f)]
    assert summary["f_source"] == "f_eval"
    assert summary["f_final"] == evaluated[-1] and summary["f_best"] == evaluated.min()
    assert summary["pipeline_time"] == trace.columns["pipeline_time"][-1]
    assert summary["last_iteration"] == trace.columns["iteration"][-1] and summary["rows"] == trace.n_rows


def test_serial_run_summary_matches_its_trace(tmp_trace):
    assert main([*RUN, "--iters", "30", "--eval-every", "3", "--out", tmp_trace()]) == 0
    trace = load(tmp_trace())
    summary = summarize(trace)
    assert summary["status"] == "completed" and summary["engine"] == "serial" and summary["K"] == 4
    check_against_columns(summary, trace)
    reached = [t for t in summary["targets"] if t["iteration"] is not None]
    for target in reached:  # the first row at or below the target, and its times
        first = np.flatnonzero(trace.columns["f_eval"] <= target["target"])[0]
        assert target["iteration"] == trace.columns["iteration"][first]
        assert target["pipeline_time"] == trace.columns["pipeline_time"][first]


@pytest.mark.mpi
def test_three_rank_run_fractions_and_efficiency_match_the_timeline(tmp_trace, tmp_path):
    result = mpirun(3, *RUN, "--iters", "20", "--eval-every", "5", "--timeline-every", "1", "--out", tmp_trace())
    assert result.returncode == 0, result.stderr
    trace = load(tmp_trace())
    summary = summarize(trace)
    check_against_columns(summary, trace)
    assert summary["ranks"] == 3 and summary["makespan"] == 2 * (4 + 3 - 1)
    records = trace.timeline[trace.timeline["microbatch"] < 4]  # leave the evaluation passes out
    computing = records["phase"] < 2
    assert summary["unit_cost"] == pytest.approx(np.mean((records["end"] - records["start"])[computing]))
    for fraction in summary["rank_fractions"]:
        mine = records[records["rank"] == fraction["rank"]]
        span = sum(mine["end"][mine["iteration"] == i].max() - mine["start"][mine["iteration"] == i].min()
                   for i in np.unique(mine["iteration"]))
        busy = np.sum((mine["end"] - mine["start"])[mine["phase"] < 2])
        waiting = np.sum((mine["end"] - mine["start"])[mine["phase"] == 2])
        assert fraction["compute"] == pytest.approx(busy / span) and fraction["wait"] == pytest.approx(waiting / span)
    plots = run([sys.executable, "-m", "pprs_mpi.report", tmp_trace(), "--plot", str(tmp_path / "plots")], timeout=120)
    if "needs matplotlib" not in plots.stderr:
        assert plots.returncode == 0, plots.stderr
        assert any(name.endswith(".png") and "gantt" in name for name in os.listdir(tmp_path / "plots"))


def test_report_on_a_run_still_in_progress(tmp_trace):
    process = subprocess.Popen([sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", "200000", "--eval-every", "1",
                                "--out", tmp_trace()], env={**os.environ, **MPI_ENV})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if load(tmp_trace()).n_rows >= 30:
                    break
            except Exception:  # not created yet, or the writer holds the file for a flush
                pass
            time.sleep(0.05)
        report = run([sys.executable, "-m", "pprs_mpi.report", tmp_trace(), "--json"], timeout=60)
        assert report.returncode == 0, report.stderr
        assert '"status": "running"' in report.stdout
        summary = summarize(load(tmp_trace()))
        assert summary["status"] == "running" and summary["rows"] >= 30
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    killed = load(tmp_trace())  # a killed run leaves a readable trace that does not look complete
    assert killed.status == "running" and killed.n_rows >= 30
