"""Which functions a problem reference may call (issues 25 and 32): a reference from a command line, a TOML
file, a trace being resumed or the API must name a function marked as a builder (@pprs_mpi.builder, or
annotated -> Problem / -> Graph), never a library function such as os.system, shutil.rmtree, pip's rmtree
or this package's own helpers, with arguments someone else chose. Each refusal is one line, exit 2, before
any call, and an unmarked file is not even imported."""

import json
import os
import shutil
import sys
import textwrap

import pytest

import pprs_mpi
from conftest import run
from pprs_mpi import trace as T
from pprs_mpi.solve import main

SMALL = ["--problem", "lad", "--depth", "3", "--dim", "4", "--rows", "6", "--quiet"]


@pytest.fixture
def victim(tmp_path):
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "data.txt").write_text("keep me")
    return folder


def refused(capsys, argv, words):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_a_library_function_named_on_the_command_line_or_in_a_config_is_never_called(tmp_path, capsys, victim):
    marker = tmp_path / "marker"
    refused(capsys, ["--problem", "os:system", "--problem-arg", f"command=touch {marker}", "--out",
                     str(tmp_path / "a.h5")], "problem 'os:system': os ")  # a frozen module, or no def there
    config = tmp_path / "run.toml"
    config.write_text(f'problem = "shutil:rmtree"\n[problem_args]\npath = "{victim}"\n')
    refused(capsys, ["--config", str(config), "--out", str(tmp_path / "b.h5")],
            "'rmtree' in shutil is not marked as a builder: decorate it with @pprs_mpi.builder or annotate it")
    refused(capsys, ["--problem", f"{shutil.__file__}:rmtree", "--problem-arg", f"path={victim}", "--out",
                     str(tmp_path / "c.h5")], "is not marked as a builder")
    imported = tmp_path / "imports.py"
    imported.write_text("from shutil import rmtree\n")
    refused(capsys, ["--problem", f"{imported}:rmtree", "--problem-arg", f"path={victim}", "--out",
                     str(tmp_path / "d.h5")], "defines no function 'rmtree' (a builder is a def")
    assert not marker.exists() and (victim / "data.txt").read_text() == "keep me"


def test_a_crafted_trace_cannot_make_resume_call_a_library_function(tmp_path, capsys, victim):
    path = tmp_path / "run.h5"
    assert main([*SMALL, "--iters", "2", "--checkpoint-every", "1", "--out", str(path)]) == 0
    with T.edited(path) as f:
        config = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps({**config, "problem": "shutil:rmtree", "problem_params": {"path": str(victim)}})
    refused(capsys, ["--resume", str(path), "--iters", "4"], "is not marked as a builder")
    assert (victim / "data.txt").read_text() == "keep me"


def test_marked_builders_keep_working_and_unmarked_ones_are_named_with_how_to_mark_them(tmp_path, capsys,
                                                                                        monkeypatch):
    user = tmp_path / "mine.py"
    user.write_text(textwrap.dedent("""
        from __future__ import annotations

        import typing

        import pprs_mpi
        from pprs_mpi import Graph, Node, builder
        from pprs_mpi.ops import Scale, SquaredNorm

        if typing.TYPE_CHECKING:
            from pprs_mpi import Problem

        def plain():
            return Graph(2, [Node("sq", SquaredNorm(), ("theta",)), Node("s", Scale(1.0), ("sq",))])

        @builder
        def decorated():
            return plain()

        @pprs_mpi.builder
        def qualified(scale: float = 1.0):
            return plain()

        def annotated() -> "Graph":
            return plain()

        def optional(rows: Missing = 1) -> Graph | None:  # an argument annotation that does not resolve
            return plain()

        class other:
            Graph = dict

        def other_graph() -> other.Graph:  # names a Graph, but not pprs_mpi's
            return plain()

        def unresolved() -> Problem:  # Problem is only imported for type checkers: not a mark
            return plain()
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for reference in (f"{user}:decorated", f"{user}:qualified", f"{user}:annotated", f"{user}:optional",
                      "mine:annotated", "mine:decorated"):
        assert main(["--problem", reference, "--iters", "2", "--quiet", "--out", str(tmp_path / "ok.h5"),
                     "--overwrite"]) == 0, (reference, capsys.readouterr().err)
    for reference in (f"{user}:plain", "mine:plain", f"{user}:other_graph", f"{user}:unresolved"):
        refused(capsys, ["--problem", reference, "--out", str(tmp_path / "no.h5")],
                "is not marked as a builder: decorate it with @pprs_mpi.builder or annotate it to return a "
                "Problem or a Graph (-> Problem)")
    assert os.path.exists(tmp_path / "ok.h5") and not os.path.exists(tmp_path / "no.h5")


def test_a_file_whose_function_is_not_marked_is_never_imported(tmp_path, capsys, victim):
    """A user's cleanup script named by a crafted trace or config: its code runs at import, so it is refused
    from its source alone."""
    script = tmp_path / "cleanup.py"
    script.write_text(f"import shutil\nshutil.rmtree({str(victim)!r})\n\ndef main():\n    pass\n")
    refused(capsys, ["--problem", f"{script}:main", "--out", str(tmp_path / "a.h5")], "is not marked as a builder")
    refused(capsys, ["--problem", f"{script}:other", "--out", str(tmp_path / "a.h5")], "defines no function 'other'")
    with pytest.raises(pprs_mpi.ConfigError, match="is not marked as a builder"):  # the API's string form
        pprs_mpi.minimize(f"{script}:main", out=str(tmp_path / "b.h5"))
    checked = run([sys.executable, "-m", "pprs_mpi.check", f"{script}:main"], timeout=60)
    assert checked.returncode == 2 and checked.stderr.count("\n") == 1 and "is not marked" in checked.stderr
    assert (victim / "data.txt").read_text() == "keep me"


def test_a_crafted_trace_cannot_reach_pips_rmtree_outside_the_installation(tmp_path, capsys, victim):
    """Issue 32, bug 1: the trace names the rmtree of a copy of pip outside the Python installation's paths
    (the system Python's own pip), a function defined in the file it is named in."""
    from pip._internal.utils import misc
    elsewhere = tmp_path / "system_pip" / "misc.py"
    elsewhere.parent.mkdir()
    shutil.copy(misc.__file__, elsewhere)
    path = tmp_path / "run.h5"
    assert main([*SMALL, "--iters", "2", "--checkpoint-every", "1", "--out", str(path)]) == 0
    with T.edited(path) as f:
        config = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps({**config, "problem": f"{elsewhere}:rmtree",
                                        "problem_params": {"dir": str(victim), "ignore_errors": True,
                                                           "onexc": ""}})
    before = path.read_bytes()
    refused(capsys, ["--resume", str(path), "--iters", "4"], "is not marked as a builder: decorate it with "
                                                             "@pprs_mpi.builder")
    assert (victim / "data.txt").read_text() == "keep me" and path.read_bytes() == before


def test_a_crafted_toml_cannot_reach_the_packages_own_helpers(tmp_path, capsys, victim):
    """Issue 32, bug 2: with the editable install, pprs_mpi/trace.py is outside the installation's paths and
    defines _remove, which unlinks its argument."""
    config = tmp_path / "run.toml"
    config.write_text(f'problem = "{T.__file__}:_remove"\n[problem_args]\npath = "{victim / "data.txt"}"\n')
    refused(capsys, ["--config", str(config), "--out", str(tmp_path / "a.h5")], "is not marked as a builder")
    assert (victim / "data.txt").read_text() == "keep me" and not (tmp_path / "a.h5").exists()
