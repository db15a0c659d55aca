"""What a readable trace holds, checked before anything in it is used.

A trace whose checksum matches may still be crafted (the checksum proves it is whole, not who wrote
it) or written by something else. Reading one must never raise anything but a one-line TraceError,
read a file other than the trace, or allocate more memory than the trace's own size. So, for the file
opened from the bytes `trace.load` read:

- every dataset keeps its data inside the file: no external storage (HDF5 would read any local file
  named in it, and a resume would copy those bytes into the new trace), no virtual sources, no filters
  (the writer never compresses), and no more bytes than the file itself holds (a dataset declaring
  10^12 rows of a fill value is a few bytes of metadata and terabytes once read);
- the root attributes, `/trace` columns, `/timeline`, `/graph`, `/result` and `/checkpoint` have the
  types and shapes the writer gives them (trace.py's module docstring and the README's trace section).

`validate` raises ValueError with the reason; trace.py turns it into the TraceError line.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

_INTEGER_ATTRS = ("format_version", "resumes", "ranks", "depth", "makespan", "n_microbatches", "stages",
                  "microbatch_size")
_STRING_ATTRS = ("status", "config", "writer", "graph_hash", "pprs_mpi_version", "layout_segments",
                 "layout_choice")


def validate(f: h5py.File, file_size: int, statuses: tuple, columns: tuple, timeline_dtype: np.dtype) -> None:
    """Raises ValueError naming the first thing in `f` (opened from `file_size` bytes) a trace cannot hold."""
    f.visititems(lambda name, item: _check_storage(name, item, file_size))
    _check_attrs(f.attrs, statuses)
    _check_columns(f, columns)
    if "timeline" in f:
        _check_timeline(f["timeline"], timeline_dtype)
    if "graph" in f:
        _check_graph(f["graph"])
    for group in ("result", "checkpoint"):
        if group in f:
            _check_arrays(f, group)
    if "checkpoint" in f:
        attrs = f["checkpoint"].attrs
        for name in ("iteration", "noise_counter", "momentum_t", "seed"):
            if name in attrs:
                _integer(f"checkpoint attribute {name!r}", attrs[name])
        for name in ("pipeline_time", "wall_time"):
            if name in attrs and not _is_number(attrs[name]):
                raise ValueError(f"checkpoint attribute {name!r} is not a number")


def _check_storage(name: str, item, file_size: int) -> None:
    if not isinstance(item, h5py.Dataset):
        return
    if item.is_virtual:
        raise ValueError(f"dataset {name!r} is a virtual dataset (its data would come from other files)")
    if item.external:
        raise ValueError(f"dataset {name!r} keeps its data in external files ({item.external[0][0]!r})")
    if item.id.get_create_plist().get_nfilters():
        raise ValueError(f"dataset {name!r} is filtered (compressed); a trace never is")
    declared = int(np.prod(item.shape, dtype=np.float64) * max(item.dtype.itemsize, 1)) if item.shape else 0
    if declared > file_size:
        raise ValueError(f"dataset {name!r} declares {declared:,} bytes in a file of {file_size:,}")


def _check_attrs(attrs, statuses: tuple) -> None:
    for name in _INTEGER_ATTRS:
        if name in attrs:
            _integer(f"attribute {name!r}", attrs[name])
    for name in _STRING_ATTRS:
        if name in attrs and not isinstance(attrs[name], (str, bytes)):
            raise ValueError(f"attribute {name!r} is not text")
    if "config" in attrs:
        try:
            config = json.loads(attrs["config"])
        except (TypeError, ValueError, RecursionError):
            raise ValueError("attribute 'config' is not JSON") from None
        if not isinstance(config, dict):
            raise ValueError(f"attribute 'config' is JSON {type(config).__name__}, not an object")
    status = attrs.get("status")
    if status is not None and (status.decode() if isinstance(status, bytes) else status) not in statuses:
        raise ValueError(f"attribute 'status' is {status!r}, not one of {', '.join(statuses)}")


def _check_columns(f: h5py.File, columns: tuple) -> None:
    rows = f.get("trace")
    if not isinstance(rows, h5py.Group):
        return  # no rows at all is reported by the reader, as an incomplete trace
    for name in columns:
        column = rows.get(name)
        if column is None:
            continue
        kinds = "iu" if name == "iteration" else "iuf"
        if not isinstance(column, h5py.Dataset) or column.ndim != 1 or column.dtype.kind not in kinds:
            raise ValueError(f"column {name!r} is not a 1-D array of " + ("integers" if kinds == "iu" else "numbers"))


def _check_timeline(timeline, dtype: np.dtype) -> None:
    fields = (timeline.dtype.fields or {}) if isinstance(timeline, h5py.Dataset) else {}
    if not isinstance(timeline, h5py.Dataset) or timeline.ndim != 1 or any(
            name not in fields or fields[name][0].kind not in "iuf" for name in dtype.names):
        raise ValueError(f"/timeline is not a 1-D array of records with the fields {', '.join(dtype.names)}")


def _check_graph(graph) -> None:
    if not isinstance(graph, h5py.Group):
        raise ValueError("/graph is not a group")
    datasets = {name: graph.get(name) for name in ("names", "op_types", "parents", "stage")}
    if any(not isinstance(d, h5py.Dataset) or d.ndim != 1 for d in datasets.values()):
        raise ValueError("/graph needs the 1-D datasets names, op_types, parents and stage")
    if len({len(d) for d in datasets.values()}) != 1:
        raise ValueError("/graph's datasets have different lengths")
    for name in ("names", "op_types"):
        if h5py.check_string_dtype(datasets[name].dtype) is None:
            raise ValueError(f"/graph/{name} is not text")
    parents = h5py.check_vlen_dtype(datasets["parents"].dtype)
    if parents is None or parents.kind not in "iu" or datasets["stage"].dtype.kind not in "iu":
        raise ValueError("/graph/parents and /graph/stage are not integers")
    n = len(datasets["names"])
    if any(len(p) and (p.min() < -1 or p.max() >= n) for p in datasets["parents"][()]):
        raise ValueError("/graph/parents names a node that does not exist")
    for name in ("dim", "depth"):
        _integer(f"/graph attribute {name!r}", graph.attrs.get(name))
    if not isinstance(graph.attrs.get("root"), (str, bytes)):
        raise ValueError("/graph attribute 'root' is not text")


def _check_arrays(f: h5py.File, group: str) -> None:
    if not isinstance(f[group], h5py.Group):
        raise ValueError(f"/{group} is not a group")
    for name, item in f[group].items():
        if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "iuf":
            raise ValueError(f"/{group}/{name} is not a numeric array")


def _integer(what: str, value) -> int:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} is {value!r}, not an integer")
    return int(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
