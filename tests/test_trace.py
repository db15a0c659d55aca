"""The HDF5 trace: round trip, live reading by another process, failure paths, atomic checkpoints."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pprs_mpi
from pprs_mpi import trace as T

CONFIG = {"problem": "quadratic", "algo": "pprs", "K": 8, "gamma": 0.1, "lr": 0.5, "mu": "nesterov",
          "simulated_depth": None, "microbatch_size": 2}
META = {"ranks": 3, "device": "cpu", "mpi_library": "Open MPI 5.0", "engine": "mpi", "depth": 3,
        "makespan": 12, "n_microbatches": 4, "simulated_depth": None}


def write_rows(writer, iterations):
    for t in iterations:
        writer.append(iteration=t, pipeline_time=12.0 * (t + 1), wall_time=0.01 * (t + 1), f_smoothed=1.0 / (t + 1),
                      grad_norm=2.0, step_size=0.5)


def timeline(n, iteration=0):
    records = np.zeros(n, dtype=T.TIMELINE_DTYPE)
    records["rank"] = np.arange(n) % 3
    records["iteration"] = iteration
    records["start"] = np.arange(n)
    records["end"] = np.arange(n) + 0.5
    return records


def run_python(code, *args, timeout=60):
    """Run `code` in a fresh interpreter (a second process, as a live reader or a crashing writer is)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    with T.TraceWriter(path, CONFIG, META, flush_every=3) as writer:
        writer.write_graph(["a", "b", "c"], ["linear", "relu", "sum"], [["theta"], ["a"], ["b", "theta"]],
                           [0, 1, 2], dim=5, depth=3, root="theta")
        write_rows(writer, range(7))
        writer.append(iteration=7, f_eval=0.25)
        writer.write_result(y=np.arange(5.0), x=np.ones(5))
        writer.write_timeline(timeline(4))
        writer.write_timeline(timeline(2, iteration=1), append=True)
        writer.write_checkpoint({"x": np.arange(5.0), "v": np.zeros(5)}, {"iteration": 8, "lam": 2.5})
        writer.set_attrs(note="hello", simulated_depth=None)
    trace = T.load(path)
    assert trace.status == "completed"
    assert trace.config == CONFIG
    assert trace.attrs["format_version"] == T.FORMAT_VERSION
    assert trace.attrs["pprs_mpi_version"] == pprs_mpi.__version__
    assert {key: trace.attrs[key] for key in META if META[key] is not None} == {
        key: value for key, value in META.items() if value is not None}
    assert "simulated_depth" not in trace.attrs and trace.attrs["note"] == "hello"
    assert trace.graph == {"names": ["a", "b", "c"], "op_types": ["linear", "relu", "sum"],
                           "parents": [["theta"], ["a"], ["b", "theta"]], "stage_of": [0, 1, 2],
                           "dim": 5, "depth": 3, "root": "theta"}
    assert trace.n_rows == 8
    assert trace.columns["iteration"].dtype == np.int64
    np.testing.assert_array_equal(trace.columns["iteration"], np.arange(8))
    np.testing.assert_array_equal(trace.columns["f_smoothed"][:7], 1.0 / np.arange(1, 8))
    assert np.isnan(trace.columns["f_smoothed"][7]) and trace.columns["f_eval"][7] == 0.25
    assert np.isnan(trace.columns["f_eval"][:7]).all()
    np.testing.assert_array_equal(trace.result["y"], np.arange(5.0))
    np.testing.assert_array_equal(trace.timeline, np.concatenate([timeline(4), timeline(2, iteration=1)]))
    assert trace.has_checkpoint
    arrays, attrs = T.read_checkpoint(path)
    np.testing.assert_array_equal(arrays["x"], np.arange(5.0))
    assert attrs == {"iteration": 8, "lam": 2.5}


@settings(max_examples=20, deadline=None)
@given(n_rows=st.integers(0, 30), flush_every=st.integers(1, 12), values=st.floats(allow_nan=False))
def test_rows_round_trip_whatever_the_flush_interval(tmp_path_factory, n_rows, flush_every, values):
    path = tmp_path_factory.mktemp("rows") / "run.h5"
    with pytest.MonkeyPatch.context() as unpaced, T.TraceWriter(path, {}, {}, flush_every=flush_every) as writer:
        unpaced.setattr(T, "COMMIT_SHARE", math.inf)  # commit every flush_every rows, however fast they come
        for t in range(n_rows):
            writer.append(iteration=t, f_eval=values)
        assert T.load(path).n_rows == n_rows // flush_every * flush_every  # whole batches only, before close
    trace = T.load(path)
    np.testing.assert_array_equal(trace.columns["iteration"], np.arange(n_rows))
    np.testing.assert_array_equal(trace.columns["f_eval"], np.full(n_rows, values))


def test_bad_rows_and_statuses_are_refused(tmp_path):
    writer = T.TraceWriter(tmp_path / "run.h5", {}, {})
    with pytest.raises(ValueError, match="iteration"):
        writer.append(f_eval=1.0)
    with pytest.raises(ValueError, match="columns"):
        writer.append(iteration=0, loss=1.0)
    with pytest.raises(ValueError, match="status"):
        writer.close("done")
    with pytest.raises(ValueError, match="reserved"):
        T.TraceWriter(tmp_path / "other.h5", {}, {"status": "completed"})


def test_a_second_process_reads_the_trace_live(tmp_path, monkeypatch):
    """Another process sees status 'running' and the rows committed so far."""
    monkeypatch.setattr(T, "COMMIT_SHARE", math.inf)
    path = tmp_path / "run.h5"
    reader = """
        import json, sys
        from pprs_mpi.trace import load
        trace = load(sys.argv[1])
        print(json.dumps({"status": trace.status, "iterations": trace.columns["iteration"].tolist()}))
    """
    writer = T.TraceWriter(path, CONFIG, META, flush_every=5)
    write_rows(writer, range(12))  # 10 flushed, 2 buffered
    seen = json.loads(run_python(reader, path).stdout)
    assert seen == {"status": "running", "iterations": list(range(10))}
    writer.close("completed")
    assert json.loads(run_python(reader, path).stdout) == {"status": "completed", "iterations": list(range(12))}


def test_a_killed_writer_leaves_running_which_reads_as_abandoned_only_once_it_is_gone(tmp_path):
    path = tmp_path / "run.h5"
    live = T.TraceWriter(tmp_path / "live.h5", CONFIG, META, flush_every=1)
    write_rows(live, range(3))
    assert not T.abandoned(T.load(tmp_path / "live.h5"))  # its writer (this process) is alive
    killed = """
        import os, sys
        from pprs_mpi.trace import TraceWriter
        writer = TraceWriter(sys.argv[1], {"problem": "lad"}, {}, flush_every=1)
        writer.append(iteration=0)
        os._exit(9)  # no close: what SIGKILL does
    """
    assert run_python(killed, path).returncode == 9
    trace = T.load(path)
    assert trace.status == "running" and T.abandoned(trace)
    seen = T.load(tmp_path / "live.h5")  # as if this pid had been given to a new process:
    host, pid, started = seen.attrs["writer"].split(":")
    seen.attrs["writer"] = f"{host}:{pid}:{int(started) - 1}"
    assert T.abandoned(seen)
    live.close("completed")
    assert not T.abandoned(T.load(tmp_path / "live.h5"))


def test_reader_and_writer_overlapping_never_see_a_broken_file(tmp_path):
    """A reader polling while the writer flushes every row: every load succeeds and rows only grow."""
    path = tmp_path / "run.h5"
    writer = T.TraceWriter(path, CONFIG, META, flush_every=1)
    poller = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import json, sys, time
        from pprs_mpi.trace import load
        counts = []
        while True:
            trace = load(sys.argv[1])
            counts.append(trace.n_rows)
            if trace.status != "running":
                break
        print(json.dumps(counts))
    """), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    write_rows(writer, range(300))
    writer.close("completed")
    out, err = poller.communicate(timeout=60)
    assert poller.returncode == 0, err
    counts = json.loads(out)
    assert counts == sorted(counts) and counts[-1] == 300


def test_a_reader_holding_the_file_neither_blocks_the_writer_nor_sees_it_change(tmp_path):
    """A reader with HDF5's own lock (h5py's default) keeps reading the version it opened; the writer
    commits meanwhile without waiting for it, and a new open shows the new version."""
    path = tmp_path / "run.h5"
    writer = T.TraceWriter(path, CONFIG, META, flush_every=1)
    write_rows(writer, range(3))
    writer.flush()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, h5py
        with h5py.File(sys.argv[1], "r", locking=True) as f:
            print(len(f["trace/iteration"]), flush=True)
            sys.stdin.readline()
            print(len(f["trace/iteration"]), dict(f.attrs)["status"], flush=True)
        with h5py.File(sys.argv[1], "r", locking=True) as f:
            print(len(f["trace/iteration"]), dict(f.attrs)["status"], flush=True)
    """), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().split() == ["3"]
    write_rows(writer, range(3, 50))
    writer.write_checkpoint({"x": np.zeros(3)}, {"iteration": 49})
    writer.close("completed")
    out, _ = holder.communicate("go\n", timeout=30)
    assert out.splitlines() == ["3 running", "50 completed"]


@pytest.mark.parametrize("error, status", [(RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")])
def test_context_manager_marks_a_failed_run(tmp_path, error, status):
    path = tmp_path / "run.h5"
    with pytest.raises(error):
        with T.TraceWriter(path, CONFIG, META) as writer:
            write_rows(writer, range(3))
            raise error("boom")
    trace = T.load(path)
    assert trace.status == status
    assert trace.n_rows == 3  # the buffered rows are kept


def test_explicit_close_status_is_kept(tmp_path):
    path = tmp_path / "run.h5"
    with T.TraceWriter(path, CONFIG, META) as writer:
        writer.close("diverged")
    assert T.load(path).status == "diverged"


def test_resume_keeps_rows_before_the_checkpoint_only(tmp_path):
    path = tmp_path / "run.h5"
    with T.TraceWriter(path, CONFIG, META) as writer:
        write_rows(writer, range(20))
        writer.write_timeline(np.concatenate([timeline(3, iteration=t) for t in range(20)]))
        writer.close("interrupted")
    writer = T.TraceWriter(path, CONFIG, {**META, "ranks": 2}, resume=True)
    assert T.load(path).status == "running"
    writer.rewind(9)  # a checkpoint after 9 iterations: rows 0..9, timeline passes 0..8
    trace = T.load(path)
    np.testing.assert_array_equal(trace.columns["iteration"], np.arange(10))
    assert trace.timeline["iteration"].max() == 8 and trace.timeline.size == 27
    assert trace.attrs["ranks"] == 2 and trace.attrs["resumes"] == 1
    write_rows(writer, range(10, 15))
    writer.close("completed")
    np.testing.assert_array_equal(T.load(path).columns["iteration"], np.arange(15))


def test_checkpoint_flushes_the_rows_before_it(tmp_path):
    path = tmp_path / "run.h5"
    writer = T.TraceWriter(path, CONFIG, META, flush_every=100)
    write_rows(writer, range(5))
    writer.write_checkpoint({"x": np.zeros(3)}, {"iteration": 5})
    assert T.load(path).n_rows == 5


@pytest.mark.parametrize("dies, iteration", [("before", 1), ("after", 2)])
def test_a_kill_around_the_rename_leaves_the_old_or_the_new_checkpoint(tmp_path, dies, iteration):
    path = tmp_path / "run.h5"
    with T.TraceWriter(path, CONFIG, META) as writer:
        writer.write_checkpoint({"x": np.full(4, 1.0)}, {"iteration": 1})
    crash = """
        import os, signal, sys
        import numpy as np
        from pprs_mpi import trace
        rename = os.replace
        def dying(source, target):
            if sys.argv[2] == "after":
                rename(source, target)
            os.kill(os.getpid(), signal.SIGKILL)
        writer = trace.TraceWriter(sys.argv[1], {}, {}, resume=True)
        trace.os.replace = dying
        writer.write_checkpoint({"x": np.full(4, 2.0)}, {"iteration": 2})
    """
    assert run_python(crash, path, dies).returncode == -9
    arrays, attrs = T.read_checkpoint(path)
    assert attrs == {"iteration": iteration} and (arrays["x"] == iteration).all()
    assert T.load(path).status == "running"
    assert os.path.exists(str(path) + T.LOCK_SUFFIX) and os.path.exists(str(path) + T.TEMP_SUFFIX) == (dies == "before")
    writer = T.TraceWriter(path, CONFIG, META, resume=True)  # takes over the dead writer's lock
    writer.write_checkpoint({"x": np.full(4, 3.0)}, {"iteration": 3})
    writer.close("completed")
    assert T.read_checkpoint(path)[1] == {"iteration": 3} and os.listdir(tmp_path) == ["run.h5"]


def test_a_version_1_staging_group_left_by_a_kill_still_resumes(tmp_path):
    """Version 1 replaced /checkpoint in place in two steps; a kill between them left only a complete
    /checkpoint_new, which is still read, and the next commit writes it back as /checkpoint."""
    path = tmp_path / "old.h5"
    path.write_bytes((Path(__file__).parent / "data" / "trace_v1.h5").read_bytes())
    with T.edited(path) as f:
        f.move("checkpoint", "checkpoint_new")
    arrays, attrs = T.read_checkpoint(path)
    assert attrs["iteration"] == 12 and arrays["x"].shape == (6,)
    T.TraceWriter(path, CONFIG, META, resume=True).close("interrupted")
    with h5py.File(path, "r") as f:
        assert "checkpoint_new" not in f and f["checkpoint"].attrs["iteration"] == 12


def test_an_incomplete_version_1_staged_checkpoint_is_ignored(tmp_path):
    path = tmp_path / "old.h5"
    path.write_bytes((Path(__file__).parent / "data" / "trace_v1.h5").read_bytes())
    with T.edited(path) as f:  # what a kill in the middle of version 1's first step left
        del f["checkpoint"]
        f.create_group("checkpoint_new")["x"] = np.zeros(2)
    assert not T.load(path).has_checkpoint
    with pytest.raises(T.TraceError, match="no checkpoint"):
        T.read_checkpoint(path)


def test_repeated_checkpoints_do_not_grow_the_file(tmp_path):
    path = tmp_path / "run.h5"
    writer = T.TraceWriter(path, CONFIG, META)
    sizes = []
    for t in range(6):
        writer.write_checkpoint({"x": np.random.default_rng(t).random(50_000)}, {"iteration": t})
        sizes.append(os.path.getsize(path))
    assert sizes[-1] <= sizes[1] * 1.1


def one_line_error(path):
    with pytest.raises(T.TraceError) as info:
        T.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_load_errors_are_one_clear_line(tmp_path):
    assert "no such file" in one_line_error(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    assert "not an HDF5 file" in one_line_error(tmp_path / "text.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.arange(3)
    assert "not a pprs_mpi trace" in one_line_error(tmp_path / "foreign.h5")


def test_truncated_trace(tmp_path):
    path = tmp_path / "run.h5"
    with T.TraceWriter(path, CONFIG, META) as writer:
        write_rows(writer, range(50))
        writer.write_result(y=np.zeros(10_000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(path)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "run.h5"
    T.TraceWriter(path, CONFIG, META).close("completed")
    with T.edited(path) as f:
        f.attrs["format_version"] = T.FORMAT_VERSION + 1
    assert "newer" in one_line_error(path)
    with pytest.raises(T.TraceError, match="newer"):
        T.TraceWriter(path, CONFIG, META, resume=True)


def test_writer_errors_are_trace_errors(tmp_path):
    with pytest.raises(T.TraceError, match="cannot create"):
        T.TraceWriter(tmp_path / "no" / "such" / "dir" / "run.h5", CONFIG, META)
    with pytest.raises(T.TraceError, match="cannot resume"):
        T.TraceWriter(tmp_path / "missing.h5", CONFIG, META, resume=True)


def test_an_existing_file_is_replaced_only_with_overwrite_and_a_complete_first_version(tmp_path):
    path = tmp_path / "run.h5"
    path.write_text("my notes")
    with pytest.raises(T.TraceError, match=r"already exists: pass --overwrite \(from Python: overwrite=True\) to "
                                           r"replace it, or --resume"):
        T.TraceWriter(path, CONFIG, META)
    with pytest.raises((OverflowError, TypeError)):  # a value HDF5 cannot hold: refused before the file is touched
        T.TraceWriter(path, CONFIG, {"makespan": 10 ** 30}, overwrite=True)
    assert path.read_text() == "my notes" and os.listdir(tmp_path) == ["run.h5"]
    T.TraceWriter(path, CONFIG, META, overwrite=True).close("completed")
    assert T.load(path).status == "completed"
    for special in (os.devnull, tmp_path):
        with pytest.raises(T.TraceError, match="not a regular file"):
            T.TraceWriter(special, CONFIG, META, overwrite=True)


def test_a_trace_deleted_or_replaced_under_the_writer_ends_it(tmp_path):
    path = tmp_path / "run.h5"
    writer = T.TraceWriter(path, CONFIG, META)
    path.unlink()
    with pytest.raises(T.TraceError, match="no longer this run's trace"):
        writer.write_checkpoint({"x": np.zeros(2)}, {"iteration": 0})
    assert not path.exists()


def test_damage_is_caught_by_the_checksum_and_edits_go_through_edited(tmp_path):
    """A flipped bit anywhere, or a cut, is one TraceError before HDF5 parses the file; an in-place
    h5py edit breaks the checksum too, while `edited` commits the change as a new version."""
    path = tmp_path / "run.h5"
    with T.TraceWriter(path, CONFIG, META) as writer:
        write_rows(writer, range(20))
    data = path.read_bytes()
    assert data.startswith(b"PPRSTRC2") and h5py.is_hdf5(path)  # any HDF5 reader still opens it
    for i in [*range(0, 20, 3), *range(T.USER_BLOCK, len(data), 97)]:  # the header, then what it covers
        path.write_bytes(data[:i] + bytes([data[i] ^ 4]) + data[i + 1:])
        message = one_line_error(path)
        assert "damaged" in message or "truncated" in message
    path.write_bytes(data[:-1])
    assert "truncated" in one_line_error(path)
    path.write_bytes(data)
    with h5py.File(path, "a") as f:
        f.attrs["note"] = "added in place"
    assert "damaged" in one_line_error(path)
    path.write_bytes(data)
    with T.edited(path) as f:
        f.attrs["note"] = "added by edited"
    assert T.load(path).attrs["note"] == "added by edited" and os.listdir(tmp_path) == ["run.h5"]
    live = T.TraceWriter(tmp_path / "live.h5", CONFIG, META)
    with pytest.raises(T.TraceLocked):
        with T.edited(tmp_path / "live.h5"):
            pass
    live.close("completed")


def test_a_running_trace_whose_writer_stopped_committing_is_abandoned_from_any_host(tmp_path):
    """The writer stamps every commit and commits at least every heartbeat; a hung writer (alive, so the
    same-host process rule cannot tell) or one on another host is found by the stamp's age."""
    import time
    path = tmp_path / "run.h5"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pprs_mpi.trace import TraceWriter
        writer = TraceWriter({str(path)!r}, {{"K": 1}}, {{}})
        for t in range(30):  # a live writer: rows every 0.05 s, committed at least every heartbeat
            writer.append(iteration=t)
            time.sleep(0.05)
        print("hung", flush=True)
        time.sleep(60)  # hung: no more commits
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PPRS_HEARTBEAT_SECONDS": "0.3"})
    try:
        time.sleep(1.0)
        live = T.load(path)
        assert live.status == "running" and live.n_rows > 1 and not T.abandoned(live)
        assert writer.stdout.readline() == "hung\n"
        time.sleep(1.5)  # more than 2 heartbeats and 3 gaps between rows
        hung = T.load(path)
        assert hung.attrs["heartbeat_within"] < 1.5 and T.abandoned(hung)
    finally:
        writer.kill()
        writer.wait(timeout=10)
