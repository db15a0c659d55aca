"""Issue 13, "nothing lost": full disks, bad input over an existing trace, two writers, kill -9 inside
checkpoints, busy readers, a hung rank 0, Ctrl-C and --out /dev/null. Each test runs the commands of
the issue's report; every subprocess has a timeout.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MPI_ENV, mpirun, run, solve
from crash_cases import CHECKPOINT_EVERY, SMALL, Harness, run_cases, same_run
from pprs_mpi import trace as T


def one_error_line(result, code):
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pprs_mpi.solve: "), result.stderr
    return result.stderr


def popen(command, env=None):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **MPI_ENV, **(env or {})})


def wait_for_rows(path, rows=20, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if T.load(path).n_rows >= rows:
                return
        except T.TraceError:  # not created yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path}: no {rows} rows within {timeout} s")


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of 200 KiB (we run as root in CI); `grow()` frees space as a user would."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], timeout=30).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?); test_enospc_injected covers the writer's side")
    yield mount, lambda: run(["mount", "-o", "remount,size=16m", str(mount)], timeout=30)
    run(["umount", "-l", str(mount)], timeout=30)


# 1. A full disk destroyed the whole trace (KeyError tracebacks afterwards).
def test_a_full_disk_fails_in_one_line_and_the_run_resumes_once_space_is_freed(small_disk, tmp_trace):
    disk, grow = small_disk
    out = str(disk / "a.h5")
    full = solve(*SMALL, "--iters", "2000", "--checkpoint-every", "5", "--out", out, timeout=120)
    assert "No space left on device" in one_error_line(full, 1)
    stopped = T.load(out)  # readable, not complete
    assert stopped.status == "running" and stopped.has_checkpoint and 0 < stopped.n_rows < 2001
    assert not [name for name in os.listdir(disk) if name != "a.h5"]  # no temp file left to hold the space
    redone_from = T.read_checkpoint(out)[1]["iteration"]
    assert stopped.columns["iteration"][-1] - redone_from <= 5 or stopped.n_rows - 1 == redone_from
    grow()
    resumed = solve("--resume", out, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert solve(*SMALL, "--iters", "2000", "--out", tmp_trace(), timeout=120).returncode == 0
    final = T.load(out)
    assert final.status == "completed" and same_run(final, T.load(tmp_trace()))


def test_enospc_injected_in_the_writer_keeps_the_last_version(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC from the writer's file layer, after a partial write."""
    path = tmp_path / "run.h5"
    writer = T.TraceWriter(path, {"problem": "x"}, {}, flush_every=1)
    writer.append(iteration=0)
    writer.write_checkpoint({"x": np.ones(3)}, {"iteration": 0})
    before = path.read_bytes()

    write_durably = T._write_durably

    def full(path, data):
        write_durably(path, data[:100])  # a partial temporary file, as a filling disk leaves
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(T, "_write_durably", full)
    with pytest.raises(T.TraceError, match="No space left on device"):
        writer.write_checkpoint({"x": np.zeros(3)}, {"iteration": 1})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["run.h5", "run.h5.lock"]
    monkeypatch.undo()
    writer.write_checkpoint({"x": np.zeros(3)}, {"iteration": 1})  # space is back: the writer goes on
    writer.close("completed")
    assert T.read_checkpoint(path)[1] == {"iteration": 1} and sorted(os.listdir(tmp_path)) == ["run.h5"]


# 2. Bad input wiped an existing trace; 3. --out silently overwrote what was there.
def test_bad_input_never_touches_an_existing_trace(tmp_trace):
    assert solve(*SMALL, "--iters", "50", "--out", tmp_trace("keep.h5")).returncode == 0
    kept = open(tmp_trace("keep.h5"), "rb").read()
    for extra in ([], ["--overwrite"]):
        bad = solve(*SMALL, "--iters", "3", "--simulated-depth", "100000000000000000000", *extra,
                    "--out", tmp_trace("keep.h5"))
        one_error_line(bad, 2)
        assert open(tmp_trace("keep.h5"), "rb").read() == kept


def test_overwrite_keeps_the_old_trace_until_the_new_run_checkpoints_or_ends_well(tmp_trace):
    """A wrong op (failed at once) or a NaN at iteration 0 (diverged) under --overwrite leave the good trace
    as it was, and say so; a run that checkpoints, or completes, replaces it."""
    from pathlib import Path
    faulty = f"{Path(__file__).parent / 'faulty_problem.py'}:faulty"
    good = tmp_trace("good.h5")
    assert solve(*SMALL, "--iters", "5", "--out", good).returncode == 0
    kept = open(good, "rb").read()
    for fault, code in (("forward-long", 1), ("nan-forward", 1)):
        bad = solve("--problem", faulty, "--problem-arg", f"fault={fault}", "--iters", "3", "-K", "3", "--quiet",
                    "--overwrite", "--out", good)
        err = one_error_line(bad, code)
        assert open(good, "rb").read() == kept, fault
        if fault == "nan-forward":
            assert err.strip().endswith(f"{good} not replaced (--overwrite keeps the old file until the new run has a "
                                "checkpoint or ends completed or interrupted)")
    assert sorted(os.listdir(os.path.dirname(good))) == ["good.h5"]
    failed_later = solve(*SMALL, "--iters", "9", "--checkpoint-every", "2", "--inject-fault", "0:3:raise",
                         "--overwrite", "--out", good)
    assert failed_later.returncode == 1 and T.load(good).status == "failed"  # after its first checkpoint
    assert T.load(good).columns["iteration"][-1] == 3
    assert solve(*SMALL, "--iters", "6", "--overwrite", "--out", good).returncode == 0
    assert T.load(good).status == "completed" and T.load(good).columns["iteration"][-1] == 6


def test_an_existing_file_is_refused_unless_overwrite(tmp_trace):
    assert solve(*SMALL, "--iters", "5", "--out", tmp_trace()).returncode == 0
    with open(tmp_trace("notes.txt"), "w") as notes:
        notes.write("my notes\n")
    for path in (tmp_trace(), tmp_trace("notes.txt")):
        before = open(path, "rb").read()
        err = one_error_line(solve(*SMALL, "--iters", "7", "--out", path), 2)
        assert path in err and "--overwrite" in err and "--resume" in err
        assert open(path, "rb").read() == before
    assert solve(*SMALL, "--iters", "7", "--overwrite", "--out", tmp_trace("notes.txt")).returncode == 0
    assert T.load(tmp_trace("notes.txt")).status == "completed"


def test_the_quick_start_twice_with_the_same_out_loses_nothing(tmp_path):
    command = ["mpirun", "-n", "4", "--oversubscribe", sys.executable, "-m", "pprs_mpi.solve", "--iters", "40",
               "--quiet", "--out", "run.h5"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={**os.environ, **MPI_ENV})
    assert first.returncode == 0, first.stderr
    kept = (tmp_path / "run.h5").read_bytes()
    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **MPI_ENV})
    assert second.returncode == 2 and "run.h5 already exists" in second.stderr
    assert (tmp_path / "run.h5").read_bytes() == kept and sorted(os.listdir(tmp_path)) == ["run.h5"]


# 4. Two writers on one file mixed their rows and the survivor reported `completed`.
@pytest.mark.parametrize("second", [["SAME"], ["--resume"]])
def test_a_second_writer_is_refused_naming_the_live_one(tmp_trace, second):
    long = [*SMALL, "--iters", "1000000", "--checkpoint-every", "10"]  # still running when the second comes
    first = popen([sys.executable, "-m", "pprs_mpi.solve", *long, "--out", tmp_trace()])
    try:
        wait_for_rows(tmp_trace())
        argv = [*long, "--out", tmp_trace()] if second == ["SAME"] else ["--resume", tmp_trace()]
        err = one_error_line(solve(*argv), 2)
        assert f"{os.uname().nodename}:{first.pid}" in err
        first.send_signal(signal.SIGTERM)  # a checkpoint, then a stop at the next iteration boundary
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 3, first_err
    iters = str(int(T.load(tmp_trace()).columns["iteration"][-1]) + 5)
    assert solve("--resume", tmp_trace(), "--iters", iters, timeout=120).returncode == 0
    assert solve(*SMALL, "--iters", iters, "--out", tmp_trace("alone.h5"), timeout=120).returncode == 0
    assert same_run(T.load(tmp_trace()), T.load(tmp_trace("alone.h5")))  # the refused writer changed nothing


def test_a_dead_writers_lock_is_taken_over(tmp_trace):
    first = popen([sys.executable, "-m", "pprs_mpi.solve", *SMALL, "--iters", "100000", "--checkpoint-every", "10",
                   "--out", tmp_trace()])
    wait_for_rows(tmp_trace())
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert os.path.exists(tmp_trace() + ".lock")  # what kill -9 leaves behind
    resumed = solve("--resume", tmp_trace(), "--iters", "300")
    assert resumed.returncode == 0, resumed.stderr
    assert T.load(tmp_trace()).status == "completed" and not os.path.exists(tmp_trace() + ".lock")


def test_two_writers_in_one_process_and_the_lock_names_the_holder(tmp_path):
    writer = T.TraceWriter(tmp_path / "run.h5", {}, {})
    with pytest.raises(T.TraceLocked, match=f"{os.uname().nodename}:{os.getpid()}"):
        T.TraceWriter(tmp_path / "run.h5", {}, {}, resume=True)
    writer.close("completed")
    T.TraceWriter(tmp_path / "run.h5", {}, {}, resume=True).close("completed")


# 5. A kill -9 during a checkpoint could leave a trace that can never be resumed.
def test_kill_9_inside_checkpoint_writes_always_leaves_a_resumable_checkpoint(tmp_path):
    harness = Harness(tmp_path, iters=60)
    for kind in ["in-checkpoint", "step"] * 6:
        harness.kill_case(kind)
    assert harness.tally.unresumable == [] and sum(harness.tally.kills.values()) == 12


def test_crash_harness(tmp_path):
    """The CI size of benchmarks/crash_harness.py: 30 kills at random points, 6 full disks."""
    tally = run_cases(tmp_path, kills=30, enospc=6, seed=int(os.environ.get("PPRS_HARNESS_SEED", "13")))
    print(tally.summary())
    assert tally.unresumable == []
    assert sum(tally.kills.values()) == 30 and tally.max_redone <= max(CHECKPOINT_EVERY)


def test_a_kill_that_comes_late_still_lands_before_the_run_ends(tmp_path):
    """The crash harness under load (issue 32): a parent scheduled late let the child end its run before the
    kill, and the case counted as unresumable. The child now waits for its kill before its last iteration."""
    harness = Harness(tmp_path, iters=40)
    harness.rng.uniform = lambda low, high: 0.3  # the parent's pause before each SIGKILL: 100 times the usual
    for _ in range(2):
        harness.kill_case("async")
    assert harness.tally.unresumable == [] and harness.tally.kills == {"async": 2}


# 6. Readers locked the writer out (TraceLocked after 60 s) or made it 12x slower.
READ_WHILE_WRITING = [*SMALL, "--iters", "800", "--checkpoint-every", "20", "--eval-every", "1"]


@pytest.fixture(scope="module")
def read_while_writing_alone(tmp_path_factory):
    """The run of READ_WHILE_WRITING with no reader, the same for both lockings: run once for the module."""
    path = str(tmp_path_factory.mktemp("alone") / "alone.h5")
    assert solve(*READ_WHILE_WRITING, "--out", path, timeout=120).returncode == 0
    return path


@pytest.mark.parametrize("locking", ["TRUE", "FALSE"])
def test_tight_readers_neither_block_the_writer_nor_see_a_torn_file(tmp_trace, read_while_writing_alone, locking):
    argv = READ_WHILE_WRITING
    reader = """
import sys, h5py
from pprs_mpi.trace import load, TraceError
rows, errors = [], []
while True:
    with h5py.File(sys.argv[1], "r") as f:  # h5py's own open, HDF5 locks per HDF5_USE_FILE_LOCKING
        status = f.attrs["status"]
    trace = load(sys.argv[1])
    rows.append(trace.n_rows)
    if trace.status != "running":
        break
print(len(rows), int(rows == sorted(rows)), flush=True)
"""
    writer = popen([sys.executable, "-m", "pprs_mpi.solve", *argv, "--out", tmp_trace()])
    wait_for_rows(tmp_trace(), rows=1)
    readers = [popen([sys.executable, "-c", reader, tmp_trace()], env={"HDF5_USE_FILE_LOCKING": locking})
               for _ in range(3)]
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    for process in readers:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        loads, monotone = map(int, out.split())
        assert loads > 1 and monotone
    assert same_run(T.load(tmp_trace()), T.load(read_while_writing_alone))


# 7. A hang on rank 0 left the trace `running`, printed the error once per rank, blaming another rank.
@pytest.mark.mpi
def test_a_hung_rank_0_is_blamed_once(tmp_trace):
    result = mpirun(3, *SMALL, "--iters", "50", "--inject-fault", "0:5:hang", "--comm-timeout", "3",
                    "--out", tmp_trace(), timeout=90)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve: ")]
    assert len(lines) == 1 and "rank 0" in lines[0].split(";")[0], result.stderr
    trace = T.load(tmp_trace())
    assert trace.status == "failed" or (trace.status == "running" and T.abandoned(trace))


# 9. Ctrl-C on a serial run gave a KeyboardInterrupt traceback and left the trace `running`.
def test_ctrl_c_stops_at_a_boundary_like_sigterm(tmp_trace):
    argv = [*SMALL, "--iters", "50000"]  # seconds of work left when its first rows show: the signal lands mid-run
    process = popen([sys.executable, "-m", "pprs_mpi.solve", *argv, "--out", tmp_trace()])
    wait_for_rows(tmp_trace())
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 3 and "Traceback" not in err and "resume with --resume" in err
    interrupted = T.load(tmp_trace())
    assert interrupted.status == "interrupted"
    stop = str(int(interrupted.columns["iteration"][-1]) + 20)  # finished 20 iterations on, not at 50,000: seconds
    assert solve("--resume", tmp_trace(), "--iters", stop, timeout=120).returncode == 0
    assert solve(*SMALL, "--iters", stop, "--out", tmp_trace("whole.h5"), timeout=120).returncode == 0
    assert same_run(T.load(tmp_trace()), T.load(tmp_trace("whole.h5")))


# Issue 32, bug 8: Ctrl-C in a run's first second printed a KeyboardInterrupt traceback (once, under load, a
# NumPy ImportError). SIGINT arrives while a chosen module is first imported: a point of that second, no timing.
INTERRUPTED_AT = """
import os, runpy, signal, sys
module, sys.argv = sys.argv[1], ["pprs_mpi.solve", *sys.argv[2:]]
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Interrupt())
runpy.run_module("pprs_mpi.solve", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["numpy", "h5py", "mpi4py.MPI", "pprs_mpi.problems.planted", "in the builder"])
def test_ctrl_c_before_the_first_iteration_is_one_line_and_exit_130(tmp_path, module):
    """Imports (numpy, h5py), MPI's start (a run that a launcher started: one started by hand never loads MPI),
    the configuration (planted: the built-in problems), the builder: each ends at once, and the trace is not
    created."""
    argv = [*SMALL, "--iters", "3"]
    if module == "in the builder":
        builder = tmp_path / "interrupted.py"
        builder.write_text("import os, signal\nfrom pprs_mpi import builder\nfrom pprs_mpi.problems import build as b\n"
                           "@builder\ndef build():\n    os.kill(os.getpid(), signal.SIGINT)\n"
                           "    return b('lad', depth=3, dim=4, rows=6)\n")
        argv = ["--problem", f"{builder}:build", "--iters", "3"]
    launched = {"PMI_SIZE": "1"} if module == "mpi4py.MPI" else None  # as a launcher tells its one process
    result = run([sys.executable, "-c", INTERRUPTED_AT, module, *argv, "--out", str(tmp_path / "run.h5")], timeout=60,
                 env=launched)
    assert result.returncode == 130 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("pprs_mpi.solve: interrupted (SIGINT) before the first iteration")
    assert not (tmp_path / "run.h5").exists()


# 9. --out /dev/null raised a RuntimeError (exit 1).
def test_out_dev_null_is_refused_in_one_line():
    for extra in ([], ["--overwrite"]):
        err = one_error_line(solve(*SMALL, "--iters", "3", *extra, "--out", os.devnull), 2)
        assert "/dev/null" in err and "not a regular file" in err
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull) and not os.path.exists("/dev/null.lock")


def test_a_version_1_trace_still_loads_and_resumes(tmp_path):
    """tests/data/trace_v1.h5: 12 iterations written in place by pprs_mpi before the copy-on-write writer."""
    old = tmp_path / "old.h5"
    old.write_bytes(open(os.path.join(os.path.dirname(__file__), "data", "trace_v1.h5"), "rb").read())
    trace = T.load(old)
    assert trace.attrs["format_version"] == 1 and trace.status == "completed" and trace.n_rows == 13
    assert T.read_checkpoint(old)[1]["iteration"] == 12
    stored = trace.columns["f_smoothed"].copy()
    assert solve("--resume", old, "--iters", "16").returncode == 0
    assert solve(*SMALL, "--iters", "16", "--checkpoint-every", "4", "--timeline-every", "1",
                 "--out", tmp_path / "new.h5").returncode == 0
    resumed, fresh = T.load(old), T.load(tmp_path / "new.h5")  # f_eval differs at 12, the old run's last iteration
    assert resumed.n_rows == 17 and np.array_equal(resumed.columns["f_smoothed"][:13], stored, equal_nan=True)
    # The stored trace was written on another machine, whose NumPy kernels may round the last bit differently
    # (seen: 1 ulp from iteration 1): the continuation agrees with a fresh run to rounding, not bit for bit.
    np.testing.assert_allclose(resumed.result["y"], fresh.result["y"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(resumed.result["x"], fresh.result["x"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(resumed.columns["f_smoothed"], fresh.columns["f_smoothed"], rtol=1e-12)


def test_damaged_files_raise_only_trace_error(tmp_path):
    """Every prefix of a trace, and the trace with any 512-byte block zeroed: load and read_checkpoint
    either succeed or raise TraceError, never anything else."""
    path = tmp_path / "run.h5"
    assert solve(*SMALL, "--iters", "12", "--checkpoint-every", "4", "--out", path).returncode == 0
    data = path.read_bytes()
    damaged = tmp_path / "damaged.h5"
    cuts = [data[:n] for n in range(0, len(data), max(1, len(data) // 40))]
    zeroed = [data[:i] + bytes(512) + data[i + 512:] for i in range(0, len(data), max(512, len(data) // 40))]
    for version in cuts + zeroed:
        damaged.write_bytes(version)
        for reader in (T.load, T.read_checkpoint):
            try:
                reader(damaged)
            except T.TraceError as err:
                assert "\n" not in str(err)
