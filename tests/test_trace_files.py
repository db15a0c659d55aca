"""Files beside and instead of a trace (issue 25): FIFOs, devices and symbolic links are refused in one
line, never waited on, read whole or written through; a link to a live run's trace is that run's trace.
Every subprocess has a timeout."""

import os

import numpy as np
import pytest

from conftest import run, solve
from pprs_mpi import trace as T

SMALL = ["--problem", "lad", "--depth", "3", "--dim", "4", "--rows", "6", "--iters", "3", "--quiet"]


def one_error_line(result):
    return result.returncode == 2 and result.stderr.count("\n") == 1 and "error" in result.stderr


def report(*args):
    import sys
    return run([sys.executable, "-m", "pprs_mpi.report", *map(str, args)], timeout=30)


def test_a_fifo_at_the_temporary_file_is_refused_not_waited_on(tmp_path):
    out = tmp_path / "run.h5"
    os.mkfifo(f"{out}.tmp")
    result = solve(*SMALL, "--out", out, timeout=30)
    assert one_error_line(result) and "run.h5.tmp is not a regular file" in result.stderr, result.stderr
    assert not out.exists() and os.path.exists(f"{out}.tmp")


@pytest.mark.parametrize("command", ["report", "resume"])
def test_a_fifo_or_a_device_as_the_trace_is_one_line_not_a_hang_or_a_memory_error(tmp_path, command):
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        result = report(path) if command == "report" else solve("--resume", path, timeout=30)
        assert one_error_line(result) and "not a regular file" in result.stderr, result.stderr


@pytest.mark.parametrize("suffix, link", [(".tmp", os.symlink), (".lock", os.symlink), (".lock", os.link)])
def test_a_link_planted_beside_the_trace_is_refused_and_its_target_untouched(tmp_path, suffix, link):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "run.h5"
    link(target, f"{out}{suffix}")
    with pytest.raises(T.TraceError, match=f"run.h5{suffix}"):
        T.TraceWriter(out, {"problem": "x"}, {})
    assert target.read_text() == "keep me" and os.path.lexists(f"{out}{suffix}") and not out.exists()


def test_resuming_a_link_to_a_live_runs_trace_is_refused_as_that_run(tmp_path):
    real, alias = tmp_path / "real.h5", tmp_path / "alias.h5"
    live = T.TraceWriter(real, {"problem": "x"}, {})
    live.write_checkpoint({"x": np.ones(2)}, {"iteration": 0})
    os.symlink(real, alias)
    before = real.read_bytes()
    with pytest.raises(T.TraceLocked, match="being written by another run"):
        T.TraceWriter(alias, {"problem": "x"}, {}, resume=True)
    assert real.read_bytes() == before
    live.close("completed")
    resumed = T.TraceWriter(alias, {"problem": "x"}, {}, resume=True)  # once it ends, through the link
    resumed.close("completed")
    assert os.path.islink(alias) and T.load(alias).attrs["resumes"] == 1


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_config_that_is_not_a_regular_file_is_one_line_not_a_hang(tmp_path, kind):
    """Issue 32, bug 5: --config naming a FIFO blocked forever in open()."""
    config = {"fifo": tmp_path / "run.toml", "directory": tmp_path, "device": "/dev/zero"}[kind]
    if kind == "fifo":
        os.mkfifo(config)
    result = solve("--config", config, "--out", tmp_path / "run.h5", timeout=30)
    assert one_error_line(result) and "is not a regular file" in result.stderr, result.stderr
    assert not (tmp_path / "run.h5").exists()
