"""Failures before the first iteration (issue 25): a builder that fails, exits or hangs on one rank only,
a builder that calls sys.exit or is interrupted. Every one is one line naming the rank and the cause, exit
code 2, within seconds, and no trace. Every launch has a timeout."""

import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import mpirun, run
from pprs_mpi.solve import main

BUILDER = """
    import os, sys, time
    from pprs_mpi import Graph, Node, builder
    from pprs_mpi.ops import Scale, SquaredNorm

    class Stop(BaseException):  # not an Exception: passed through `except Exception` and hung the job
        pass

    @builder
    def build(how: str = "none", rank: int = 0):
        if int(os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == rank:
            if how == "base":
                raise Stop("a BaseException of its own")
            if how == "exit":
                sys.exit(0)
            if how == "exit3":
                sys.exit(3)
            if how == "interrupt":
                raise KeyboardInterrupt
            if how == "hang":
                time.sleep(600)
        return Graph(2, [Node("sq", SquaredNorm(), ("theta",)), Node("s", Scale(1.0), ("sq",))])
    """


@pytest.fixture
def builder(tmp_path):
    path = tmp_path / "rank_builder.py"
    path.write_text(textwrap.dedent(BUILDER))
    return f"{path}:build"


@pytest.mark.mpi
@pytest.mark.parametrize("how, cause", [("exit", "rank 1: problem '{b}': the builder called sys.exit(0)"),
                                        ("base", "rank 1: problem '{b}': the builder raised Stop: a BaseException "
                                                 "of its own (rank_builder.py, line 13)"),
                                        ("hang", "rank(s) 1 did not finish setting up within 3 s")])
def test_a_builder_failing_on_one_rank_ends_the_job_in_one_line_naming_it(builder, tmp_trace, how, cause):
    started = time.monotonic()
    result = mpirun(2, "--problem", builder, "--problem-arg", f"how={how}", "--problem-arg", "rank=1",
                    "--comm-timeout", "3", "--iters", "2", "--out", tmp_trace(), timeout=40)
    # mpirun's own abort output, interleaved with ours under load, once left a NUL byte before our line
    lines = [line for line in result.stderr.replace("\0", "").splitlines() if line.startswith("pprs_mpi.solve")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("pprs_mpi.solve: error: ") and cause.format(b=builder) in lines[0]
    assert time.monotonic() - started < 30 and not Path(tmp_trace()).exists()


@pytest.mark.mpi
def test_a_builder_raising_a_base_exception_on_one_rank_ends_the_job_without_a_comm_timeout(builder, tmp_trace):
    """Issue 32, bug 4: without --comm-timeout the job hung forever (SIGTERM did not end it)."""
    result = mpirun(2, "--problem", builder, "--problem-arg", "how=base", "--problem-arg", "rank=1", "--iters", "2",
                    "--out", tmp_trace(), timeout=60)
    lines = [line for line in result.stderr.replace("\0", "").splitlines() if line.startswith("pprs_mpi.solve")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "rank 1: problem" in lines[0] and "the builder raised Stop" in lines[0] and not Path(tmp_trace()).exists()


@pytest.mark.parametrize("how, cause", [("exit", "the builder called sys.exit(0)"),
                                        ("base", "the builder raised Stop: a BaseException of its own"),
                                        ("exit3", "the builder called sys.exit(3)"),
                                        ("interrupt", "the builder was interrupted (KeyboardInterrupt)")])
def test_a_builder_that_exits_or_is_interrupted_is_one_line_and_exit_2(builder, tmp_trace, capsys, how, cause):
    assert main(["--problem", builder, "--problem-arg", f"how={how}", "--out", tmp_trace()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and cause in err and not Path(tmp_trace()).exists()
    check = run([sys.executable, "-m", "pprs_mpi.check", builder, "--problem-arg", f"how={how}"], timeout=60)
    assert check.returncode == 2 and check.stderr.count("\n") == 1 and cause in check.stderr


@pytest.mark.mpi
def test_a_resume_that_one_rank_cannot_see_ends_the_job_in_one_line_naming_it(tmp_path):
    """Rank 1 runs in another directory, where the relative path of the trace names no file."""
    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    seen.mkdir(), unseen.mkdir()
    assert main(["--problem", "lad", "--depth", "3", "--dim", "4", "--rows", "6", "--iters", "2", "--quiet",
                 "--checkpoint-every", "1", "--out", str(seen / "run.h5")]) == 0
    before = (seen / "run.h5").read_bytes()
    solver = [sys.executable, "-m", "pprs_mpi.solve", "--resume", "run.h5", "--iters", "4", "--comm-timeout", "5"]
    result = run(["mpirun", "-n", "1", "--wdir", str(seen), *solver, ":", "-n", "1", "--wdir", str(unseen), *solver],
                 timeout=40)
    lines = [line for line in result.stderr.splitlines() if line.startswith("pprs_mpi.solve")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "rank 1: cannot resume: run.h5: no such file" in lines[0]
    assert (seen / "run.h5").read_bytes() == before


@pytest.mark.mpi
def test_setup_rounds_deliver_messages_far_above_the_eager_limit_intact():
    """Each rank's value is 200 kB: rank 0 once answered every rank with everyone's values in a send whose
    request it dropped, so that MPI read freed memory (garbled messages, or a segfault, from P ~ 62 on)."""
    here = Path(__file__).parent
    result = run(["mpirun", "-n", "4", sys.executable, str(here / "setup_sync_run.py")], env={"PYTHONPATH": str(here)},
                 timeout=60)
    assert result.returncode == 0 and sorted(result.stdout.split("\n")[:-1]) == [f"ok {r}" for r in range(4)], (
        result.stdout + result.stderr)


@pytest.mark.mpi
def test_a_garbled_setup_message_is_named_as_such():
    here = Path(__file__).parent
    result = run(["mpirun", "-n", "2", sys.executable, str(here / "setup_sync_run.py"), "garbled"],
                 env={"PYTHONPATH": str(here)}, timeout=60)
    lines = [line for line in result.stderr.replace("\0", "").splitlines() if line.startswith("setup_sync_run")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "rank 0: rank 1's setup message arrived garbled (UnpicklingError" in lines[0]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, failing", [(2, 1), (3, 2), (3, 0)])
def test_a_rank_that_fails_while_the_messages_are_timed_is_the_one_line_and_no_rank_waits_on_it(ranks, failing,
                                                                                                tmp_path):
    """--microbatch-size measured times messages between neighbouring ranks before the layout is chosen: a rank
    that fails there is named, with its cause, in the job's one line. It tells its neighbours, and they theirs, so
    that no rank waits for it (each wait's deadline is set beyond this test's timeout)."""
    here = Path(__file__).parent
    start = time.monotonic()
    result = run(["mpirun", "-n", str(ranks), sys.executable, str(here / "message_cost_run.py"), str(failing),
                  "--microbatch-size", "measured", "--iters", "2", "--quiet", "--out", str(tmp_path / "run.h5")],
                 env={"PYTHONPATH": str(here)}, timeout=90)
    lines = [line for line in result.stderr.replace("\0", "").splitlines() if line.startswith("pprs_mpi.solve")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"rank {failing}: timing messages with its neighbours (--microbatch-size measured): its network card" \
           in lines[0]
    assert time.monotonic() - start < 60 and not (tmp_path / "run.h5").exists()
