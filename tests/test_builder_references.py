"""Which functions a problem reference may call (issue 25): a reference from a command line, a TOML
file or a trace being resumed must name a builder, never a library function such as os.system or
shutil.rmtree with arguments someone else chose. Each refusal is one line, exit 2, before any call."""

import json
import os
import shutil
import textwrap

import pytest

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
                     str(tmp_path / "a.h5")], "must be annotated to return a Problem or a Graph")
    config = tmp_path / "run.toml"
    config.write_text(f'problem = "shutil:rmtree"\n[problem_args]\npath = "{victim}"\n')
    refused(capsys, ["--config", str(config), "--out", str(tmp_path / "b.h5")], "is not a builder")
    refused(capsys, ["--problem", f"{shutil.__file__}:rmtree", "--problem-arg", f"path={victim}", "--out",
                     str(tmp_path / "c.h5")], "belongs to the Python installation")
    imported = tmp_path / "imports.py"
    imported.write_text("from shutil import rmtree\n")
    refused(capsys, ["--problem", f"{imported}:rmtree", "--problem-arg", f"path={victim}", "--out",
                     str(tmp_path / "d.h5")], "not defined in")
    assert not marker.exists() and (victim / "data.txt").read_text() == "keep me"


def test_a_crafted_trace_cannot_make_resume_call_a_library_function(tmp_path, capsys, victim):
    path = tmp_path / "run.h5"
    assert main([*SMALL, "--iters", "2", "--checkpoint-every", "1", "--out", str(path)]) == 0
    with T.edited(path) as f:
        config = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps({**config, "problem": "shutil:rmtree", "problem_params": {"path": str(victim)}})
    refused(capsys, ["--resume", str(path), "--iters", "4"], "is not a builder")
    assert (victim / "data.txt").read_text() == "keep me"


def test_builders_defined_in_their_file_or_annotated_keep_working(tmp_path, capsys, monkeypatch):
    user = tmp_path / "mine.py"
    user.write_text(textwrap.dedent("""
        from pprs_mpi import Graph, Node
        from pprs_mpi.ops import Scale, SquaredNorm

        def plain():  # no annotation: defined here, so a builder
            return Graph(2, [Node("sq", SquaredNorm(), ("theta",)), Node("s", Scale(1.0), ("sq",))])

        def annotated() -> "Graph":
            return plain()
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for reference in (f"{user}:plain", f"{user}:annotated", "mine:annotated"):
        assert main(["--problem", reference, "--iters", "2", "--quiet", "--out", str(tmp_path / "ok.h5"),
                     "--overwrite"]) == 0, capsys.readouterr().err
    refused(capsys, ["--problem", "mine:plain", "--out", str(tmp_path / "no.h5")], "must be annotated")
    assert os.path.exists(tmp_path / "ok.h5")
