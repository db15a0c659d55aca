"""A user's own objective: --problem FILE.py:FUNCTION, pprs_mpi.minimize, the examples, the gradient
checker's command line, cross-rank graph hashes and --resume with repeated flags. Every launch has a timeout."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pprs_mpi
from conftest import mpirun, run, solve
from pprs_mpi.problems import registry
from pprs_mpi.solve import main
from pprs_mpi.trace import load

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DAG = f"{EXAMPLES / 'branching_dag.py'}:build"
FLAGS = ["--problem", DAG, "--problem-arg", "width=3", "--iters", "12", "-K", "6", "--microbatch-size", "2",
         "--gamma", "0.05", "--lr", "0.02", "--mu", "0.5", "--eval-every", "3", "--seed", "5", "--quiet"]


def same_iterates(a, b):
    for name in ("f_smoothed", "f_eval", "iteration"):
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name
    assert np.array_equal(a.result["y"], b.result["y"]) and np.array_equal(a.result["x"], b.result["x"])


def write(tmp_path, text, name="user.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.mpi
def test_a_user_dag_from_a_file_is_bitwise_equal_serially_and_on_3_and_4_ranks(tmp_trace):
    """θ feeds 3 branches, a custom 3-parent Concat op joins them: the same iterates on any layout."""
    serial = solve(*FLAGS, "--out", tmp_trace("serial.h5"))
    assert serial.returncode == 0, serial.stderr
    for ranks in (3, 4):
        result = mpirun(ranks, *FLAGS, "--out", tmp_trace(f"mpi{ranks}.h5"))
        assert result.returncode == 0, result.stderr
        trace = load(tmp_trace(f"mpi{ranks}.h5"))
        assert trace.attrs["ranks"] == ranks and trace.status == "completed"
        same_iterates(load(tmp_trace("serial.h5")), trace)
    graph = load(tmp_trace("serial.h5")).graph
    assert list(graph["op_types"]).count("Concat") == 1 and len(graph["names"]) == 5


@pytest.mark.mpi
def test_minimize_under_mpirun_gives_bitwise_the_command_lines_result(tmp_trace):
    script = EXAMPLES / "minimize_from_python.py"
    result = run(["mpirun", "-n", "2", sys.executable, str(script), tmp_trace("api.h5")], timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("completed: f(y_T) =") == 1  # rank 0 alone gets a result
    cli = solve("--problem", DAG, "--problem-arg", "width=4", "-K", "8", "--gamma", "0.01", "--lr", "0.02",
                "--mu", "0.9",
                "--iters", "60", "--seed", "1", "--quiet", "--out", tmp_trace("cli.h5"))
    assert cli.returncode == 0, cli.stderr
    api, command_line = load(tmp_trace("api.h5")), load(tmp_trace("cli.h5"))
    assert api.attrs["ranks"] == 2
    same_iterates(api, command_line)


def test_minimize_returns_the_result_and_raises_one_line_for_bad_options(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    from branching_dag import build
    result = pprs_mpi.minimize(build(width=3), K=4, iters=5, lr=0.05, out=str(tmp_path / "r.h5"), quiet=True)
    trace = load(tmp_path / "r.h5")
    assert result.status == "completed" and result.exit_code == 0 and result.trace == str(tmp_path / "r.h5")
    assert np.array_equal(result.y, trace.result["y"])
    assert np.array_equal(result.f_smoothed, trace.columns["f_smoothed"], equal_nan=True)
    assert result.f_final == trace.columns["f_eval"][-1]
    for options, message in (({"K": 0}, "K must be >= 1, got 0"),
                             ({"learning_rate": 1}, "unknown option 'learning_rate'"),
                             ({"lr": "fast"}, "lr must be a number, got 'fast'"),
                             ({"schedule": "zigzag"}, "unknown schedule 'zigzag'")):
        with pytest.raises(pprs_mpi.ConfigError, match=message):
            pprs_mpi.minimize(build(), out=str(tmp_path / "bad.h5"), **options)
    assert not (tmp_path / "bad.h5").exists()
    by_name = pprs_mpi.minimize("lad", depth=3, problem_args={"dim": 4}, iters=2, out=str(tmp_path / "lad.h5"),
                                quiet=True)
    assert by_name.status == "completed" and load(tmp_path / "lad.h5").config["problem_params"]["dim"] == 4


def test_problem_args_are_typed_from_the_builders_annotations_and_defaults(tmp_path, tmp_trace):
    user = write(tmp_path, """
        from pprs_mpi import Graph, Node, builder
        from pprs_mpi.ops import Scale, SquaredNorm

        @builder
        def build(dim: int, weight=1.0, label: str = "x", shifted: bool = False):
            assert isinstance(dim, int) and isinstance(weight, float) and isinstance(shifted, bool), (dim, weight)
            return Graph(dim, [Node("sq", SquaredNorm(), ("theta",)), Node("w", Scale(weight), ("sq",))])
        """)
    config = tmp_path / "run.toml"
    config.write_text(f'problem = "{user}:build"\niters = 3\nquiet = true\n[problem_args]\ndim = 3\nweight = 2\n')
    assert main(["--config", str(config), "--problem-arg", "shifted=true", "--out", tmp_trace()]) == 0
    assert load(tmp_trace()).config["problem_params"] == {"dim": 3, "weight": 2.0, "label": "x", "shifted": True}


MARKED = "from pprs_mpi import builder\n@builder\n"  # two lines before a builder's def


@pytest.mark.parametrize("source, argv, message", [
    (None, ["--problem", "missing.py:build"], "no such file"),
    ("def other():\n    pass\n", ["--problem", "{user}:build"], "defines no function 'build'"),
    ("def build():\n    pass\n", ["--problem", "{user}:build"], "'build' in {user} is not marked as a builder: "
     "decorate it with @pprs_mpi.builder or annotate it to return a Problem or a Graph (-> Problem)"),
    ("import numpy\nx = 1\nraise RuntimeError('broken on purpose')\n" + MARKED + "def build():\n    pass\n",
     ["--problem", "{user}:build"], "importing {user} failed: RuntimeError: broken on purpose (user.py, line 3)"),
    ("def build(:\n", ["--problem", "{user}:build"], "SyntaxError"),
    (MARKED + "def build():\n    return {'a': 1}\n", ["--problem", "{user}:build"],
     "error: problem '{user}:build': the builder returned dict, expected a pprs_mpi Problem or Graph\n"),
    (MARKED + "def build(n: int = 2):\n    raise ValueError('n too small')\n", ["--problem", "{user}:build"],
     "the builder raised ValueError: n too small (user.py, line 4)"),
    (MARKED + "def build(n: int = 2):\n    pass\n", ["--problem", "{user}:build", "--problem-arg", "m=3"],
     "has no argument 'm'"),
    (MARKED + "def build(n: int = 2):\n    pass\n", ["--problem", "{user}:build", "--problem-arg", "n=two"],
     "problem parameter 'n' must be int, got 'two'"),
    (MARKED + "def build(n: int):\n    pass\n", ["--problem", "{user}:build"], "needs --problem-arg n=VALUE"),
    (None, ["--problem", "no_such_module_xyz:build"], "no module named 'no_such_module_xyz'"),
    (None, ["--problem", "lad", "--problem-arg", "depth"], "--problem-arg must look like NAME=VALUE, got 'depth'"),
])
def test_builder_mistakes_are_one_line_and_exit_2(tmp_path, capsys, source, argv, message):
    user = write(tmp_path, source) if source else tmp_path / "user.py"
    argv = [a.replace("{user}", str(user)) for a in argv]
    assert main([*argv, "--iters", "2", "--out", str(tmp_path / "run.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pprs_mpi.solve: error: ")
    assert message.replace("{user}", str(user)) in err
    assert not (tmp_path / "run.h5").exists()


@pytest.mark.mpi
def test_ranks_that_build_different_graphs_are_refused_naming_the_node(tmp_path, tmp_trace):
    user = write(tmp_path, """
        import numpy as np
        from pprs_mpi import Graph, Node, builder
        from pprs_mpi.ops import Affine, L1Norm

        @builder
        def build():
            A = np.random.default_rng().standard_normal((4, 3))  # unseeded: each rank draws its own
            return Graph(3, [Node("fixed", Affine(np.eye(3)), ("theta",)), Node("random", Affine(A), ("fixed",)),
                             Node("l1", L1Norm(), ("random",))])
        """)
    result = mpirun(3, "--problem", f"{user}:build", "--iters", "2", "--out", tmp_trace(), timeout=60)
    assert result.returncode == 2
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("pprs_mpi.solve")]
    assert len(line) == 1 and "node 'random' differs on rank(s) 1 from rank 0 (2 ranks differ: 1, 2)" in line[0], (
        result.stderr)
    assert "seed" in line[0] and not Path(tmp_trace()).exists()


def test_resume_accepts_the_original_flags_and_refuses_a_changed_one_naming_both(tmp_trace, capsys):
    flags = [*FLAGS, "--iters", "6", "--checkpoint-every", "2", "--out", tmp_trace()]
    assert main(flags) == 0
    assert main([*flags[:-4], "--iters", "9", "--resume", tmp_trace(), "--out", tmp_trace()]) == 0  # Slurm-style
    trace = load(tmp_trace())
    assert trace.status == "completed" and trace.columns["iteration"][-1] == 9 and trace.attrs["resumes"] == 1
    capsys.readouterr()
    changed = [*FLAGS, "--problem-arg", "width=4", "--iters", "12", "--resume", tmp_trace()]
    assert main(changed) == 2
    assert "'width' cannot be changed (the run has 3, this command gives 4)" in capsys.readouterr().err
    assert main([*FLAGS, "--seed", "6", "--iters", "12", "--resume", tmp_trace()]) == 2
    assert "'seed' cannot be changed (the run has 5, this command gives 6)" in capsys.readouterr().err
    assert load(tmp_trace()).columns["iteration"][-1] == 9


def test_resume_refuses_a_builder_that_now_builds_another_graph(tmp_path, tmp_trace, capsys):
    user = write(tmp_path, """
        from pprs_mpi import Graph, Node, builder
        from pprs_mpi.ops import Scale, SquaredNorm

        @builder
        def build():
            return Graph(2, [Node("sq", SquaredNorm(), ("theta",)), Node("s", Scale(1.0), ("sq",))])
        """)
    assert main(["--problem", f"{user}:build", "--iters", "3", "--quiet", "--out", tmp_trace()]) == 0
    user.write_text(user.read_text().replace("Scale(1.0)", "Scale(2.0)"))
    capsys.readouterr()
    assert main(["--resume", tmp_trace(), "--iters", "5"]) == 2
    assert "differs from the one the run" in capsys.readouterr().err


def test_the_checker_exits_1_on_a_wrong_vjp_naming_the_node_and_0_on_the_examples():
    wrong = run([sys.executable, "-m", "pprs_mpi.check", f"{EXAMPLES / 'wrong_vjp.py'}:build"], timeout=60)
    assert wrong.returncode == 1
    assert "FAIL  abs" in wrong.stdout
    assert "node 'abs' (SignlessAbs): input 0: relative error" in wrong.stdout.splitlines()[-1]
    good = run([sys.executable, "-m", "pprs_mpi.check", DAG, "--problem-arg", "width=2"], timeout=60)
    assert good.returncode == 0 and good.stdout.splitlines()[-1].startswith("all 5 node(s) pass")
    bad = run([sys.executable, "-m", "pprs_mpi.check", "nowhere.py:build"], timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr


def test_the_checker_names_the_node_of_an_unseeded_builder(tmp_path, capsys):
    """Two builds that differ: serial runs of such a builder are silently not reproducible."""
    from pprs_mpi.cli.check import main as check
    user = write(tmp_path, """
        import numpy as np
        from pprs_mpi import Graph, Node
        from pprs_mpi.ops import Affine, L1Norm, ReLU

        def build(dim: int = 3) -> Graph:
            A = np.random.default_rng().standard_normal((4, dim))  # no seed
            return Graph(dim, [Node("relu", ReLU(), ("theta",)), Node("mix", Affine(A, np.zeros(4)), ("relu",)),
                               Node("l1", L1Norm(), ("mix",))])
    """)
    assert check([f"{user}:build"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "FAIL  the builder is not deterministic: two builds differ at node 'mix' (seed its random numbers: serial "
        "runs would not be reproducible, and the ranks of an MPI run would build different graphs)"]
    seeded = write(tmp_path, user.read_text().replace("default_rng()", "default_rng(0)"), "seeded.py")
    assert check([f"{seeded}:build"]) == 0


def test_the_checker_counts_every_node_of_the_graph(tmp_path, capsys):
    """A node whose op raises stops the values flowing: the nodes after it are counted as not checked."""
    from pprs_mpi.cli.check import main as check
    user = write(tmp_path, """
        from pprs_mpi import Graph, Op
        from pprs_mpi.ops import Abs, L1Norm, Scale

        class Broken(Op):
            def output_shape(self, shape):
                return shape
            def forward(self, xp, x):
                raise RuntimeError("no")
            def vjp(self, xp, inputs, output, cotangent):
                return [cotangent]

        def build() -> Graph:
            return Graph.chain(3, [Scale(2.0), Broken(), Abs(), Scale(1.0), L1Norm()])
    """)
    assert check([f"{user}:build"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "1 of 5 node(s) fail (3 not checked: their inputs come from a failing node); first: node ")


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_built_in_problem_passes_the_checker(name):
    problem = registry()[name]
    checks = pprs_mpi.check_gradients(problem.make(problem.arguments({})))
    assert checks and all(check.ok for check in checks), [c.describe() for c in checks if not c.ok]


def test_solve_check_gradients_refuses_a_wrong_vjp_before_touching_the_trace(tmp_trace, capsys):
    assert main(["--problem", f"{EXAMPLES / 'wrong_vjp.py'}:build", "--check-gradients", "--out", tmp_trace()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--check-gradients: node 'abs' (SignlessAbs)" in err
    assert not Path(tmp_trace()).exists()
    assert main(["--problem", DAG, "--check-gradients", "--iters", "2", "--quiet", "--out", tmp_trace()]) == 0


def test_a_run_of_a_python_object_resumes_through_minimize_only(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    from branching_dag import build
    out = str(tmp_path / "object.h5")
    whole = pprs_mpi.minimize(build(), iters=8, out=str(tmp_path / "whole.h5"), quiet=True)
    pprs_mpi.minimize(build(), iters=4, checkpoint_every=2, out=out, quiet=True)
    resumed = pprs_mpi.minimize(build(), iters=8, resume=out, quiet=True)
    assert resumed.status == "completed" and np.array_equal(resumed.y, whole.y)
    with pytest.raises(pprs_mpi.ConfigError, match="graph built now differs"):
        pprs_mpi.minimize(build(seed=3), iters=9, resume=out, quiet=True)
    assert main(["--resume", out, "--iters", "10"]) == 2
    assert "resume it with pprs_mpi.minimize(problem, resume=PATH)" in capsys.readouterr().err


def test_the_api_takes_numpy_scalars_and_refuses_text_for_numbers(tmp_trace):
    """What NumPy code computes (np.int64, np.float32) is a number; a string is not (only the command line's
    --problem-arg text is converted)."""
    small = dict(depth=3, dim=4, iters=2, quiet=True)
    result = pprs_mpi.minimize("lad", problem_args={"rows": np.int64(6)}, K=np.int64(4), lr=np.float32(0.5),
                               out=tmp_trace("numpy.h5"), **small)
    assert result.status == "completed" and load(tmp_trace("numpy.h5")).config["problem_params"]["rows"] == 6
    with pytest.raises(pprs_mpi.ConfigError, match=r"^problem parameter 'rows' must be int, got '6'$"):
        pprs_mpi.minimize("lad", problem_args={"rows": "6"}, out=tmp_trace("text.h5"), **small)
    assert main(["--problem", "lad", "--problem-arg", "rows=6", "--out", tmp_trace("cli.h5"), "--depth", "3",
                 "--dim", "4", "--iters", "2", "--quiet"]) == 0
