"""Traces whose checksum is valid but whose contents are crafted (issue 25): each is one TraceError line
for every reader and for --resume, never a traceback, an allocation of the size a dataset declares, or a
read of another file; and a refused resume leaves the trace byte for byte as it was."""

import shutil

import h5py
import numpy as np
import pytest

from pprs_mpi import trace as T
from pprs_mpi.cli.report import main as report_main
from pprs_mpi.solve import main

SMALL = ["--problem", "lad", "--depth", "3", "--dim", "4", "--rows", "6", "--quiet"]


def _replace(f, name, **dataset):
    del f[name]
    f.create_dataset(name, **dataset)


CRAFTS = {
    "format_version text": lambda f: f.attrs.__setitem__("format_version", "abc"),
    "config a list": lambda f: f.attrs.__setitem__("config", "[]"),
    "status unknown": lambda f: f.attrs.__setitem__("status", "done?"),
    "iteration as text": lambda f: _replace(f, "trace/iteration", data=np.array([b"0"] * len(f["trace/iteration"]))),
    "timeline of floats": lambda f: _replace(f, "timeline", data=np.zeros(4)),
    "10^12 rows": lambda f: _replace(f, "trace/f_eval", shape=(10 ** 12,), dtype="f8", chunks=(1024,)),
    "checkpoint iteration text": lambda f: f["checkpoint"].attrs.__setitem__("iteration", "abc"),
    "graph parents out of range": lambda f: f["graph/parents"].__setitem__(0, np.array([99], dtype=np.int32)),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.h5"
    assert main([*SMALL, "--iters", "4", "--checkpoint-every", "2", "--out", str(path)]) == 0
    return path


def crafted(base, tmp_path, craft):
    path = tmp_path / "crafted.h5"
    shutil.copy(base, path)
    with T.edited(path) as f:  # a valid checksum over crafted contents
        craft(f)
    return path


@pytest.mark.parametrize("name", sorted(CRAFTS))
def test_a_crafted_trace_is_one_trace_error_and_a_refused_resume_changes_nothing(base, tmp_path, capsys, name):
    path = crafted(base, tmp_path, CRAFTS[name])
    for reader in (T.load, T.read_checkpoint):
        with pytest.raises(T.TraceError, match="malformed pprs_mpi trace") as caught:
            reader(path)
        assert "\n" not in str(caught.value)
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(path), "--iters", "6"]) == 2
    assert report_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err, err
    assert path.read_bytes() == before


def test_external_storage_in_a_trace_is_refused_and_never_copied(base, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-BYTES" * 4)

    def external(f):
        del f["result/y"]
        f.create_dataset("result/y", shape=(8,), dtype="f8", external=[(str(secret), 0, 64)])
    path = crafted(base, tmp_path, external)
    with pytest.raises(T.TraceError, match="external files"):
        T.load(path)
    before = path.read_bytes()
    assert main(["--resume", str(path), "--iters", "6"]) == 2
    assert "external files" in capsys.readouterr().err
    assert path.read_bytes() == before and b"TOP-SECRET" not in before


def test_a_virtual_dataset_in_a_trace_is_refused(base, tmp_path):
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as s:
        s["data"] = np.arange(4.0)

    def virtual(f):
        layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(source), "data", shape=(4,))
        del f["result/y"]
        f.create_virtual_dataset("result/y", layout)
    with pytest.raises(T.TraceError, match="virtual dataset"):
        T.load(crafted(base, tmp_path, virtual))


def _link(where, link):
    def craft(f):
        if where in f:
            del f[where]
        f[where] = link
    return craft


LINKS = {  # issue 32, bug 7: an external /checkpoint was a traceback in report and a raw KeyError line from --resume
    "/checkpoint external": ("checkpoint", lambda other: h5py.ExternalLink(str(other), "/checkpoint")),
    "/trace external": ("trace", lambda other: h5py.ExternalLink(str(other), "/trace")),
    "/result/y external": ("result/y", lambda other: h5py.ExternalLink(str(other), "/result/y")),
    "/graph/extra external, missing file": ("graph/extra", lambda other: h5py.ExternalLink("/no/such.h5", "/x")),
    "/checkpoint soft": ("checkpoint", lambda other: h5py.SoftLink("/result")),
    "/timeline soft, dangling": ("timeline", lambda other: h5py.SoftLink("/nowhere")),
}


@pytest.mark.parametrize("name", sorted(LINKS))
def test_a_link_in_any_group_of_a_trace_is_one_line_for_every_reader_and_changes_nothing(base, tmp_path, capsys,
                                                                                           name):
    where, link = LINKS[name]
    other = tmp_path / "other.h5"
    shutil.copy(base, other)  # a real trace: what an external link reaches would parse
    path = crafted(base, tmp_path, _link(where, link(other)))
    for reader in (T.load, T.read_checkpoint):
        with pytest.raises(T.TraceError, match=f"malformed pprs_mpi trace \\(/{where} is a") as caught:
            reader(path)
        assert "\n" not in str(caught.value) and "a trace holds no links" in str(caught.value)
    before, other_before = path.read_bytes(), other.read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(path), "--iters", "6"]) == 2
    assert report_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count("a trace holds no links") == 2 and "Traceback" not in err, err
    assert path.read_bytes() == before and other.read_bytes() == other_before
