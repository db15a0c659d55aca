"""Checkpoint and resume, signals, injected faults, the hang guard and fuzzed bad input.

Every subprocess has a timeout; nothing here can hang the suite.
"""

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import MPI_ENV, mpirun, solve
from pprs_mpi.solve import main
from pprs_mpi.trace import edited, load

RUN = ["--problem", "branch", "--depth", "4", "--dim", "6", "--rows", "8", "-K", "4", "--gamma", "0.05",
       "--lr", "0.02", "--mu", "nesterov", "--eval-every", "5", "--seed", "3", "--quiet",
       "--microbatch-size", "1"]  # one copy per microbatch: slow enough for a signal to arrive mid-run


ITERS = 5000  # a signal sent once the trace has 20 rows lands with seconds of the run left, however fast it goes


def same_iterates(a, b):
    return np.array_equal(a.result["y"], b.result["y"]) and np.array_equal(a.result["x"], b.result["x"])


def start(command, out, env=None, stderr=subprocess.PIPE):
    """Starts a long run and waits until its trace shows progress (rows are flushed every 10)."""
    import os
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                               env={**os.environ, **MPI_ENV, **(env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if load(out).n_rows > 20:
                return process
        except Exception:  # noqa: BLE001 — not created yet, or momentarily locked by the writer
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run made no progress within 60 s")


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The uninterrupted serial run of ITERS iterations, the same for both launchers: run once for the module."""
    path = str(tmp_path_factory.mktemp("whole") / "whole.h5")
    assert main([*RUN, "--iters", str(ITERS), "--engine", "serial", "--out", path]) == 0
    return path


@pytest.mark.parametrize("launcher, sig", [("serial", signal.SIGTERM), ("mpirun", signal.SIGUSR1)])
def test_signal_stops_at_a_boundary_and_resume_is_bitwise_identical(tmp_trace, whole_run, launcher, sig):
    """SIGTERM to a process, or SIGUSR1 to mpirun (which forwards it; Slurm's --signal=B:USR1 path):
    a checkpoint, status 'interrupted', exit code 3; resuming (on another rank count) ends where an
    uninterrupted run ends, bit for bit."""
    iters = ["--iters", str(ITERS)]
    command = [sys.executable, "-m", "pprs_mpi.solve", *RUN, *iters, "--out", tmp_trace()]
    if launcher == "mpirun":
        command = ["mpirun", "-n", "3", *command]
    process = start(command, tmp_trace())
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    stopped = load(tmp_trace())
    assert process.returncode == 3, err
    assert stopped.status == "interrupted" and stopped.has_checkpoint and "resume with --resume" in err
    assert stopped.columns["iteration"][-1] < ITERS
    resumed = (solve("--resume", tmp_trace(), timeout=120) if launcher == "mpirun"
               else mpirun(2, "--resume", tmp_trace(), timeout=120))
    assert resumed.returncode == 0, resumed.stderr
    final, whole = load(tmp_trace()), load(whole_run)
    assert final.status == "completed" and final.attrs["resumes"] == 1
    assert same_iterates(final, whole)
    assert np.array_equal(final.columns["iteration"], whole.columns["iteration"])
    assert np.array_equal(final.columns["f_smoothed"], whole.columns["f_smoothed"], equal_nan=True)


@pytest.mark.mpi
def test_sigterm_to_mpirun_prints_the_resume_line_and_exits_with_mpiruns_code(tmp_trace):
    """mpirun stops forwarding output on SIGTERM and kills its ranks shortly after: rank 0 writes its
    checkpoint and the serial engine's line straight to mpirun's stderr; the exit code is mpirun's own, 1."""
    process = start(["mpirun", "-n", "2", sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", "100000",
                     "--out", tmp_trace()], tmp_trace())
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    stopped = load(tmp_trace())
    lines = [line for line in err.splitlines() if line.startswith("pprs_mpi.solve")]
    assert process.returncode == 1 and stopped.status == "interrupted" and stopped.has_checkpoint
    assert len(lines) == 1 and lines[0].startswith("pprs_mpi.solve: stopped by a signal after iteration ")
    assert lines[0].endswith(f"; resume with --resume; trace {tmp_trace()} marked interrupted")


@pytest.mark.mpi
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_the_resume_line_is_in_mpiruns_log_file_once(tmp_trace, tmp_path, sig):
    """mpirun's stderr a log file (`2> job.log`, a batch job's log): mpirun writes its notice that rank 0
    exited 3 at its own offset, over a line another process appended, so the resume line comes through
    mpirun's forwarding too (SIGUSR1 keeps it running, SIGTERM stops it): exactly one copy is left."""
    log = tmp_path / "job.log"
    with open(log, "w") as err:
        process = start(["mpirun", "-n", "3", sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", "100000",
                         "--out", tmp_trace()], tmp_trace(), stderr=err)
        process.send_signal(sig)
        process.communicate(timeout=60)
    lines = [line for line in log.read_text().splitlines() if line.startswith("pprs_mpi.solve")]
    assert load(tmp_trace()).status == "interrupted"
    assert len(lines) == 1 and lines[0].endswith(f"; resume with --resume; trace {tmp_trace()} marked interrupted")


@pytest.mark.mpi
def test_injected_fault_fails_the_trace_and_the_last_checkpoint_resumes(tmp_trace):
    result = mpirun(3, *RUN, "--iters", "30", "--checkpoint-every", "5", "--inject-fault", "1:12:raise",
                    "--out", tmp_trace(), timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("injected fault at iteration 12") == 1
    failed = load(tmp_trace())
    assert failed.status == "failed" and failed.has_checkpoint
    assert mpirun(3, "--resume", tmp_trace(), timeout=60).returncode == 0
    assert main([*RUN, "--iters", "30", "--out", tmp_trace("whole.h5")]) == 0
    assert same_iterates(load(tmp_trace()), load(tmp_trace("whole.h5")))


@pytest.mark.mpi
def test_comm_timeout_names_the_peer_and_ends_the_job(tmp_trace):
    begun = time.monotonic()
    result = mpirun(3, *RUN, "--iters", "50", "--inject-fault", "1:3:hang", "--comm-timeout", "2",
                    "--balance", "declared", "--out", tmp_trace(), timeout=60)  # rank 0's peer is the hung rank 1
    assert result.returncode != 0 and time.monotonic() - begun < 30
    assert "waited more than 2 s for" in result.stderr and "from rank 1" in result.stderr
    assert load(tmp_trace()).status == "failed"


def test_resume_refuses_foreign_corrupt_or_checkpointless_files(tmp_path, tmp_trace, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(3)
    text = tmp_path / "notes.h5"
    text.write_text("not a trace")
    assert main([*RUN, "--iters", "3", "--timeline-every", "1", "--out", tmp_trace()]) == 0
    with edited(tmp_trace()) as f:
        del f["checkpoint"]
    capsys.readouterr()
    for path, message in ((foreign, "not a pprs_mpi trace"), (text, "not an HDF5 file"),
                          (tmp_path / "missing.h5", "no such file"), (tmp_trace(), "holds no checkpoint")):
        assert main(["--resume", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot resume" in err and message in err
    assert main([*RUN, "--iters", "3", "--out", tmp_trace("good.h5")]) == 0
    capsys.readouterr()
    assert main(["--resume", tmp_trace("good.h5"), "--lr", "0.5"]) == 2
    assert "'lr' cannot be changed (the run has 0.02, this command gives 0.5)" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.attrs.modify("config", f.attrs["config"].replace('"depth": 4', '"depth": "x"')),
     "problem parameter 'depth' must be int"),
    (lambda f: f.attrs.modify("config", f.attrs["config"].replace('"algo": "pprs"', '"algo": "zzz"')),
     "unknown algo 'zzz'"),
    (lambda f: (f["checkpoint"].__delitem__("x"), f["checkpoint"].create_dataset("x", data=np.zeros(3))),
     "does not fit this problem"),
    (lambda f: f["checkpoint"].attrs.__delitem__("iteration"), "checkpoint in"),
])
def test_resume_refuses_a_damaged_trace_and_leaves_it_as_it_was(tmp_trace, capsys, damage, message):
    assert main([*RUN, "--iters", "6", "--out", tmp_trace()]) == 0
    with edited(tmp_trace()) as f:
        damage(f)
    capsys.readouterr()
    assert main(["--resume", tmp_trace(), "--iters", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert load(tmp_trace()).status == "completed" and load(tmp_trace()).n_rows == 7


@pytest.mark.mpi
def test_a_trace_deleted_under_a_running_job_ends_it_instead_of_hanging(tmp_trace):
    import os
    process = start(["mpirun", "-n", "2", sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", "1000000",
                     "--eval-every", "1", "--out", tmp_trace()], tmp_trace())
    os.unlink(tmp_trace())
    try:
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode not in (0, None)


@pytest.mark.mpi
def test_a_reader_holding_the_trace_does_not_trip_the_comm_timeout(tmp_trace):
    process = start(["mpirun", "-n", "2", sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", "3000",
                     "--checkpoint-every", "20", "--comm-timeout", "2", "--out", tmp_trace()], tmp_trace())
    with h5py.File(tmp_trace(), "r", locking=True):
        time.sleep(5)  # the writer's next checkpoint waits for this reader
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert load(tmp_trace()).status == "completed"


def test_resume_cannot_go_backwards(tmp_trace, capsys):
    assert main([*RUN, "--iters", "6", "--out", tmp_trace()]) == 0
    capsys.readouterr()
    assert main(["--resume", tmp_trace(), "--iters", "4"]) == 2
    assert "below the checkpoint's iteration 6" in capsys.readouterr().err
    trace = load(tmp_trace())
    assert trace.status == "completed" and trace.columns["iteration"][-1] == 6


FLAGS = ["-K", "--gamma", "--lr", "--mu", "--iters", "--seed", "--schedule", "--microbatch-size", "--eval-every",
         "--engine", "--stages", "--device", "--dtype", "--depth", "--dim", "--rows", "--problem", "--algo",
         "--preset", "--comm-timeout", "--checkpoint-every", "--inject-fault", "--simulated-depth", "--bogus"]
VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e308", "x", "", "nesterov", "gpipe",
                                    "serial", "mpi", "gpu", "lad", "0:1:raise", "1.5", "99999999999999999999"]),
                   st.text(max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=4))
def test_fuzzed_flags_never_traceback_never_hang_never_fake_completion(tmp_path, capsys, pairs):
    out = tmp_path / "fuzz.h5"
    out.unlink(missing_ok=True)
    argv = [item for pair in pairs for item in pair] + ["--iters", "2", "--quiet", "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    if code == 0:
        assert load(out).status == "completed"
    else:
        assert code in (1, 2, 3) and err.count("\n") == 1 and err.startswith("pprs_mpi.solve: "), err
        assert not out.exists() or load(out).status != "completed"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["K", "gamma", "lr", "mu", "iters", "problem", "depth", "schedule", "eval-every",
                                        "algo", "seed", "unknown_key", "quiet"]),
                       st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(),
                                 st.lists(st.integers(), max_size=2)), max_size=4))
def test_fuzzed_config_files_get_one_line(tmp_path, capsys, entries):
    import json
    lines = [f"{key} = {json.dumps(value)}" for key, value in entries.items()]
    config = tmp_path / "fuzz.toml"
    config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "fuzz.h5"
    out.unlink(missing_ok=True)
    code = main(["--config", str(config), "--iters", "2", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    if code == 0:
        assert load(out).status == "completed"
    else:
        assert err.count("\n") == 1 and err.startswith("pprs_mpi.solve: "), err
        assert not out.exists() or load(out).status != "completed"
