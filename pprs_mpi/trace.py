"""HDF5 trace of one run: configuration, per-iteration rows, graph, timeline, result, checkpoint.

Rank 0 is the only writer. The writer keeps the file closed between operations: every flush,
checkpoint or attribute update is one short open / write / close. A reader (`load`, the report, a
plotting notebook) therefore always finds a complete, consistent file, even while the run goes
on, and a killed run leaves the file as of its last flush. HDF5's own file lock (exclusive for
the writer, shared for readers) keeps the two from overlapping; both sides retry while the other
holds it. Free space is tracked persistently, so replacing the checkpoint reuses its old space
instead of growing the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np

import pprs_mpi

FORMAT_VERSION = 1
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
COLUMNS = ("iteration", "pipeline_time", "wall_time", "f_smoothed", "f_eval", "grad_norm", "step_size")
TIMELINE_DTYPE = np.dtype([("rank", "i4"), ("iteration", "i8"), ("microbatch", "i4"), ("phase", "u1"),
                           ("node", "i4"), ("start", "f8"), ("end", "f8")])
PHASES = ("forward", "backward", "wait")  # timeline phase codes 0, 1, 2

RESERVED_ATTRS = ("format_version", "status", "config", "pprs_mpi_version", "resumes", "writer")
LOCK_WAIT_S = 60.0  # how long the writer waits for a reader to release the file before giving up
READ_WAIT_S = 5.0  # how long `load` waits for the writer to finish a flush
_CHUNK = 256  # rows per chunk: small, so that short runs make small files
_STAGING, _COMPLETE = "checkpoint_new", "_complete"


class TraceError(ValueError):
    """A file that is not a readable pprs_mpi trace, or a trace that cannot be written; one-line message."""


class TraceLocked(TraceError):
    """Another process kept the trace open longer than we were willing to wait."""


class TraceWriter:
    """Writes one run's trace; rows are buffered and written every `flush_every` rows and on close.

    Used as a context manager, an exception marks the run 'failed' (KeyboardInterrupt:
    'interrupted') and a normal exit without an explicit `close` marks it 'completed'.
    """

    def __init__(self, path, config: dict, meta: dict, resume: bool = False, flush_every: int = 10,
                 overwrite: bool = False):
        self.path = os.fspath(path)
        if not resume and not overwrite and os.path.lexists(self.path):
            raise TraceError(f"{self.path} already exists: pass --overwrite to replace it, or --resume it")
        self.flush_every = max(1, int(flush_every))
        self.closed = False
        self._rows: list[tuple] = []
        clash = sorted(set(meta) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"meta keys {clash} are reserved trace attributes")
        if resume and not os.path.exists(self.path):
            raise TraceError(f"{self.path}: cannot resume, no such file")
        try:
            with _open(self.path, "a" if resume else "w", LOCK_WAIT_S) as f:
                if resume:
                    _check(self.path, f)
                    f.attrs["resumes"] = int(f.attrs.get("resumes", 0)) + 1
                else:
                    f.attrs["format_version"] = FORMAT_VERSION
                    f.attrs["resumes"] = 0
                    group = f.create_group("trace")
                    for name in COLUMNS:
                        group.create_dataset(name, (0,), maxshape=(None,), chunks=(_CHUNK,), dtype=_column_dtype(name))
                f.attrs["status"] = "running"
                f.attrs["writer"] = _this_process()  # see `abandoned`
                f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
                f.attrs["pprs_mpi_version"] = pprs_mpi.__version__
                _set_attrs(f, meta)
        except OSError as err:
            raise TraceError(f"{self.path}: cannot {'open' if resume else 'create'} trace ({_reason(err)})") from None

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
        except (OSError, TraceError):
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
        with self._file() as f:
            if "graph" in f:
                del f["graph"]
            g = f.create_group("graph")
            g.create_dataset("names", data=list(names), dtype=h5py.string_dtype())
            g.create_dataset("op_types", data=list(op_types), dtype=h5py.string_dtype())
            ragged = g.create_dataset("parents", (len(names),), dtype=h5py.vlen_dtype(np.int32))
            for i, ps in enumerate(parents):
                ragged[i] = np.array([index[p] for p in ps], dtype=np.int32)
            g.create_dataset("stage", data=np.asarray(stage_of, dtype=np.int32))
            g.attrs.update(dim=int(dim), depth=int(depth), root=root)

    def append(self, **row) -> None:
        """Buffer one row (missing columns are NaN); written every `flush_every` rows."""
        unknown = set(row) - set(COLUMNS)
        if unknown or "iteration" not in row:
            raise ValueError(f"a row needs 'iteration' and only columns of {COLUMNS}; got {sorted(row)}")
        self._rows.append(tuple(row.get(name, math.nan) for name in COLUMNS))
        if len(self._rows) >= self.flush_every:
            self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """Write the buffered rows. With wait=False, a file held by a reader just keeps them buffered."""
        if not self._rows:
            return
        try:
            with self._file(LOCK_WAIT_S if wait else 0.0) as f:
                self._write_rows(f)
        except TraceLocked:
            if wait:
                raise

    def rewind(self, iteration: int) -> None:
        """Forget what came after a checkpoint taken when `iteration` iterations were done, for a resume:
        rows of later iterations (a row's `iteration` counts iterations done) and timeline records of
        passes t >= iteration (a record's `iteration` is the 0-based pass t)."""
        self.flush()
        with self._file() as f:
            keep = f["trace/iteration"][()] <= iteration
            for name in COLUMNS:
                _replace(f["trace"][name], f["trace"][name][()][keep])
            if "timeline" in f:
                records = f["timeline"][()]
                _replace(f["timeline"], records[records["iteration"] < iteration])

    def write_result(self, **arrays) -> None:
        """/result/<name> for each array (e.g. y, x), replacing earlier ones."""
        with self._file() as f:
            group = f.require_group("result")
            for name, array in arrays.items():
                if name in group:
                    del group[name]
                group[name] = np.asarray(array)

    def write_timeline(self, records, append: bool = False) -> None:
        """/timeline (TIMELINE_DTYPE records): replaced, or extended with append=True."""
        records = np.asarray(records, dtype=TIMELINE_DTYPE)
        with self._file() as f:
            if "timeline" in f and not append:
                del f["timeline"]
            if "timeline" not in f:
                f.create_dataset("timeline", (0,), maxshape=(None,), chunks=(2 * _CHUNK,), dtype=TIMELINE_DTYPE)
            dataset = f["timeline"]
            n = dataset.shape[0]
            dataset.resize((n + len(records),))
            dataset[n:] = records

    def write_checkpoint(self, arrays: dict, attrs: dict) -> None:
        """Replace /checkpoint atomically: a crash at any point leaves a complete checkpoint readable.

        The buffered rows are written first, so a resume never finds a gap before its checkpoint.
        """
        self._stage_checkpoint(arrays, attrs)
        self._commit_checkpoint()

    def _stage_checkpoint(self, arrays: dict, attrs: dict) -> None:
        """Step 1, one whole open/close: the new checkpoint goes to /checkpoint_new, marked complete last."""
        with self._file() as f:
            self._write_rows(f)
            if _STAGING in f:
                del f[_STAGING]
            group = f.create_group(_STAGING)
            for name, array in arrays.items():
                group[name] = np.asarray(array)
            _set_attrs(group, attrs)
            group.attrs[_COMPLETE] = True

    def _commit_checkpoint(self) -> None:
        """Step 2: /checkpoint_new becomes /checkpoint (`read_checkpoint` accepts either, /checkpoint first)."""
        with self._file() as f:
            if "checkpoint" in f:
                del f["checkpoint"]
            f.move(_STAGING, "checkpoint")

    def set_attrs(self, **attrs) -> None:
        """Set root attributes (None values are skipped: HDF5 has no null)."""
        clash = sorted(set(attrs) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"{clash} are reserved trace attributes")
        with self._file() as f:
            _set_attrs(f, attrs)

    def close(self, status: str) -> None:
        """Write the buffered rows and the final status."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        with self._file() as f:
            self._write_rows(f)
            f.attrs["status"] = status
        self.closed = True

    @contextmanager
    def _file(self, timeout: float = LOCK_WAIT_S):
        if self.closed:
            raise TraceError(f"{self.path}: trace writer is closed")
        try:
            with _open(self.path, "a", timeout) as f:
                yield f
        except TraceError:
            raise
        except OSError as err:
            raise TraceError(f"{self.path}: cannot write trace ({_reason(err)})") from None

    def _write_rows(self, f: h5py.File) -> None:
        if not self._rows:
            return
        data = list(zip(*self._rows))
        if "trace" not in f:
            raise TraceError(f"{self.path}: the file no longer holds this run's trace (replaced or deleted?)")
        for name, values in zip(COLUMNS, data):
            dataset = f["trace"][name]
            n = dataset.shape[0]
            dataset.resize((n + len(values),))
            dataset[n:] = np.asarray(values, dtype=_column_dtype(name))
        self._rows = []


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


def load(path, timeout: float = READ_WAIT_S) -> Trace:
    """Read a trace, finished or still being written; TraceError (one line) if it is not a readable trace."""
    path = os.fspath(path)
    with _reading(path, timeout) as f:
        attrs = {name: _python(value) for name, value in f.attrs.items()}
        try:
            config = json.loads(attrs["config"])
            columns = {name: f["trace"][name][()] for name in COLUMNS}
        except (KeyError, ValueError) as err:
            raise TraceError(f"{path}: incomplete pprs_mpi trace ({err})") from None
        return Trace(path=path, attrs=attrs, config=config, status=attrs.get("status", "?"), columns=columns,
                     graph=_read_graph(f["graph"]) if "graph" in f else None,
                     result={name: d[()] for name, d in f["result"].items()} if "result" in f else {},
                     timeline=f["timeline"][()] if "timeline" in f else None,
                     has_checkpoint=any(_complete(f.get(name)) for name in ("checkpoint", _STAGING)))


def abandoned(trace: Trace) -> bool:
    """Whether a trace still says 'running' although the process writing it, on this host, is gone:
    its job was killed before it could close the trace (an abruptly dead rank takes rank 0 with it).
    From another host this cannot be told, and the answer is False."""
    host, pid, started = (str(trace.attrs.get("writer", "")).split(":") + ["", "", ""])[:3]
    if trace.status != "running" or host != socket.gethostname() or not pid.isdigit():
        return False
    return not _alive(int(pid), started)


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


def read_checkpoint(path, timeout: float = READ_WAIT_S) -> tuple[dict, dict]:
    """The last complete checkpoint as (arrays, attrs); TraceError if the trace has none."""
    path = os.fspath(path)
    with _reading(path, timeout) as f:
        for name in ("checkpoint", _STAGING):
            group = f.get(name)
            if _complete(group):
                arrays = {key: dataset[()] for key, dataset in group.items()}
                attrs = {key: _python(value) for key, value in group.attrs.items() if key != _COMPLETE}
                return arrays, attrs
    raise TraceError(f"{path}: the trace holds no checkpoint to resume from")


@contextmanager
def _reading(path: str, timeout: float):
    """Open a trace for reading, turning every way it can be unreadable into one TraceError line."""
    if not os.path.exists(path):
        raise TraceError(f"{path}: no such file")
    if os.path.isdir(path) or not h5py.is_hdf5(path):
        raise TraceError(f"{path}: not an HDF5 file")
    try:
        with _open(path, "r", timeout) as f:
            _check(path, f)
            yield f
    except TraceError:
        raise
    except OSError as err:
        raise TraceError(f"{path}: truncated or corrupted HDF5 file ({_reason(err)})") from None


def _open(path: str, mode: str, timeout: float) -> h5py.File:
    """h5py.File, retrying while another process holds HDF5's lock on it; TraceLocked after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if mode == "w":  # persistent free-space tracking: a replaced checkpoint's space is reused
                return h5py.File(path, "w", fs_strategy="fsm", fs_persist=True)
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TraceLocked(f"{path}: another process kept the file open for more than {timeout:g} s") from None
            time.sleep(0.01)


def _check(path: str, f: h5py.File) -> None:
    version = f.attrs.get("format_version")
    if version is None or "trace" not in f:
        raise TraceError(f"{path}: an HDF5 file, but not a pprs_mpi trace (no format_version attribute or /trace)")
    if int(version) > FORMAT_VERSION:
        raise TraceError(f"{path}: trace format version {int(version)} is newer than this pprs_mpi "
                         f"{pprs_mpi.__version__} reads (version {FORMAT_VERSION}); upgrade pprs_mpi")


def _read_graph(group: h5py.Group) -> dict:
    names = list(group["names"].asstr()[()])
    root = _python(group.attrs["root"])
    return {"names": names, "op_types": list(group["op_types"].asstr()[()]),
            "parents": [[names[i] if i >= 0 else root for i in ps] for ps in group["parents"][()]],
            "stage_of": [int(s) for s in group["stage"][()]],
            "dim": int(group.attrs["dim"]), "depth": int(group.attrs["depth"]), "root": root}


def _complete(group) -> bool:
    return isinstance(group, h5py.Group) and bool(group.attrs.get(_COMPLETE, False))


def _set_attrs(target, attrs: dict) -> None:
    for name, value in attrs.items():
        if value is not None:
            target.attrs[name] = value


def _replace(dataset: h5py.Dataset, data: np.ndarray) -> None:
    dataset.resize((len(data),))
    dataset[:] = data


def _column_dtype(name: str) -> str:
    return "i8" if name == "iteration" else "f8"


def _python(value):
    """HDF5 attribute value as a plain Python value where it is a scalar."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _reason(err: OSError) -> str:
    """The useful part of an h5py error message."""
    text = str(err) or type(err).__name__
    match = re.search(r"error message = '([^']*)'", text) or re.search(r"\(([^()]*)\)\s*$", text)
    return match.group(1) if match else text.splitlines()[0]
