"""Files beside and instead of a trace (issue 25): FIFOs, devices and symbolic links are refused in one
line, never waited on, read whole or written through; a link to a live run's trace is that run's trace.
Every subprocess has a timeout."""

import os
import sys

import numpy as np
import pytest

from conftest import run, solve
from pprs_mpi import trace as T

SMALL = ["--problem", "lad", "--depth", "3", "--dim", "4", "--rows", "6", "--iters", "3", "--quiet"]


def one_error_line(result):
    return result.returncode == 2 and result.stderr.count("\n") == 1 and "error" in result.stderr


def report(*args, env=None):
    return run([sys.executable, "-m", "pprs_mpi.report", *map(str, args)], timeout=30, env=env)


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


def _sparse(path, head: bytes, size: int = 8 << 30):
    """A file of `size` bytes (a hole: no disk, no time) that begins with `head`."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _superblock(end_of_file: int) -> bytes:
    """An HDF5 version-0 superblock at offset 0 (8-byte addresses) declaring `end_of_file`."""
    fields = bytes([0, 0, 0, 0, 0, 8, 8, 0]) + (4).to_bytes(2, "little") + (16).to_bytes(2, "little") + bytes(4)
    return b"\x89HDF\r\n\x1a\n" + fields + (0).to_bytes(8, "little") + (2 ** 64 - 1).to_bytes(8, "little") + \
        end_of_file.to_bytes(8, "little") + (2 ** 64 - 1).to_bytes(8, "little")


@pytest.mark.parametrize("kind, words", [
    ("zeros", "not an HDF5 file"),
    ("header", "declares 8,589,934,592 bytes, more than a trace may hold (4,294,967,296"),
    ("superblock", "declares 8,589,934,592 bytes, more than a trace may hold (4,294,967,296"),
])
@pytest.mark.parametrize("command", ["report", "resume"])
def test_a_huge_sparse_file_as_a_trace_is_refused_from_its_metadata_without_reading_it(tmp_path, kind, words,
                                                                                        command):
    """Issue 32, bug 3: an 8 GiB sparse file was read whole (16.8 GB for report; under a 3 GB limit a MemoryError
    traceback, and `error: MemoryError:` from --resume). Run here under that limit."""
    head = {"zeros": b"", "header": T._HEADER.pack(T._MAGIC, 0, (8 << 30) - T.USER_BLOCK),
            "superblock": _superblock(8 << 30)}[kind]
    path = _sparse(tmp_path / "huge.h5", head)
    module, args = ("pprs_mpi.report", [path]) if command == "report" else ("pprs_mpi.solve", ["--resume", path])
    limited = ["bash", "-c", 'ulimit -v 3145728 && exec "$@"', "bash", sys.executable, "-m", module, *map(str, args)]
    result = run(limited, timeout=60)
    assert one_error_line(result) and words in result.stderr and "Memory" not in result.stderr, result.stderr
    assert path.stat().st_size == 8 << 30 and path.stat().st_blocks * 512 < 1 << 20  # still a hole


def test_the_size_limit_of_a_trace_is_stated_and_can_be_raised(tmp_path):
    path = tmp_path / "run.h5"
    assert solve(*SMALL, "--out", path).returncode == 0
    small = report(path, env={"PPRS_MAX_TRACE_BYTES": "1000"})
    assert one_error_line(small) and "more than a trace may hold (1,000 bytes; PPRS_MAX_TRACE_BYTES" in small.stderr
    assert report(path).returncode == 0


@pytest.mark.parametrize("where", ["same directory", "other directory"])
def test_resuming_a_hard_link_to_a_live_runs_trace_is_refused_as_that_run(tmp_path, where):
    """Issue 32, bug 6: the lock was taken on the path, so --resume through a hard link ran a second writer."""
    real = tmp_path / "real.h5"
    assert solve(*SMALL, "--checkpoint-every", "1", "--out", real).returncode == 0
    live = T.TraceWriter(real, T.load(real).config, {}, resume=True)  # a live run, its version published
    alias = (tmp_path if where == "same directory" else tmp_path / "elsewhere") / "alias.h5"
    alias.parent.mkdir(exist_ok=True)
    os.link(real, alias)
    before = real.read_bytes()
    result = solve("--resume", alias, "--iters", "6", timeout=60)
    assert one_error_line(result) and "being written by another run" in result.stderr, result.stderr
    with pytest.raises(T.TraceLocked, match="being written by another run"):
        T.TraceWriter(alias, T.load(alias).config, {}, resume=True)
    assert real.read_bytes() == before and alias.read_bytes() == before and T.load(alias).status == "running"
    live.close("completed")  # its new version replaces real.h5; alias keeps the old one, a trace of its own
    assert solve("--resume", alias, "--iters", "6", timeout=60).returncode == 0
    assert T.load(alias).status == "completed" and T.load(real).attrs["resumes"] == 1
