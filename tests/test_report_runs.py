"""The report on real traces: a serial run, a 3-rank mpirun run, a run still in progress (read once and
followed), and a serial run compared with a bitwise-identical 3-rank run of another layout.

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
from pprs_mpi.analysis import summarize
from pprs_mpi.problems import build
from pprs_mpi.solve import main
from pprs_mpi.trace import load

RUN = ["--problem", "lad", "--depth", "3", "--dim", "6", "--rows", "8", "-K", "4", "--microbatch-size", "1",
       "--lr", "0.05", "--quiet"]  # M = 4 microbatches: a pipeline to measure


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
        wait_for(lambda: load(tmp_trace()).n_rows >= 30)
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


def report(*args, timeout=60):
    return run([sys.executable, "-m", "pprs_mpi.report", *map(str, args)], timeout=timeout)


def test_f_minus_f_star_of_a_solver_run_whose_trace_knows_f_star(tmp_trace):
    assert main([*RUN, "--iters", "30", "--eval-every", "3", "--out", tmp_trace()]) == 0
    config = load(tmp_trace()).config
    problem = build(config["problem"], **config["problem_params"])
    trace = load(tmp_trace())
    assert trace.attrs["f_star"] == problem.f_star  # the solver stores the problem's known optimum
    summary = summarize(trace)
    f = trace.columns["f_eval"][np.isfinite(trace.columns["f_eval"])]
    assert summary["gap_final"] == f[-1] - problem.f_star and summary["gap_best"] == f.min() - problem.f_star
    text = " ".join(report(tmp_trace()).stdout.split())
    assert f"lad, f* = {problem.f_star:.4g}" in text and f"(f − f* = {f[-1] - problem.f_star:.4g})" in text


@pytest.mark.mpi
def test_comparison_of_a_serial_and_a_three_rank_run_shows_their_layouts(tmp_trace, tmp_path):
    six = [*RUN, "--depth", "6", "--iters", "20", "--eval-every", "5"]  # 6 nodes: 6 stages serial, 3 × 2 on 3 ranks
    assert main([*six, "--out", tmp_trace("serial.h5")]) == 0
    result = mpirun(3, *six, "--out", tmp_trace("mpi3.h5"))
    assert result.returncode == 0, result.stderr
    serial, mpi3 = load(tmp_trace("serial.h5")), load(tmp_trace("mpi3.h5"))
    M = 4
    assert np.array_equal(serial.columns["f_eval"], mpi3.columns["f_eval"], equal_nan=True)  # the same iterates
    assert serial.attrs["makespan"] == 2 * (M + 6 - 1)  # one node per stage
    assert mpi3.attrs["makespan"] == 2 * 2 * (M + 3 - 1)  # two nodes per stage: each step takes 2 units
    table = report(tmp_trace("serial.h5"), tmp_trace("mpi3.h5"))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = lines[0].split()
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    for name, engine, stages, units in (("serial", "serial", "6", "18"), ("mpi3", "mpi", "3", "24")):
        row = dict(zip(header, rows[name]))
        assert (row["engine"], row["stages"], row["units/it"]) == (engine, stages, units)
    assert "pipeline times of runs with different units/it differ for the same iterates" in " ".join(
        table.stdout.split())
    assert max(map(len, lines)) <= 100
    pytest.importorskip("matplotlib")
    from pprs_mpi import plots
    summaries = [summarize(serial, []), summarize(mpi3, [])]
    ax = plots.plot_objective([serial, mpi3], summaries, ["serial", "mpi3"], "pipeline_time").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "serial (serial, 6 stages, 18 units/iteration)", "mpi3 (mpi, 3 stages, 24 units/iteration)"]


def test_follow_reports_a_live_run_until_it_stops(tmp_trace, tmp_path):
    solver = subprocess.Popen([sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", "200000", "--eval-every", "1",
                               "--out", tmp_trace()], env={**os.environ, **MPI_ENV})
    out = tmp_path / "follow.txt"
    try:
        wait_for(lambda: load(tmp_trace()).n_rows >= 10)
        with open(out, "w") as sink:
            follower = subprocess.Popen([sys.executable, "-m", "pprs_mpi.report", tmp_trace(), "--follow",
                                         "--interval", "0.5"], stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: out.read_text().count("[running]") >= 2)
            solver.send_signal(signal.SIGUSR1)  # checkpoint and stop: status 'interrupted'
            assert solver.wait(timeout=60) == 3
            _, err = follower.communicate(timeout=60)
        finally:
            follower.kill()
        assert follower.returncode == 0 and err == ""
    finally:
        solver.kill()
        solver.wait(timeout=30)
    first, *later = out.read_text().split("\n--- ")  # not a terminal: a time stamp line between reports
    reports = [first] + [report.split("\n", 1)[1] for report in later]
    assert len(reports) >= 3 and all(r.splitlines()[0].endswith("[running]") for r in reports[:2])
    rows = [int(r.split("iterations")[1].split()[0]) for r in reports]
    assert rows == sorted(rows) and rows[-1] > rows[0]  # each report read the trace anew
    assert reports[-1].splitlines()[0].endswith("[interrupted]") and rows[-1] == load(tmp_trace()).n_rows


def wait_for(condition, seconds=60):
    """Polls `condition` (exceptions count as not yet) until it holds; fails the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 — a file not there yet, or held by its writer for a flush
            pass
        time.sleep(0.05)
    pytest.fail(f"still not true after {seconds} s")


def test_a_run_of_more_stages_than_the_sample_keeps_every_stage_summary_and_a_bounded_timeline(tmp_trace, tmp_path):
    """40 stages: the detailed timeline of 32 evenly spaced stages (the first and last included), in the
    timed iterations only; every stage's summary, equal to what the records give where there are records."""
    from pprs_mpi.engines.timeline import TIMELINE_RANKS, sampled_ranks
    from pprs_mpi.report import format_summary
    assert main(["--problem", "lad", "--depth", "40", "--dim", "3", "--rows", "4", "-K", "4", "--stages", "40",
                 "--microbatch-size", "1", "--iters", "6", "--timeline-every", "2", "--quiet",
                 "--out", tmp_trace()]) == 0
    trace = load(tmp_trace())
    sampled = sampled_ranks(40)
    assert len(sampled) == TIMELINE_RANKS and sampled[0] == 0 and sampled[-1] == 39
    assert list(trace.attrs["timeline_ranks"]) == sampled
    assert sorted(set(trace.timeline["rank"])) == sampled
    assert set(trace.timeline["iteration"]) == {0, 2, 4}  # untimed iterations record nothing
    summary = summarize(trace)
    assert [f["rank"] for f in summary["rank_fractions"]] == list(range(40))
    records = trace.timeline[trace.timeline["microbatch"] < 4]
    for fraction in summary["rank_fractions"]:
        mine = records[records["rank"] == fraction["rank"]]
        if fraction["rank"] not in sampled:
            assert mine.size == 0 and 0 < fraction["compute"] < 1
            continue
        span = sum(mine["end"][mine["iteration"] == i].max() - mine["start"][mine["iteration"] == i].min()
                   for i in np.unique(mine["iteration"]))
        busy = np.sum((mine["end"] - mine["start"])[mine["phase"] < 2])
        assert fraction["compute"] == pytest.approx(busy / span)
    actions = np.asarray(trace.attrs["rank_actions"])
    assert list(actions) == [2 * 4 * 3] * 40  # 2M actions of each stage's one node in each of the 3 timed passes
    assert "detailed for 32 of 40 stages (0, 1, 3, ..., 39)" in format_summary(summary, "")
