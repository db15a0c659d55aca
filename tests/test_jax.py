"""JAX functions as nodes (JaxOp): VJPs against finite differences, one forward per microbatch, the same run as
pprs_mpi's own ops to rounding, and serial ≡ MPI bitwise. Skipped, with the reason, where JAX is not installed."""

from pathlib import Path

import numpy as np
import pytest

jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed (pip install 'pprs_mpi[jax]')")

import pprs_mpi  # noqa: E402
from conftest import mpirun, solve_one_node  # noqa: E402
from pprs_mpi import Graph, GraphError, Node, check_gradients  # noqa: E402
from pprs_mpi.ops import Affine, JaxOp, L1Norm, ReLU  # noqa: E402
from pprs_mpi.problems import build  # noqa: E402
from pprs_mpi.trace import load  # noqa: E402

EXAMPLE = f"{Path(__file__).resolve().parent.parent / 'examples' / 'jax_chain.py'}:build"
RUN = dict(K=6, gamma=0.05, lr=0.01, mu=0.5, iters=4, eval_every=2, seed=3, quiet=True, microbatch_size=2)
A = np.random.default_rng(0).standard_normal((5, 4))
B = np.random.default_rng(1).standard_normal(5)


def test_jax_nodes_pass_the_gradient_check_in_both_dtypes():
    checks = check_gradients(build(EXAMPLE))
    assert len(checks) == 3 and all(c.ok and c.error < 1e-7 for c in checks), [c.describe() for c in checks]
    two = Graph(4, [Node("sin", JaxOp(jnp.sin), ("theta",)),
                    Node("dot", JaxOp(lambda a, b: (a * b).sum(1), arity=2, name="dot"), ("theta", "sin"))])
    assert all(c.ok for c in check_gradients(two))


def test_a_jax_graph_gives_the_runs_of_the_same_graph_in_pprs_mpis_ops(tmp_path):
    """Affine → ReLU → L1 written twice: JAX functions and the node library, the same iterates to rounding."""
    jax_graph = Graph(4, [Node("affine", JaxOp(lambda x: x @ A.T.astype(x.dtype) + B.astype(x.dtype)), ("theta",)),
                          Node("relu", JaxOp(lambda x: jnp.maximum(x, 0)), ("affine",)),
                          Node("l1", JaxOp(lambda x: jnp.abs(x).sum(1)), ("relu",))])
    own = Graph.chain(4, [Affine(A, B), ReLU(), L1Norm()])
    a = pprs_mpi.minimize(jax_graph, out=str(tmp_path / "jax.h5"), **RUN)
    b = pprs_mpi.minimize(own, out=str(tmp_path / "own.h5"), **RUN)
    np.testing.assert_allclose(a.f_smoothed, b.f_smoothed, rtol=1e-12)
    np.testing.assert_allclose(a.y, b.y, rtol=1e-12, atol=1e-14)
    assert not np.array_equal(a.y, np.zeros(4))


@pytest.mark.parametrize("stash", [True, False])
def test_a_gradient_pass_runs_each_forward_once_unless_recomputing(stash, tmp_path):
    calls = [0]

    def counted(x):
        calls[0] += 1
        return jnp.tanh(x)

    graph = Graph.chain(4, [JaxOp(counted, stash=stash, jit=False), L1Norm()])  # jitted, Python runs it to trace
    built = calls[0]
    result = pprs_mpi.minimize(graph, out=str(tmp_path / "run.h5"), **{**RUN, "eval_every": 0, "iters": 3})
    assert result.status == "completed"
    microbatches = 3 * (6 // 2)
    assert calls[0] - built - 1 == (microbatches if stash else 2 * microbatches)  # - 1: f(y_T)


def test_a_batch_mixing_function_is_one_line_naming_the_node():
    with pytest.raises(GraphError, match=r"^node 'centre': JaxOp\(centre\): not batch-separable"):
        Graph(4, [Node("centre", JaxOp(lambda x: x - x.mean(0), name="centre"), ("theta",)),
                  Node("l1", L1Norm(), ("centre",))])


@pytest.mark.mpi
def test_the_jax_example_is_bitwise_equal_serially_and_on_2_ranks(tmp_path):
    serial = pprs_mpi.minimize(EXAMPLE, out=str(tmp_path / "serial.h5"), **RUN)
    parallel = mpirun(2, "--problem", EXAMPLE, "-K", 6, "--gamma", 0.05, "--lr", 0.01, "--mu", 0.5, "--iters", 4,
                      "--eval-every", 2, "--seed", 3, "--microbatch-size", 2, "--quiet", "--out", tmp_path / "mpi.h5",
                      timeout=120)
    assert parallel.returncode == 0, parallel.stderr
    trace = load(tmp_path / "mpi.h5")
    assert trace.attrs["ranks"] == 2 and np.array_equal(trace.result["y"], serial.y)
    assert np.array_equal(trace.columns["f_smoothed"], serial.f_smoothed, equal_nan=True)


@pytest.mark.parametrize("function, code", [("x / (x - x)", 1), ("jnp.exp(1e4 * x)", 0)])
def test_a_nan_or_inf_at_the_build_time_probe_prints_no_warning(tmp_path, function, code):
    """Issue 32, bug 9, for JaxOp: no NumPy RuntimeWarning beside the diverged line, or a completed run."""
    result = solve_one_node(tmp_path, "import jax.numpy as jnp\nfrom pprs_mpi.ops import JaxOp",
                            f"JaxOp(lambda x: {function})")
    lines = ["pprs_mpi.solve: diverged"] if code else []  # exit 1 with its one line, or 0 and nothing
    assert result.returncode == code and [line[:24] for line in result.stderr.splitlines()] == lines, result.stderr


def test_a_jaxop_is_jitted_by_default_and_runs_its_python_only_to_trace(tmp_path):
    calls = [0]

    def counted(x):
        calls[0] += 1
        return jnp.tanh(x)

    graph = Graph.chain(4, [JaxOp(counted), L1Norm()])
    built = calls[0]
    result = pprs_mpi.minimize(graph, out=str(tmp_path / "run.h5"), **{**RUN, "eval_every": 0, "iters": 3})
    assert result.status == "completed" and calls[0] - built <= 2  # a trace per new batch shape, not per call
    plain = pprs_mpi.minimize(Graph.chain(4, [JaxOp(jnp.tanh, jit=False), L1Norm()]), out=str(tmp_path / "p.h5"),
                              **{**RUN, "eval_every": 0, "iters": 3})
    np.testing.assert_allclose(plain.y, result.y, rtol=1e-13, atol=1e-15)


def test_the_graph_hash_sees_a_jitted_functions_code_and_closure_constants():
    import jax

    def layer(W):
        return lambda x: x @ W.T.astype(x.dtype)

    def digest(fn):
        return Graph.chain(4, [JaxOp(fn), L1Norm()]).fingerprints()["layer0"]

    assert digest(jax.jit(layer(A))) == digest(jax.jit(layer(A.copy())))
    assert digest(jax.jit(layer(A))) != digest(jax.jit(layer(A + 1e-9)))  # the constant, through jit
    assert digest(jax.jit(jnp.sin)) != digest(jax.jit(jnp.cos))


def _fresh(code, tmp_path):
    """`code` in a new Python whose environment leaves JAX's float64 mode off (as a user's shell does)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parent.parent)


def test_a_constant_made_before_the_first_jaxop_is_float64_and_check_passes(tmp_path):
    """jnp.asarray in the builder, before its JaxOp: check builds the graph twice, the same both times (it
    blamed unseeded randomness when the first build's constant was float32, made before a JaxOp existed)."""
    builder = tmp_path / "early.py"
    builder.write_text("import jax.numpy as jnp\nimport numpy as np\nfrom pprs_mpi import Graph\n"
                       "from pprs_mpi.ops import JaxOp, L1Norm\n"
                       "def build() -> Graph:\n"
                       "    W = jnp.asarray(np.linspace(0.1, 1.2, 12).reshape(3, 4))\n"
                       "    return Graph.chain(4, [JaxOp(lambda x: x @ W.T.astype(x.dtype)), L1Norm()])\n")
    result = _fresh(f"import sys; from pprs_mpi.cli.check import main; sys.argv[1:] = ['{builder}:build']; "
                    "sys.exit(main())", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_float32_constant_from_jax_imported_first_is_named_in_one_line(tmp_path):
    result = _fresh("import jax.numpy as jnp\nimport pprs_mpi\nfrom pprs_mpi.ops import JaxOp\n"
                    "def build(W=jnp.ones(4)):\n    return JaxOp(lambda x: x * W, name='scale')\n"
                    "try:\n    build()\nexcept TypeError as err:\n    print(err)\n", tmp_path)
    assert result.stdout.strip().startswith("JaxOp(scale): 'W' is a float32 JAX array made before JAX's float64 mode "
                                            "was on"), result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1


def test_a_run_with_jax_nodes_says_that_threads_does_not_pin_them(tmp_path, capsys):
    from pprs_mpi.solve import main
    assert main(["--problem", EXAMPLE, "--iters", "1", "--out", str(tmp_path / "j.h5")]) == 0
    out = capsys.readouterr().out
    assert "1 intra-op thread(s)\nnote: 3 JAX node(s): XLA's CPU kernels follow the cores each process sees" in out
    assert main(["--problem", "lad", "--iters", "1", "--out", str(tmp_path / "l.h5")]) == 0
    assert "note:" not in capsys.readouterr().out
