"""The MPI engine against the serial engine (bitwise), and its failure behaviour. Every launch has a timeout."""

import time

import numpy as np
import pytest

from conftest import mpirun, solve
from pprs_mpi.report import summarize
from pprs_mpi.trace import load

pytestmark = pytest.mark.mpi

COMMON = ["--iters", "6", "-K", "5", "--microbatch-size", "2", "--gamma", "0.05", "--lr", "0.02",
          "--mu", "nesterov", "--eval-every", "2", "--seed", "7", "--quiet", "--dim", "6", "--rows", "8"]


def assert_same_run(a, b, columns=("f_smoothed", "f_eval", "pipeline_time", "grad_norm", "iteration")):
    for name in columns:
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name
    assert np.array_equal(a.result["y"], b.result["y"]) and np.array_equal(a.result["x"], b.result["x"])


def test_a_run_started_by_hand_leaves_mpi_uninitialized_and_equals_one_rank_under_mpirun(tmp_trace):
    """Without a launcher's variables a run is alone and never loads MPI (whose MPI_Init can take a second where
    Open MPI finds no fabric); `mpirun -n 1` runs the same configuration over MPI to bitwise the same iterates."""
    import os
    import subprocess
    import sys
    from pprs_mpi.launch import RANK_VARIABLES, SIZE_VARIABLES
    alone, launched = tmp_trace("alone.h5"), tmp_trace("mpirun.h5")
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES + SIZE_VARIABLES}
    argv = ["--problem", "lad", *COMMON, "--out", alone]
    code = (f"import sys; from pprs_mpi.solve import main; code = main({argv!r}); "
            "print(code, 'mpi4py.MPI' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env)
    assert result.stdout.split() == ["0", "False"], result.stdout + result.stderr
    assert mpirun(1, "--problem", "lad", *COMMON, "--out", launched).returncode == 0
    a, b = load(alone), load(launched)
    assert a.attrs["mpi_library"].startswith("none") and b.attrs["mpi_library"].startswith("Open MPI")
    assert_same_run(a, b)


@pytest.mark.parametrize("problem, depth, ranks, schedule", [
    ("lad", 5, 2, "gpipe"), ("lad", 5, 3, "1f1b"), ("lad", 5, 5, "gpipe"), ("lad", 5, 5, "1f1b"),
    ("branch", 4, 2, "1f1b"), ("branch", 4, 3, "gpipe"), ("branch", 4, 5, "1f1b"),
])
def test_mpi_engine_is_bitwise_equal_to_serial(tmp_trace, problem, depth, ranks, schedule):
    """Chain (lad) and DAG (branch: root with two children, a node with two parents); P = n and P < n."""
    args = ["--problem", problem, "--depth", depth, "--schedule", schedule, *COMMON]
    serial = solve(*args, "--engine", "serial", "--stages", ranks, "--out", tmp_trace("serial.h5"))
    parallel = mpirun(ranks, *args, "--out", tmp_trace("mpi.h5"))
    assert serial.returncode == 0, serial.stderr
    assert parallel.returncode == 0, parallel.stderr
    a, b = load(tmp_trace("serial.h5")), load(tmp_trace("mpi.h5"))
    assert b.attrs["engine"] == "mpi" and b.attrs["ranks"] == ranks and b.status == "completed"
    assert b.attrs["rank_devices"] == ",".join(["cpu"] * ranks)
    assert b.attrs["rank_transport"] == ",".join(["host"] * ranks)
    assert_same_run(a, b)
    assert set(np.unique(b.timeline["rank"])) == set(range(ranks))


def test_rank_count_does_not_change_the_iterates_only_the_pipeline_time(tmp_trace):
    args = ["--problem", "branch", "--depth", "4", *COMMON, "--balance", "declared"]  # nodes balanced in units
    assert mpirun(2, *args, "--schedule", "gpipe", "--out", tmp_trace("two.h5")).returncode == 0
    assert mpirun(3, *args, "--schedule", "1f1b", "--out", tmp_trace("three.h5")).returncode == 0
    two, three = load(tmp_trace("two.h5")), load(tmp_trace("three.h5"))
    assert_same_run(two, three, columns=("f_smoothed", "f_eval", "grad_norm", "iteration"))
    assert two.attrs["makespan"] > three.attrs["makespan"]  # fewer ranks, more nodes per stage


def test_1f1b_bounds_the_kept_activations_by_the_depth_and_message_buffers_do_not_grow_with_K(tmp_trace):
    """3 ranks, 2 nodes each: GPipe keeps every microbatch's inputs (K per node), 1F1B at most P − s
    microbatches on rank s; receive buffers are a window per channel, whatever K. Serial agrees."""
    args = ["--problem", "lad", "--depth", "6", "--iters", "2", "--microbatch-size", "1", "--quiet", "--dim", "6",
            "--rows", "8", "--balance", "declared"]  # two nodes each (the planner would move 1F1B's boundaries)
    peaks, buffers = {}, {}
    for schedule in ("gpipe", "1f1b"):
        for K in (16, 64):
            mpi, serial = tmp_trace(f"{schedule}-{K}.h5"), tmp_trace(f"{schedule}-{K}-serial.h5")
            assert mpirun(3, *args, "--schedule", schedule, "-K", K, "--out", mpi).returncode == 0
            assert solve(*args, "--schedule", schedule, "-K", K, "--engine", "serial", "--stages", 3,
                         "--out", serial).returncode == 0
            attrs = load(mpi).attrs
            assert list(attrs["rank_peak_stash"]) == list(load(serial).attrs["rank_peak_stash"])
            peaks[schedule, K], buffers[schedule, K] = list(attrs["rank_peak_stash"]), list(attrs["rank_buffer_bytes"])
    assert peaks["gpipe", 16] == [16 * 2] * 3 and peaks["gpipe", 64] == [64 * 2] * 3
    assert peaks["1f1b", 16] == peaks["1f1b", 64] == [(3 - s) * 2 for s in range(3)]
    assert buffers["gpipe", 16] == buffers["gpipe", 64] == buffers["1f1b", 64] and min(buffers["gpipe", 64]) > 0
    memory = summarize(load(tmp_trace("1f1b-64.h5")))["rank_memory"][2]
    assert (memory["rank"], memory["peak_stash"], memory["buffer_bytes"]) == (2, 2, buffers["1f1b", 64][2])


def test_message_memory_does_not_grow_with_K_when_sends_wait_for_the_receiver():
    """Rank 0 draws each noisy copy when first needed and consumes root cotangents as they arrive, and
    every rank releases completed sends in any order: pending sends stay a few messages, whatever K
    (before, rank 0 held all K/2 root copies in pending sends)."""
    import json
    import sys
    from pathlib import Path
    from conftest import run
    from pprs_mpi.engines.mpi import FIRST_REAP
    here = Path(__file__).parent
    result = run(["mpirun", "-n", "3", sys.executable, str(here / "memory_run.py")], env={"PYTHONPATH": str(here)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    small, large = report["memory"]["16"], report["memory"]["64"]
    for rank in range(3):
        assert large[rank]["buffer_bytes"] == small[rank]["buffer_bytes"] > 0  # receive windows
        assert large[rank]["peak_send_bytes"] <= 2 * FIRST_REAP * report["message_bytes"]


@pytest.mark.parametrize("kind", ["raise", "exit"])
def test_a_failing_rank_ends_the_job_quickly_and_the_trace_says_failed(tmp_trace, kind):
    start = time.monotonic()
    result = mpirun(3, "--problem", "lad", "--depth", "5", *COMMON, "--iters", "50",
                    "--inject-fault", f"2:3:{kind}", "--out", tmp_trace(), timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 30
    if kind == "raise":
        assert result.stderr.count("injected fault at iteration 3") == 1
        assert "rank 2" in result.stderr
    trace = load(tmp_trace())
    assert trace.status in (("failed",) if kind == "raise" else ("failed", "running"))
    assert summarize(trace)["status"] in ("failed", "abandoned")  # never 'running' once the job is over


def test_a_lost_rank_is_named_and_the_trace_says_failed_under_ulfm(tmp_trace):
    """Over TCP (as between hosts), with `mpirun --with-ft ulfm`: a rank that exits is reported by MPI as a
    process failure (the engine's communicator returns errors instead of Open MPI's fatal 'Socket closed');
    rank 0 marks the trace failed and the one line names the lost rank and its host."""
    import sys
    from conftest import run
    result = run(["mpirun", "--with-ft", "ulfm", "--mca", "btl", "tcp,self", "-n", "3", sys.executable, "-m",
                  "pprs_mpi.solve", "--problem", "lad", "--depth", "5", *COMMON, "--iters", "50",
                  "--inject-fault", "2:3:exit", "--out", tmp_trace()], timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "LostRank: rank 2 (host " in lines[0] and ") was lost: it exited or its host became unreachable" in lines[0]
    assert load(tmp_trace()).status == "failed"


def test_only_rank_0_learns_every_ranks_host():
    """The host names a rank can put in a LostRank line: all of them on rank 0, which prints the job's line;
    elsewhere only its own, rank 0's and its peers' (O(P) bytes in all; every rank once got all P names)."""
    import sys
    from pathlib import Path
    from conftest import run
    here = Path(__file__).parent
    result = run(["mpirun", "-n", "4", sys.executable, str(here / "host_table_run.py")], env={"PYTHONPATH": str(here)},
                 timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["0: 0 1 2 3", "1: 0 1 2", "2: 0 1 2 3", "3: 0 2 3"]


def test_minimize_under_mpirun_raises_the_same_run_failed_on_every_rank_and_the_sweep_goes_on(tmp_path):
    """The Python API does not abort the job: rank 2's error reaches every rank (through rank 0, which marks
    the trace failed), each leaves the engine and raises RunFailed with the same line, and the next solve
    in the same processes runs normally (the engine's messages live on its own communicator)."""
    import sys
    from pathlib import Path
    from conftest import run
    script = Path(__file__).parent / "minimize_failure_run.py"
    result = run(["mpirun", "-n", "3", sys.executable, str(script), str(tmp_path)], timeout=60)
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    expected = "RunFailed: error on rank 2: InjectedFault: injected fault at iteration 3"
    assert lines == sorted([f"rank {r} first: {expected}" for r in range(3)]
                           + ["rank 0 second: completed", "rank 1 second: None", "rank 2 second: None"])
    assert load(str(tmp_path / "bad.h5")).status == "failed"
    assert load(str(tmp_path / "good.h5")).status == "completed"


def test_too_many_ranks_is_one_clear_error(tmp_trace):
    result = mpirun(6, "--problem", "lad", "--depth", "5", *COMMON, "--out", tmp_trace(), timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]
    assert errors == ["pprs_mpi.solve: error: 6 stages (ranks) for a graph of 5 nodes: use at most 5"]
