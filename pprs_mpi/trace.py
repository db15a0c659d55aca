"""HDF5 trace of one run: configuration, per-iteration rows, graph, timeline, result, checkpoint.

Durability. The trace is the run's only record, so it must survive whatever ends the writer: kill -9,
power loss, a full disk (ENOSPC), an I/O error (EIO), a second writer, readers that keep it open.
The design is the one trusted checkpoint writers use (`torch.save` practice, Orbax and DeepSpeed
checkpoint directories): a published file is never changed in place; a new version is written
whole to a temporary file beside it, fsynced, and atomically renamed over the old one.

Invariant: at every instant, `RUN.h5` is one complete version that a commit published, and it holds
the last checkpoint `write_checkpoint` returned from, with the configuration and every row up to it.

- Why it holds (copy-on-write commits). The writer keeps the whole trace in memory (rows, timeline,
  graph, result, checkpoint, attributes). A *commit* builds the HDF5 file in memory (HDF5 never
  writes to disk itself, so it can never leave half-flushed metadata: the old in-place writer's
  failure under ENOSPC and kill -9), writes the bytes to `RUN.h5.tmp` with os.write, fsyncs them,
  renames the file to `RUN.h5` (`os.replace`: atomic on POSIX) and fsyncs the directory. By cases
  on where the writer stops: before the rename, `RUN.h5` is the previous version (the temporary
  file is not looked at by anyone); after it, the new one. The fsync before the rename makes the
  new name point only at data already on disk, the one after it makes the rename itself survive a
  power loss. `write_checkpoint` commits before it returns, so a checkpoint is either wholly in
  `RUN.h5` or not at all, and every earlier one was replaced only by a later complete one. A resume
  from it redoes at most `--checkpoint-every` iterations.
- A failed write never damages what was written. Every failure (ENOSPC, EIO, a kill) happens on
  the temporary file, which is deleted on error (or truncated by the next writer after a kill); the
  error is one TraceError line, and the in-memory state is kept, so a later commit can still
  succeed. A version-1 trace being resumed is read, never written in place.
- Readers never block or slow the writer and never see a torn file. A published version is never
  modified again, so readers need no lock: `load` reads its bytes once and parses them in memory
  (the same with HDF5_USE_FILE_LOCKING=FALSE), and the writer never opens `RUN.h5` at all, so a reader that
  locks it (h5py's default, a Jupyter notebook holding it open) locks an inode the writer has
  finished with. An open reader keeps seeing the version it opened (and keeps its disk blocks
  until it closes); reopening shows the newest one. HDF5 SWMR, the other way to read a live file,
  was not chosen: a SWMR writer can only append to existing datasets (a checkpoint replaces groups
  and attributes), its files need HDF5 >= 1.10 (libver "latest"), every reader must opt into SWMR
  mode (plain h5py or a notebook does not), it needs POSIX write() semantics (not NFS), and it
  makes no promise for a writer killed in the middle of a write. (On NFS, a reader opening the file
  at the instant of a rename may get ESTALE: one TraceError, and the next try succeeds.)
- One writer per trace. A writer first takes an exclusive `flock` on `RUN.h5.lock` and writes its
  host:pid:start into it; a second writer (the same --out twice, or --resume of a live run) is
  refused naming that holder. The kernel drops the lock when its holder dies, so the lock of a
  killed writer is taken over by the next one without any staleness guess. The lock file is
  unlinked while still held on close; a writer that locked a just-unlinked inode sees the inode
  at the path differ and retries, so two writers can never both hold it.
  A path is one name of a file: the writer also marks the inode of the version it published (an
  open-file-description read lock on one byte far past its end, moved to each new version before its
  rename, which no reader takes), so a writer reaching that version by another name (a hard link,
  a bind mount) finds the mark and is refused too.
- Nothing valuable is overwritten. A fresh run refuses any existing `RUN.h5` (a trace, a text file)
  before writing anything, unless `overwrite=True`; even then the old file is replaced only once the
  new run has something worth more: its first checkpoint, or its end as completed or interrupted.
  Until then its commits stay in memory, so input refused at once, a wrong op or a NaN in the first
  iterations leave the old file intact (`replaced` says whether it was). A path that is not a
  regular file (/dev/null, a directory) is refused always. A commit also checks that `RUN.h5` is
  still the file it published last, so a trace deleted or replaced under a live run ends the run
  instead of being silently recreated.

Cost. A commit rewrites the whole file, so commits of rows are paced: buffered rows are committed
once `flush_every` have accumulated and the last commit's duration, divided by COMMIT_SHARE, has
passed, which bounds the writer's time spent on row commits to about COMMIT_SHARE of the run.
Checkpoints, a resume's rewind and the final status commit at once.

Damage is detected before it is parsed, and size before anything is read: the length in our header
(else the end-of-file address of HDF5's superblock) must match the file's size and stay within
MAX_TRACE_BYTES, so that a reader's memory is bounded by what the trace declares and a sparse or
padded file is refused unread. Each version carries a CRC-32 and the length of its
contents in the HDF5 user block (512 bytes before the superblock, which HDF5 leaves to applications,
so any HDF5 reader still opens the file); `load` checks them and opens the very bytes it checked,
so a damaged or truncated file is one TraceError, never a parse of damaged metadata (which can
raise anything, or loop forever). A whole file may still be crafted: its contents are then checked
against what the writer writes (`trace_schema`: types, shapes, sizes, no external or virtual storage)
before anything in it is used, and a resume commits nothing before all its checks have passed.
That header is the one layout change, hence FORMAT_VERSION 2;
version-1 traces (no header) are parsed as before, including one holding the old `/checkpoint_new`
staging group of a kill between the two steps of the old in-place checkpoint, and a resume
rewrites them as version 2.

Limits. Atomic rename and fsync are as good as the file system: local file systems, NFS and the
usual parallel file systems (Lustre, GPFS) give an atomic rename within a directory; the writer
lock needs a file system whose `flock` covers every host that may write (NFS since Linux 2.6.12,
Lustre mounted with `-o flock`); elsewhere two writers on different hosts are not detected.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import re
import socket
import stat
import struct
import time
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np

import pprs_mpi
from pprs_mpi import trace_schema
from pprs_mpi.engines.timeline import TIMELINE_DTYPE  # the one definition of the records

FORMAT_VERSION = 2  # 2: a checksummed user block; the groups and datasets are those of version 1
USER_BLOCK = 512  # bytes before the HDF5 superblock, which HDF5 leaves to us: our header
_MAGIC, _HEADER = b"PPRSTRC2", struct.Struct("<8sIQ")  # magic, CRC-32 and length of what follows the block
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The largest trace a reader reads (it holds it in memory): 4 GiB unless PPRS_MAX_TRACE_BYTES says otherwise.
MAX_TRACE_BYTES = int(os.environ.get("PPRS_MAX_TRACE_BYTES", 4 << 30))
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
COLUMNS = ("iteration", "pipeline_time", "wall_time", "f_smoothed", "f_eval", "grad_norm", "step_size", "gamma",
           "f_low", "f_high", "f_avg")
LATER_COLUMNS = ("gamma", "f_low", "f_high", "f_avg")  # absent from older traces: read as NaN

RESERVED_ATTRS = ("format_version", "status", "config", "pprs_mpi_version", "resumes", "writer", "heartbeat",
                  "heartbeat_within")
# Liveness across hosts: a running writer commits at least every HEARTBEAT_SECONDS (between iterations) and
# stamps each commit; a trace still 'running' whose last stamp is older than its `heartbeat_within` has lost
# its writer, wherever that ran. PPRS_HEARTBEAT_SECONDS shortens it (tests, jobs that want to know sooner).
HEARTBEAT_SECONDS = float(os.environ.get("PPRS_HEARTBEAT_SECONDS", "60"))
COMMIT_SHARE = 0.05  # at most about this share of the writer's time goes to committing rows
LOCK_SUFFIX, TEMP_SUFFIX = ".lock", ".tmp"
_LEGACY_STAGING, _COMPLETE = "checkpoint_new", "_complete"  # version-1 in-place checkpoints


class TraceError(ValueError):
    """A file that is not a readable pprs_mpi trace, or a trace that cannot be written; one-line message."""


class TraceLocked(TraceError):
    """Another live process is writing this trace."""


class TraceWriter:
    """Writes one run's trace by copy-on-write commits (see the module docstring).

    Rows are buffered and committed every `flush_every` rows (paced by COMMIT_SHARE); graph,
    timeline, result and attributes go with the next commit; checkpoints, `rewind`, `flush` and
    `close` commit at once. Used as a context manager, an exception marks the run 'failed'
    (KeyboardInterrupt: 'interrupted') and a normal exit without an explicit `close` marks it
    'completed'.

    With `overwrite` of an existing file, nothing is published until the first checkpoint or a close
    as completed or interrupted (see the module docstring); `replaced` is False while the old file stays.
    """

    def __init__(self, path, config: dict, meta: dict, resume: bool = False, overwrite: bool = False,
                 flush_every: int = 10, rewind: int | None = None):
        self.path = os.fspath(path)
        self._file = os.path.realpath(self.path)  # the lock and the commits follow links once, here
        self.flush_every = max(1, int(flush_every))
        self.closed = False
        clash = sorted(set(meta) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"meta keys {clash} are reserved trace attributes")
        _refuse_special_file(self.path)
        if resume and not os.path.exists(self._file):
            raise TraceError(f"{self.path}: cannot resume, no such file")
        self._lock = _WriterLock(self._file)
        self._release = weakref.finalize(self, self._lock.release)  # also if the writer is dropped unclosed
        try:
            self._published = _identity(self._file)
            if resume:
                self._state = _read_state(self._file)
                self._state.attrs["resumes"] = int(self._state.attrs.get("resumes", 0)) + 1
            else:
                if self._published and not overwrite:
                    raise TraceError(f"{self.path} already exists: pass --overwrite (from Python: overwrite=True) "
                                     "to replace it, or --resume (resume=PATH) to continue the trace in it")
                self._state = _State(attrs={"resumes": 0})
            self._state.attrs.update(format_version=FORMAT_VERSION, status="running", writer=_this_process(),
                                     pprs_mpi_version=pprs_mpi.__version__,
                                     config=json.dumps(config, sort_keys=True, default=str))
            self._state.set_attrs(meta)
            self._rows: list[tuple] = []
            self._rows_due = 0.0  # time.monotonic() before which rows are not committed
            if rewind is not None:  # before the first commit: a resume that cannot rewind changes nothing
                self._state.rewind(rewind)
            self._beat_due = time.monotonic() + HEARTBEAT_SECONDS  # rows are committed by then, however few
            self._last_append, self._slowest = None, 0.0  # the longest gap between rows (not the setup before)
            self._holding = bool(self._published) and not resume  # an old file to keep until this run is worth more
            if self._holding:
                self._state.image()  # what HDF5 cannot hold is refused now, as a first commit would
            else:
                self._commit()
        except BaseException:
            self._release()
            raise

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.closed:
            return False
        if exc_type is None:
            self.close("completed")
            return False
        try:
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")
        except TraceError:
            pass  # the exception that ended the run is the one worth reporting
        return False

    def write_graph(self, names, op_types, parents, stage_of, dim: int, depth: int, root: str) -> None:
        """/graph: per node (in the order timeline `node` indices refer to) its op type, parents and stage."""
        index = {name: i for i, name in enumerate(names)}
        index[root] = -1
        unknown = [p for ps in parents for p in ps if p not in index]
        if unknown:
            raise ValueError(f"parent '{unknown[0]}' is neither a node nor the root '{root}'")
        if not len(names) == len(op_types) == len(parents) == len(stage_of):
            raise ValueError("names, op_types, parents and stage_of must have one entry per node")
        self._open_state().graph = {
            "names": list(names), "op_types": list(op_types), "stage": np.asarray(stage_of, dtype=np.int32),
            "parents": [np.array([index[p] for p in ps], dtype=np.int32) for ps in parents],
            "attrs": {"dim": int(dim), "depth": int(depth), "root": root}}

    def append(self, **row) -> None:
        """Buffer one row (missing columns are NaN); committed every `flush_every` rows, paced."""
        unknown = set(row) - set(COLUMNS)
        if unknown or "iteration" not in row:
            raise ValueError(f"a row needs 'iteration' and only columns of {COLUMNS}; got {sorted(row)}")
        self._rows.append(tuple(row.get(name, math.nan) for name in COLUMNS))
        now = time.monotonic()
        if self._last_append is not None:
            self._slowest = max(self._slowest, now - self._last_append)
        self._last_append = now
        if now >= self._beat_due or len(self._rows) >= self.flush_every and now >= self._rows_due:
            started = time.monotonic()
            self._commit()
            self._rows_due = time.monotonic() + (time.monotonic() - started) / COMMIT_SHARE

    def flush(self) -> None:
        """Commit now whatever is buffered."""
        self._commit()

    def rewind(self, iteration: int) -> None:
        """Forget what came after a checkpoint taken when `iteration` iterations were done, for a resume:
        rows of later iterations (a row's `iteration` counts iterations done) and timeline records of
        passes t >= iteration (a record's `iteration` is the 0-based pass t)."""
        state = self._open_state()
        self._take_rows()
        state.rewind(iteration)
        self._commit()

    def write_result(self, **arrays) -> None:
        """/result/<name> for each array (e.g. y, x), replacing earlier ones."""
        self._open_state().result.update({name: np.asarray(array) for name, array in arrays.items()})

    def write_timeline(self, records, append: bool = False) -> None:
        """/timeline (TIMELINE_DTYPE records): replaced, or extended with append=True."""
        state = self._open_state()
        records = np.asarray(records, dtype=TIMELINE_DTYPE)
        state.timeline = np.concatenate([state.timeline, records]) if append and state.timeline is not None else records

    @property
    def replaced(self) -> bool:
        """Whether this run's trace is on disk (with `overwrite`, False while the old file is kept)."""
        return not self._holding

    @property
    def columns(self) -> dict:
        """The rows written so far, as the columns `load` would read (whether published or not)."""
        if not self.closed:
            self._take_rows()
        return self._state.columns

    def write_checkpoint(self, arrays: dict, attrs: dict) -> None:
        """Replace /checkpoint, with the rows so far, and commit: once this returns it is durable, and
        until then the previous checkpoint is (with `overwrite`, the first one replaces the old file)."""
        self._open_state().checkpoint = ({name: np.asarray(array) for name, array in arrays.items()}, dict(attrs))
        self._holding = False
        self._commit()

    def set_attrs(self, **attrs) -> None:
        """Set root attributes (None values are skipped: HDF5 has no null)."""
        clash = sorted(set(attrs) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"{clash} are reserved trace attributes")
        self._open_state().set_attrs(attrs)

    def close(self, status: str) -> None:
        """Commit the final status with everything buffered, and give up the writer lock."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._open_state().attrs["status"] = status
        if status in ("completed", "interrupted"):
            self._holding = False
        try:
            self._commit()
        finally:
            self.closed = True
            self._release()

    def _open_state(self) -> "_State":
        if self.closed:
            raise TraceError(f"{self.path}: trace writer is closed")
        return self._state

    def _take_rows(self) -> None:
        """Move the buffered rows into the state; an exception from a signal handler midway (see
        engines/mpi.py's JobAborted) may drop them, but never leaves columns of unequal length."""
        rows, self._rows = self._rows, []
        if rows:
            self._state.add_rows(rows)

    def _commit(self) -> None:
        """Publish the whole state, built in memory, as the new version of the file."""
        self._open_state()
        self._take_rows()
        if not self._holding:
            # the next commit comes within a heartbeat and one more gap between rows (an iteration, an evaluation)
            self._state.attrs.update(heartbeat=time.time(),
                                     heartbeat_within=2 * HEARTBEAT_SECONDS + 3 * self._slowest)
            self._published = _publish(self._file, self._state.image(), self._published, self._lock)
            self._beat_due = time.monotonic() + HEARTBEAT_SECONDS


@dataclass
class _State:
    """The writer's copy of everything in the trace; `image` turns it into the bytes of a file."""

    attrs: dict
    columns: dict = None
    graph: dict | None = None
    timeline: np.ndarray | None = None
    result: dict = None
    checkpoint: tuple[dict, dict] | None = None

    def __post_init__(self):
        self.columns = self.columns or {name: np.zeros(0, _column_dtype(name)) for name in COLUMNS}
        self.result = self.result or {}

    def set_attrs(self, attrs: dict) -> None:
        self.attrs.update({name: value for name, value in attrs.items() if value is not None})

    def rewind(self, iteration: int) -> None:
        """Drops rows after `iteration` iterations done and timeline records of passes t >= iteration."""
        keep = self.columns["iteration"] <= iteration
        self.columns = {name: values[keep] for name, values in self.columns.items()}
        if self.timeline is not None:
            self.timeline = self.timeline[self.timeline["iteration"] < iteration]

    def add_rows(self, rows: list[tuple]) -> None:
        self.columns = {name: np.concatenate([self.columns[name], np.asarray(values, dtype=_column_dtype(name))])
                        for name, values in zip(COLUMNS, zip(*rows))}

    def image(self) -> bytes:
        """The bytes of an HDF5 file holding the state, built in memory."""
        buffer = io.BytesIO()
        with h5py.File(buffer, "w", userblock_size=USER_BLOCK) as f:
            self._write(f)
        return _with_header(buffer.getvalue())

    def _write(self, f: h5py.File) -> None:
        f.attrs.update(self.attrs)
        rows = f.create_group("trace")
        for name, values in self.columns.items():
            rows.create_dataset(name, data=values, maxshape=(None,), chunks=(max(1, min(len(values), 4096)),))
        if self.graph is not None:
            _write_graph(f.create_group("graph"), self.graph)
        if self.timeline is not None:
            f.create_dataset("timeline", data=self.timeline)
        if self.result:
            group = f.create_group("result")
            for name, array in self.result.items():
                group[name] = array
        if self.checkpoint is not None:
            arrays, attrs = self.checkpoint
            group = f.create_group("checkpoint")
            for name, array in arrays.items():
                group[name] = array
            group.attrs.update({**{k: v for k, v in attrs.items() if v is not None}, _COMPLETE: True})


def _publish(path: str, image: bytes, expected, lock: "_WriterLock") -> tuple[int, int]:
    """Make `image` the file at `path`: write it to a temporary file and fsync it, mark it as `lock`'s
    (see _mark_inode), rename it over `path` (which must still be the file `expected` identifies),
    fsync the directory. HDF5 never writes here, so a full disk is a plain OSError; any failure leaves
    the previous version. Returns the new file's identity."""
    temp, fd = path + TEMP_SUFFIX, None
    try:
        fd = _create_temporary(temp)
        _write_durably(fd, image)
        _mark_inode(fd, path)
        if _identity(path) != expected:
            raise TraceError(f"{path}: the file is no longer this run's trace (deleted or replaced?)")
        os.replace(temp, path)
        lock.hold(fd)
        fd = None
        published = _identity(path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        return published
    except BaseException as err:
        if fd is not None:
            os.close(fd)
            _remove(temp)
        if isinstance(err, OSError):
            raise TraceError(f"{path}: cannot write trace ({_reason(err)}); the last committed version is "
                             "kept") from None
        raise


@contextmanager
def edited(path):
    """Change a trace that no run is writing, through h5py, as one commit: yields the h5py.File of a
    copy in memory, which replaces the trace (checksum renewed) when the block ends without error.
    Editing the file in place instead would make `load` find its checksum broken."""
    _refuse_special_file(os.fspath(path))
    path = os.path.realpath(path)  # the lock is named after the file, not after a link to it
    if not os.path.exists(path):
        raise TraceError(f"{path}: no such file")
    lock = _WriterLock(path)
    try:
        expected = _identity(path)
        data, checked = _read_image(path)
        buffer = io.BytesIO(data)
        with h5py.File(buffer, "a") as f:
            yield f
        _publish(path, _with_header(buffer.getvalue()) if checked else buffer.getvalue(), expected, lock)
    finally:
        lock.release()


@dataclass
class Trace:
    """Everything in a trace file, read into memory (the file is closed again at once)."""

    path: str
    attrs: dict
    config: dict
    status: str
    columns: dict
    graph: dict | None
    result: dict
    timeline: np.ndarray | None
    has_checkpoint: bool

    @property
    def n_rows(self) -> int:
        return len(self.columns["iteration"])


def load(path) -> Trace:
    """Read a trace, finished or still being written; TraceError (one line) if it is not a readable trace."""
    path = os.fspath(path)
    with _reading(path) as f:
        attrs = {name: _python(value) for name, value in f.attrs.items()}
        try:
            config = json.loads(attrs["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise TraceError(f"{path}: incomplete pprs_mpi trace (no readable config: {err})") from None
        graph = _read_graph_arrays(f["graph"]) if "graph" in f else None
        return Trace(path=path, attrs=attrs, config=config, status=str(attrs.get("status", "?")),
                     columns=_read_columns(path, f), graph=graph and _named_graph(graph),
                     result={name: d[()] for name, d in f["result"].items()} if "result" in f else {},
                     timeline=f["timeline"][()] if "timeline" in f else None,
                     has_checkpoint=_find_checkpoint(f) is not None)


def read_checkpoint(path) -> tuple[dict, dict]:
    """The last complete checkpoint as (arrays, attrs); TraceError if the trace has none."""
    path = os.fspath(path)
    with _reading(path) as f:
        checkpoint = _find_checkpoint(f)
        if checkpoint is None:
            raise TraceError(f"{path}: the trace holds no checkpoint to resume from")
        return _read_checkpoint_group(checkpoint)


def abandoned(trace: Trace) -> bool:
    """Whether a trace still says 'running' although its writer is gone: its job was killed before it could
    close the trace (an abruptly dead rank takes rank 0 with it, a hung rank 0 is ended by another).
    On the writer's host the process is looked up; from any host, a last commit older than the trace's
    `heartbeat_within` (the writer commits at least that often) means the writer is gone."""
    if trace.status != "running":
        return False
    beat, within = trace.attrs.get("heartbeat"), trace.attrs.get("heartbeat_within")
    if beat is not None and within is not None and time.time() - float(beat) > float(within):
        return True
    host, pid, started = (str(trace.attrs.get("writer", "")).split(":") + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not _alive(int(pid), started)


class _WriterLock:
    """An exclusive flock on RUN.h5.lock holding the writer's host:pid:start, and the mark (_mark_inode)
    on the inode of the trace's current version, reached by whatever name; both released by the kernel
    when the holder dies, so a dead writer's lock is simply taken over."""

    def __init__(self, trace_path: str):
        self.path = trace_path + LOCK_SUFFIX
        while True:
            try:  # never through a link, nor blocking on a FIFO planted there
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise TraceError(f"{self.path} is a symbolic link: refusing to follow it (remove it)") from None
                raise TraceError(f"{trace_path}: cannot create trace ({_reason(err)})") from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a hard link: its other name would be truncated
                os.close(fd)
                raise TraceError(f"{self.path} is not a regular file of its own (a FIFO, a device, a hard link?): "
                                 "refusing to use it as the lock (remove it)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = (os.read(fd, 200).decode(errors="replace").strip()
                          or "a process that has not written its name yet")
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise TraceLocked(f"{trace_path} is being written by another run ({holder}); wait for it to "
                                      "end, or stop it (a killed writer's lock is taken over)") from None
                raise TraceError(f"{trace_path}: cannot lock {self.path} ({_reason(err)}); "
                                 "does this file system support flock?") from None
            if _identity(self.path) == _identity(fd):
                break
            os.close(fd)  # we locked a lock file its holder unlinked on release: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, (_this_process() + "\n").encode())
        self.fd, self.marked = fd, None
        try:  # the version there now: another run may write it under another name (a hard link)
            version = os.open(trace_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as err:
            self.release()
            raise TraceError(f"{trace_path}: cannot read ({_reason(err)})") from None
        try:
            _mark_inode(version, trace_path)
        except BaseException:
            os.close(version)
            self.release()
            raise
        self.hold(version)

    def hold(self, fd: int) -> None:
        """Keeps `fd`, open on the trace's newest version and marked, instead of the previous version's."""
        previous, self.marked = self.marked, fd
        if previous is not None:
            os.close(previous)

    def release(self) -> None:
        _remove(self.path)  # unlinked while still locked: see __init__ for a writer that raced us
        os.close(self.fd)
        if self.marked is not None:
            os.close(self.marked)
            self.marked = None


_FLOCK = struct.Struct("hhqqi4x")  # Linux's struct flock: type, whence, start, length, pid
_MARK_BYTE = 1 << 62  # far past the end of any trace: no reader locks it alone


def _mark_inode(fd: int, path: str) -> None:
    """Marks the file open at `fd` (one version of a trace, its inode whatever names reach it) as the
    version a live writer holds: an open-file-description read lock on byte _MARK_BYTE, kept until `fd`
    is closed or the process dies. TraceLocked if another writer's mark is there: a lock on exactly that
    byte (the whole-file lock HDF5 takes for a reader on NFS is told apart by its range). Where the
    system or file system has no such locks, the path's lock file alone guards."""
    command = getattr(fcntl, "F_OFD_SETLK", None)
    if command is None:
        return
    try:
        fcntl.fcntl(fd, command, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, _MARK_BYTE, 1, 0))
        kind, _, start, length, _ = _FLOCK.unpack(fcntl.fcntl(
            fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _MARK_BYTE, 1, 0)))
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise TraceLocked(f"{path} is locked for writing by another program; wait for it to end") from None
        return
    if kind != fcntl.F_UNLCK and (start, length) == (_MARK_BYTE, 1):
        raise TraceLocked(f"{path} is being written by another run, under another name (a hard link?); wait "
                          "for it to end, or stop it (a killed writer's lock is taken over)")


def _refuse_special_file(path: str) -> None:
    """A trace is a regular file; replacing /dev/null or a directory by one would be a disaster."""
    if os.path.lexists(path) and not os.path.isfile(path):
        raise TraceError(f"{path} is not a regular file; a trace needs a path to a new or regular file")


def _identity(target) -> tuple[int, int] | None:
    """(device, inode) of a path or an open file descriptor; None for a missing path."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _create_temporary(temp: str) -> int:
    """A new file at `temp`, open for writing: a stale regular file left by a killed writer is removed
    first; anything else found there (a symbolic link, a FIFO, a directory) is refused, never written
    through. O_EXCL | O_NOFOLLOW: the file opened is the one created here."""
    try:
        mode = os.lstat(temp).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise TraceError(f"{temp} is not a regular file (a symbolic link, FIFO or directory): refusing to write "
                         "through it (remove it)")
    if mode is not None:
        os.unlink(temp)
    try:
        return os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise TraceError(f"{temp} was created by someone else while this run was writing it") from None


def _write_durably(fd: int, data: bytes) -> None:
    """Write `data` to the new file `fd` and fsync it (the caller closes it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _fsync_dir(path: str) -> None:
    """Make a rename in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _this_process() -> str:
    """host:pid:start, the start time telling this process from a later one given the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def _alive(pid: int, started: str) -> bool:
    """Whether process `pid` runs (not a zombie) and is the one that started at `started` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    now = _start_time(pid)
    return now != "zombie" and not (now and started and now != started)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), 'zombie' for a dead process
    not yet reaped, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:  # no /proc, or hidden from other users (hidepid)
        return None
    return "zombie" if fields[0] == "Z" else fields[19]


class _reading:
    """Open a published trace for reading, turning every way it can be unreadable into one TraceError
    line. The file is read once and opened from memory: no HDF5 lock (a published version is never
    modified, and no reader may hold up the writer), and a version-2 file is parsed only after its
    checksum matched, from the very bytes checked."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> h5py.File:
        if not os.path.exists(self.path):
            raise TraceError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise TraceError(f"{self.path}: not an HDF5 file")
        data, checked = _read_image(self.path)
        try:
            self.file = h5py.File(io.BytesIO(data), "r")
        except OSError as err:
            raise TraceError(f"{self.path}: truncated or corrupted HDF5 file ({_reason(err)})") from None
        try:
            _check(self.path, self.file, checked, len(data))
        except BaseException:
            self.file.close()
            raise
        return self.file

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.file.close()
        if exc_type is not None and issubclass(exc_type, TraceError):
            return False
        if exc_type is not None and issubclass(exc_type, (OSError, KeyError, ValueError, TypeError, RuntimeError,
                                                          AttributeError, IndexError)):
            raise TraceError(f"{self.path}: truncated or corrupted HDF5 file ({_reason(exc)})") from None
        return False


def _with_header(image: bytes) -> bytes:
    """An HDF5 image with a user block, its header filled in: magic, CRC-32 and length of the rest."""
    body = memoryview(image)[USER_BLOCK:]
    return _HEADER.pack(_MAGIC, zlib.crc32(body), len(body)) + bytes(image[_HEADER.size:])


def _read_image(path: str) -> tuple[bytes, bool]:
    """The file's bytes, and whether they carry a version-2 header, checked: TraceError for a damaged,
    truncated or oversized file, decided from its metadata (our header, else HDF5's superblock) before
    anything else is read, so that a sparse 8 GiB file costs a few small reads; then the checksum, before
    HDF5 parses anything (which may raise anything, or hang, on damage)."""
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, _HEADER.size, 0)
        checked = head.startswith(_MAGIC) and len(head) == _HEADER.size
        if checked:
            _, crc, length = _HEADER.unpack(head)
            if size < length + USER_BLOCK:
                raise TraceError(f"{path}: truncated trace ({size} of {length + USER_BLOCK} bytes)")
            if size > length + USER_BLOCK:
                raise _damaged(path)
            declared = size
        else:
            declared = _hdf5_end(fd, size, path)
        if declared > MAX_TRACE_BYTES:
            raise TraceError(f"{path}: declares {declared:,} bytes, more than a trace may hold ({MAX_TRACE_BYTES:,} "
                             "bytes; PPRS_MAX_TRACE_BYTES raises it); not read")
        data = _read_bytes(fd, declared, path)
    finally:
        os.close(fd)
    if checked and zlib.crc32(memoryview(data)[USER_BLOCK:]) != crc:
        raise _damaged(path)
    return data, checked


def _damaged(path: str) -> TraceError:
    return TraceError(f"{path}: damaged trace (its checksum does not match its contents; changed in place? "
                      "use pprs_mpi.trace.edited to change a trace)")


def _open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at `path`; TraceError for anything else (a FIFO would
    block, /dev/zero never ends), checked on the open file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise TraceError(f"{path}: cannot read ({_reason(err)})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TraceError(f"{path} is not a regular file, so not a trace")
    return fd


def _hdf5_end(fd: int, size: int, path: str) -> int:
    """Where HDF5 data ends in a file without our header (a version-1 trace), from the end-of-file address
    of its superblock, found where HDF5 looks for one (offset 0, 512, 1024, ...): small reads only."""
    offset = 0
    while offset + 8 <= size:
        block = os.pread(fd, 64, offset)
        if block.startswith(_HDF5_SIGNATURE):
            version = block[8] if len(block) > 8 else None
            if version not in (0, 1, 2, 3):  # a layout this reader does not know: HDF5 will judge the file
                return size
            width, first = (block[13], 24 + 4 * version) if version in (0, 1) else (block[9], 12)
            if width not in (2, 4, 8) or len(block) < first + 3 * width:
                raise TraceError(f"{path}: truncated or corrupted HDF5 file (its superblock is unreadable)")
            end = int.from_bytes(block[first + 2 * width:first + 3 * width], "little")
            if end > size:
                raise TraceError(f"{path}: truncated or corrupted HDF5 file (it declares {end:,} bytes, the file "
                                 f"has {size:,})")
            return end
        offset = 512 if offset == 0 else offset * 2
    raise TraceError(f"{path}: not an HDF5 file")


def _read_bytes(fd: int, count: int, path: str) -> bytes:
    """The first `count` bytes of the file (fewer if it shrank meanwhile); a TraceError line where memory lacks."""
    try:
        chunks, left = [], count
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 24), count - left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except MemoryError:
        raise TraceError(f"{path}: not enough memory to read its {count:,} bytes") from None


def _read_state(path: str) -> _State:
    """Everything a resumed writer carries on (TraceError for a damaged file, which is left as it is)."""
    with _reading(path) as f:
        checkpoint = _find_checkpoint(f)
        return _State(attrs=dict(f.attrs.items()), columns=_read_columns(path, f),
                      graph=_read_graph_arrays(f["graph"]) if "graph" in f else None,
                      timeline=f["timeline"][()] if "timeline" in f else None,
                      result={name: d[()] for name, d in f["result"].items()} if "result" in f else {},
                      checkpoint=None if checkpoint is None else _read_checkpoint_group(checkpoint))


def _check(path: str, f: h5py.File, checked: bool, size: int) -> None:
    version = f.attrs.get("format_version")
    if version is None or "trace" not in f:
        raise TraceError(f"{path}: an HDF5 file, but not a pprs_mpi trace (no format_version attribute or /trace)")
    try:
        trace_schema.validate(f, size, STATUSES, COLUMNS, TIMELINE_DTYPE)
    except ValueError as err:
        raise TraceError(f"{path}: malformed pprs_mpi trace ({err})") from None
    if int(version) >= 2 and not checked and int(version) <= FORMAT_VERSION:
        raise TraceError(f"{path}: damaged trace (its checksum header is gone)")
    if int(version) > FORMAT_VERSION:
        raise TraceError(f"{path}: trace format version {int(version)} is newer than this pprs_mpi "
                         f"{pprs_mpi.__version__} reads (version {FORMAT_VERSION}); upgrade pprs_mpi")


def _read_columns(path: str, f: h5py.File) -> dict:
    try:
        columns = {name: f["trace"][name][()] for name in COLUMNS if name not in LATER_COLUMNS or name in f["trace"]}
    except KeyError as err:
        raise TraceError(f"{path}: incomplete pprs_mpi trace ({err})") from None
    if len({len(values) for values in columns.values()}) != 1:
        raise TraceError(f"{path}: incomplete pprs_mpi trace (columns of different lengths)")
    rows = len(columns["iteration"])
    return {name: columns[name] if name in columns else np.full(rows, math.nan) for name in COLUMNS}


def _find_checkpoint(f: h5py.File):
    """/checkpoint, or a version-1 trace's complete staging group left by a kill between its two steps."""
    for name in ("checkpoint", _LEGACY_STAGING):
        group = f.get(name)
        if isinstance(group, h5py.Group) and bool(group.attrs.get(_COMPLETE, False)):
            return group
    return None


def _read_checkpoint_group(group: h5py.Group) -> tuple[dict, dict]:
    arrays = {key: dataset[()] for key, dataset in group.items()}
    return arrays, {key: _python(value) for key, value in group.attrs.items() if key != _COMPLETE}


def _read_graph_arrays(group: h5py.Group) -> dict:
    """/graph as stored: parents as index arrays into names (-1 = the root)."""
    return {"names": list(group["names"].asstr()[()]), "op_types": list(group["op_types"].asstr()[()]),
            "parents": list(group["parents"][()]), "stage": group["stage"][()],
            "attrs": {"dim": int(group.attrs["dim"]), "depth": int(group.attrs["depth"]),
                      "root": _python(group.attrs["root"])}}


def _write_graph(group: h5py.Group, graph: dict) -> None:
    group.create_dataset("names", data=graph["names"], dtype=h5py.string_dtype())
    group.create_dataset("op_types", data=graph["op_types"], dtype=h5py.string_dtype())
    ragged = group.create_dataset("parents", (len(graph["names"]),), dtype=h5py.vlen_dtype(np.int32))
    for i, parents in enumerate(graph["parents"]):
        ragged[i] = parents
    group.create_dataset("stage", data=graph["stage"])
    group.attrs.update(graph["attrs"])


def _named_graph(graph: dict) -> dict:
    """The graph as `Trace.graph` gives it: parents by name, the root by its own name."""
    names, root = graph["names"], graph["attrs"]["root"]
    return {"names": names, "op_types": graph["op_types"],
            "parents": [[names[i] if i >= 0 else root for i in ps] for ps in graph["parents"]],
            "stage_of": [int(s) for s in graph["stage"]], **graph["attrs"]}


def _column_dtype(name: str) -> str:
    return "i8" if name == "iteration" else "f8"


def _python(value):
    """HDF5 attribute value as a plain Python value where it is a scalar."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _reason(err: BaseException) -> str:
    """The useful part of an OS or h5py error message, on one line."""
    text = (err.strerror if isinstance(err, OSError) and err.strerror else str(err)) or type(err).__name__
    match = re.search(r"error message = '([^']*)'", text) or re.search(r"\(([^()]*)\)\s*$", text)
    return match.group(1) if match else text.splitlines()[0]
