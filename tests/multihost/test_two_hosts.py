"""The MPI engine across two hosts (two hostnames talking TCP over a veth pair, see two_hosts.py): the
README job bitwise equal to serial, a rank lost on the second host, a hung rank 0, a resume on the other
host. Skipped, with the reason, where the namespaces cannot be made. Every launch has a timeout."""

import sys
import time

import numpy as np
import pytest

from conftest import MPI_ENV
from pprs_mpi.report import summarize
from pprs_mpi.trace import load
from two_hosts import HOSTS, TwoHosts, Unavailable

pytestmark = [pytest.mark.mpi, pytest.mark.multihost]

A, B = HOSTS
JOB = ["--iters", "20", "--eval-every", "5", "--seed", "3", "--quiet"]  # the README job (lad, depth 8), shorter
HEARTBEAT = {"PPRS_HEARTBEAT_SECONDS": "0.5"}  # so that a lost writer shows as abandoned within seconds


@pytest.fixture(scope="module")
def hosts():
    import os
    fixture = TwoHosts({**os.environ, **MPI_ENV})
    try:
        fixture.start()
    except Unavailable as err:
        fixture.stop()
        pytest.skip(f"no two-host fixture here: {err}")
    yield fixture
    fixture.stop()


def solve_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]


def abandoned_within(hosts, host, path, seconds: float = 20) -> str:
    """The report's status as read on `host`, once it is no longer 'running' (the heartbeat rule's
    heartbeat_within must pass first), or 'running' after `seconds`."""
    deadline = time.monotonic() + seconds
    while (status := report_from(hosts, host, path)["status"]) == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def report_from(hosts, host, path) -> dict:
    """The report's summary as read on `host`, where the writer's process cannot be looked up."""
    result = hosts.run_on(host, [sys.executable, "-m", "pprs_mpi.report", path, "--json"], timeout=60)
    assert result.returncode == 0, result.stderr
    import json
    return json.loads(result.stdout)[0]


def test_the_readme_job_on_two_hosts_is_bitwise_the_serial_run(hosts, tmp_path):
    out, serial = tmp_path / "two_hosts.h5", tmp_path / "serial.h5"
    result = hosts.mpirun({A: 2, B: 2}, [*JOB, "--out", out])
    assert result.returncode == 0, result.stderr
    assert hosts.run_on(A, [sys.executable, "-m", "pprs_mpi.solve", *JOB, "--out", serial]).returncode == 0
    two, one = load(out), load(serial)
    assert two.attrs["ranks"] == 4 and two.status == "completed"
    assert np.array_equal(two.result["y"], one.result["y"]) and np.array_equal(two.result["x"], one.result["x"])
    assert np.array_equal(two.columns["f_smoothed"], one.columns["f_smoothed"], equal_nan=True)
    assert two.attrs["writer"].startswith(f"{A}:")


def test_a_rank_lost_on_the_second_host_is_named_and_the_trace_says_failed(hosts, tmp_path):
    """With ULFM the lost rank is reported by MPI: one line naming it and its host, the trace failed."""
    out = tmp_path / "lost.h5"
    start = time.monotonic()
    result = hosts.mpirun({A: 2, B: 2}, [*JOB, "--iters", "200", "--inject-fault", "3:3:exit", "--out", out],
                          mpirun_options=["--with-ft", "ulfm"])
    assert result.returncode != 0 and time.monotonic() - start < 30
    lines = solve_lines(result)
    assert len(lines) == 1 and f"LostRank: rank 3 (host {B}) was lost" in lines[0], result.stderr
    assert load(out).status == "failed"


def test_without_ulfm_a_lost_rank_leaves_a_trace_the_report_calls_abandoned_from_the_other_host(hosts, tmp_path):
    """Plain mpirun ends the job at once (Open MPI's fatal 'Socket closed'): rank 0 cannot write, and the
    report, on the other host, tells by the heartbeat that nobody writes the trace any more."""
    out = tmp_path / "lost.h5"
    result = hosts.mpirun({A: 2, B: 2}, [*JOB, "--iters", "2000", "--inject-fault", "3:30:exit", "--out", out],
                          env=HEARTBEAT)
    assert result.returncode != 0
    assert load(out).status == "running"  # rank 0 was ended before it could write
    assert abandoned_within(hosts, B, out) == "abandoned"  # heartbeat_within: 2 × 0.5 s and 3 gaps between rows


def test_a_hung_rank_0_is_blamed_once_and_its_trace_never_looks_running_from_the_other_host(hosts, tmp_path):
    """Rank 0 alone on the first host: the others cannot wake it by a signal, so they end the job. Rank 0
    marks its trace failed if mpirun's SIGTERM finds it in Python code (this hang); stuck elsewhere it
    leaves 'running', which the heartbeat rule reports as abandoned from any host. Never 'running'."""
    out = tmp_path / "hung.h5"
    start = time.monotonic()
    result = hosts.mpirun({A: 1, B: 3}, [*JOB, "--iters", "200", "--inject-fault", "0:3:hang", "--comm-timeout",
                                         "2", "--out", out], env=HEARTBEAT, timeout=90)
    assert result.returncode != 0 and time.monotonic() - start < 45
    lines = solve_lines(result)
    assert len(lines) == 1 and "rank 0 did not end the job" in lines[0] and "(is it hung?)" in lines[0]
    assert abandoned_within(hosts, B, out) in ("failed", "abandoned")
    assert summarize(load(out))["status"] in ("failed", "abandoned")


def test_a_run_resumes_on_the_other_host_bitwise(hosts, tmp_path):
    """A run written with rank 0 on the first host is extended by a resume whose rank 0 (the writer) is on
    the second: the same iterates as one uninterrupted run."""
    out, whole = tmp_path / "moved.h5", tmp_path / "whole.h5"
    assert hosts.run_on(A, [sys.executable, "-m", "pprs_mpi.solve", *JOB, "--iters", "16", "--out", whole]
                        ).returncode == 0
    first = hosts.mpirun({A: 2, B: 2}, [*JOB, "--iters", "10", "--out", out])
    assert first.returncode == 0 and load(out).attrs["writer"].startswith(f"{A}:"), first.stderr
    resumed = hosts.mpirun({B: 2, A: 2}, ["--resume", out, "--iters", "16"], launch_from=B)
    assert resumed.returncode == 0, resumed.stderr
    final = load(out)
    assert final.status == "completed" and final.attrs["resumes"] == 1 and final.attrs["writer"].startswith(f"{B}:")
    assert np.array_equal(final.result["y"], load(whole).result["y"])
    assert np.array_equal(final.columns["f_smoothed"], load(whole).columns["f_smoothed"], equal_nan=True)
