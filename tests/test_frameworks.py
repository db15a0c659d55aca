"""PyTorch modules as nodes (TorchOp, from_torch): VJPs against finite differences, one forward per
microbatch, the contract's refusals, the shipped CNN in torch.nn equal to the NumPy graph, and serial ≡ MPI
bitwise. Skipped, with the reason, where torch is not installed. Every launch has a timeout."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]')")

import pprs_mpi  # noqa: E402
from conftest import mpirun, solve, solve_one_node  # noqa: E402
from pprs_mpi import Graph, GraphError, Node, check_gradients  # noqa: E402
from pprs_mpi.api import engine_for  # noqa: E402
from pprs_mpi.engines.stage import Sampling  # noqa: E402
from pprs_mpi.ops import L1Norm, TorchOp  # noqa: E402
from pprs_mpi.problems import build  # noqa: E402
from pprs_mpi.trace import load  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
try:  # the shipped digits CNN's examples need the digits data set
    import sklearn  # noqa: F401
    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed (the digits data set "
                                   "of the shipped CNN): pip install scikit-learn")
RUN = dict(K=6, gamma=0.05, lr=0.01, mu=0.5, iters=4, eval_every=2, seed=3, quiet=True, microbatch_size=2)


def mlp(width=6):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def chain(*ops, dim=6):
    return Graph(dim, [Node(f"n{i}", op, ("theta",) if i == 0 else (f"n{i - 1}",)) for i, op in enumerate(ops)])


def test_torch_nodes_pass_the_gradient_check_in_both_dtypes():
    graph = Graph(6, [Node("net", TorchOp(mlp()), ("theta",)), Node("act", TorchOp(torch.sin), ("net",)),
                      Node("dot", TorchOp(lambda a, b: (a * b).sum(1), arity=2, name="dot"), ("net", "act"))])
    checks = check_gradients(graph)
    assert [c.node for c in checks] == ["net", "act", "dot"]
    assert all(c.ok and c.error < 1e-7 for c in checks), [c.describe() for c in checks]


def test_the_vjp_is_torch_autograds_and_the_module_is_left_untouched():
    module = mlp()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    op = TorchOp(module)
    assert op.output_shape((6,)) == (3,)
    x = np.random.default_rng(1).standard_normal((4, 6))
    cot = np.random.default_rng(2).standard_normal((4, 3))
    out, residuals = op.forward_with_residuals(np, x)
    grad = op.vjp_with_residuals(np, residuals, out, cot)[0]
    reference = torch.from_numpy(x).requires_grad_()
    expected = torch.autograd.grad(module.double()(reference), reference, torch.from_numpy(cot))[0]
    np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-12)
    assert grad.dtype == np.float64 and out.dtype == np.float64
    for key, value in TorchOp(mlp()).fn.state_dict().items():  # the op computes on copies: a fresh mlp is float32
        assert value.dtype == torch.float32 and torch.equal(before[key], value), key


class Counting(torch.nn.Module):
    """A module that counts its forward calls and the rows they saw."""

    def __init__(self):
        super().__init__()
        self.calls = [0]

    def forward(self, x):
        self.calls[0] += 1
        return torch.tanh(x)


@pytest.mark.parametrize("stash", [True, False])
def test_a_gradient_pass_runs_each_forward_once_unless_recomputing(stash, tmp_path):
    counting = Counting()
    op = TorchOp(counting, stash=stash)
    graph = chain(op, L1Norm())
    counting_copy = op._working[(torch.float64, torch.device("cpu"))]  # the copy the op computes with
    calls_after_build = counting_copy.calls[0]
    options = {**RUN, "eval_every": 0, "iters": 3, "K": 6, "microbatch_size": 2}
    result = pprs_mpi.minimize(graph, out=str(tmp_path / "run.h5"), **options)
    assert result.status == "completed"
    microbatches = 3 * (6 // 2)
    forwards = counting_copy.calls[0] - calls_after_build - 1  # the last f(y_T) evaluation: one forward
    assert forwards == (microbatches if stash else 2 * microbatches)


def test_stashing_and_recomputing_give_bitwise_the_same_run(tmp_path):
    runs = []
    for stash in (True, False):
        graph = chain(TorchOp(mlp(), stash=stash), TorchOp(torch.abs, name="abs"), L1Norm())
        runs.append(pprs_mpi.minimize(graph, out=str(tmp_path / f"{stash}.h5"), **RUN))
    assert np.array_equal(runs[0].y, runs[1].y)
    assert np.array_equal(runs[0].f_smoothed, runs[1].f_smoothed, equal_nan=True)  # row 0: x0, before any sample


@pytest.mark.parametrize("module, says", [
    (lambda: torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)),
     "copy on cpu: 1.running_mean' (a BatchNorm"),
    (lambda: (lambda x: x - x.mean(0)), "not batch-separable"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Dropout(0.5)), "not batch-separable"),
])
def test_an_impure_or_batch_mixing_function_is_one_line_naming_the_node(module, says):
    with pytest.raises(GraphError) as refused:
        chain(TorchOp(module(), name="mine"), L1Norm())
    message = str(refused.value)
    assert message.startswith("node 'n0': TorchOp(mine): ") and says in message and "\n" not in message


def test_a_function_fixed_to_float32_is_named_by_node_in_both_engines(tmp_path):
    """A closure over a float32 tensor builds (it works in float32) and fails at once in a float64 run with
    the same line, serially and on 2 ranks; under --dtype float32 it runs."""
    builder = tmp_path / "fixed.py"
    builder.write_text("import torch\nfrom pprs_mpi import Graph, Node\nfrom pprs_mpi.ops import TorchOp, L1Norm\n"
                       "W = torch.ones(4, 3)\n"
                       "def build() -> Graph:\n"
                       "    return Graph(4, [Node('mine', TorchOp(lambda x: x @ W, name='matmul'), ('theta',)),\n"
                       "                     Node('l1', L1Norm(), ('mine',))])\n")
    line = "node 'mine' (TorchOp(matmul)), the evaluation pass f(y): forward raised RuntimeError"
    with pytest.raises(pprs_mpi.RunFailed, match=line.replace("(", r"\(").replace(")", r"\)")):
        pprs_mpi.minimize(f"{builder}:build", iters=2, quiet=True, out=str(tmp_path / "s.h5"))
    parallel = mpirun(2, "--problem", f"{builder}:build", "--iters", "2", "--quiet", "--out", tmp_path / "m.h5")
    assert parallel.returncode != 0 and line in parallel.stderr, parallel.stderr
    assert "write w.to(x) so that it follows the run's --dtype" in parallel.stderr
    assert load(tmp_path / "s.h5").status == "failed" and load(tmp_path / "m.h5").status == "failed"
    single = pprs_mpi.minimize(f"{builder}:build", iters=2, quiet=True, dtype="float32", out=str(tmp_path / "f.h5"))
    assert single.status == "completed"


@pytest.mark.parametrize("function, code", [("torch.log(x)", 1), ("torch.exp(1e4 * x)", 0)])
def test_a_nan_or_inf_at_the_build_time_probe_prints_no_warning(tmp_path, function, code):
    """Issue 32, bug 9: NumPy's RuntimeWarning from the probe used to be printed beside the diverged line
    (and, for a function infinite only at the probe's random rows, beside a run that completes)."""
    result = solve_one_node(tmp_path, "from pprs_mpi.ops import TorchOp\nimport torch",
                            f"TorchOp(lambda x: {function})")
    lines = ["pprs_mpi.solve: diverged"] if code else []  # exit 1 with its one line, or 0 and nothing
    assert result.returncode == code and [line[:24] for line in result.stderr.splitlines()] == lines, result.stderr


def test_without_torch_a_builder_using_it_is_one_line(tmp_path):
    hide = "import sys; sys.modules['torch'] = None; from pprs_mpi.solve import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", hide, "--problem", f"{EXAMPLES / 'torch_quickstart.py'}:build",
                             "--out", str(tmp_path / "r.h5")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "torch" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- the shipped digits CNN written with torch.nn, against the NumPy graph ------------------------------


@needs_sklearn
def test_the_torch_attack_matches_the_numpy_graph_to_rounding(tmp_path):
    """Same f, sample values (the gradient estimates' losses) and iterates as the built-in adversarial problem."""
    mine, builtin = build(f"{EXAMPLES / 'torch_attack.py'}:build"), build("adversarial")
    assert np.array_equal(mine.x0, builtin.x0)
    options = {**RUN, "gamma": 0.02, "lr": 1e-3}
    a = pprs_mpi.minimize(mine, out=str(tmp_path / "torch.h5"), **options)
    b = pprs_mpi.minimize(builtin, out=str(tmp_path / "numpy.h5"), **options)
    np.testing.assert_allclose(a.f_smoothed, b.f_smoothed, rtol=1e-12)
    np.testing.assert_allclose(a.f_eval, b.f_eval, rtol=1e-12)
    np.testing.assert_allclose(a.y, b.y, rtol=1e-12, atol=1e-12)
    assert not np.array_equal(a.y, mine.x0)  # it moved
    sampling = Sampling(K=8, gamma=0.02, seed=4, microbatch_size=4)
    for t in (0, 5):  # the gradient estimates G_t and their K sample values, at the start and elsewhere
        G_mine, values_mine = engine_for(mine.graph, [tuple(mine.graph.order)], sampling).gradient(mine.x0, t)
        G_own, values_own = engine_for(builtin.graph, [tuple(builtin.graph.order)], sampling).gradient(mine.x0, t)
        np.testing.assert_allclose(G_mine, G_own, rtol=1e-10, atol=1e-12 * np.abs(G_own).max())
        np.testing.assert_allclose(values_mine, values_own, rtol=1e-12)


@needs_sklearn
def test_the_torch_finetune_matches_the_numpy_fewshot_graph_to_rounding(tmp_path):
    """θ = weights: vmap over copies of functional_call gives the NumPy ParamAffine graph's values and iterates."""
    mine, builtin = build(f"{EXAMPLES / 'torch_finetune.py'}:build"), build("fewshot")
    assert np.array_equal(mine.x0, builtin.x0)
    a = pprs_mpi.minimize(mine, out=str(tmp_path / "torch.h5"), **RUN)
    b = pprs_mpi.minimize(builtin, out=str(tmp_path / "numpy.h5"), **RUN)
    np.testing.assert_allclose(a.f_smoothed, b.f_smoothed, rtol=1e-12)
    np.testing.assert_allclose(a.y, b.y, rtol=1e-11, atol=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("example, ranks", [pytest.param("torch_attack.py", 3, marks=needs_sklearn),
                                            ("torch_quickstart.py", 2)])
def test_torch_examples_are_bitwise_equal_serially_and_under_mpirun(example, ranks, tmp_path):
    """The serial run in this process, the MPI run under mpirun: the same iterates, bit for bit."""
    options = {"K": 6, "microbatch_size": 2, "iters": 3, "eval_every": 1, "gamma": 0.02, "lr": 0.001}
    pprs_mpi.minimize(f"{EXAMPLES / example}:build", quiet=True, out=str(tmp_path / "serial.h5"), **options)
    flags = [f"--{key.replace('_', '-')}" if len(key) > 1 else f"-{key}" for key in options]
    parallel = mpirun(ranks, "--problem", f"{EXAMPLES / example}:build", "--quiet", "--out", tmp_path / "mpi.h5",
                      *[item for flag, value in zip(flags, options.values()) for item in (flag, value)], timeout=120)
    assert parallel.returncode == 0, parallel.stderr
    a, b = load(tmp_path / "serial.h5"), load(tmp_path / "mpi.h5")
    assert b.attrs["ranks"] == ranks and b.attrs["engine"] == "mpi"
    for column in ("f_smoothed", "f_eval"):
        assert np.array_equal(a.columns[column], b.columns[column], equal_nan=True), column
    assert np.array_equal(a.result["y"], b.result["y"])


def test_the_graph_hash_sees_a_torch_modules_layers_and_weights():
    """Ranks compare graphs by hash: another activation or another weight is another graph."""
    def digest(model):
        return chain(TorchOp(model), L1Norm()).fingerprints()["n0"]

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh())
    torch.manual_seed(0)
    same = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh())
    torch.manual_seed(0)
    other_layer = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU())
    other_weight = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh())
    assert digest(base) == digest(same)
    assert digest(base) != digest(other_layer) and digest(base) != digest(other_weight)


def test_check_gradients_checks_the_runs_dtype_only(tmp_path):
    """A node that computes in float64 only (a float64 tensor in a closure): a float64 run with
    --check-gradients runs; a float32 run is refused naming float32, as check --dtype both is."""
    W = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
    graph = Graph(4, [Node("mine", TorchOp(lambda x: x @ W.T, name="matmul"), ("theta",)),
                      Node("l1", L1Norm(), ("mine",))])
    run = pprs_mpi.minimize(graph, check_gradients=True, iters=2, quiet=True, out=str(tmp_path / "a.h5"))
    assert run.status == "completed"
    with pytest.raises(pprs_mpi.ConfigError, match=r"--check-gradients: node 'mine' \(TorchOp\(matmul\)\): "):
        pprs_mpi.minimize(graph, check_gradients=True, dtype="float32", iters=2, quiet=True,
                          out=str(tmp_path / "b.h5"))
    assert all(c.ok for c in check_gradients(graph, float32=False))
    assert not check_gradients(graph)[0].ok


def test_without_scikit_learn_the_digits_tests_skip_with_the_reason():
    hide = ("import sys; sys.modules['sklearn'] = None; import pytest; sys.exit(pytest.main(['-q', '-rs', '-p', "
            "'no:cacheprovider', '-k', 'matches_the_numpy', '" + __file__ + "']))")
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent)
    assert result.returncode == 0 and "2 skipped" in result.stdout, result.stdout[-2000:]
    assert "scikit-learn is not installed" in result.stdout


def test_a_multi_margin_loss_runs_without_torchs_vmap_warning(tmp_path):
    """multi_margin_loss has no batching rule: vmap loops over the copies, and torch said so on every rank."""
    builder = tmp_path / "margin.py"
    builder.write_text("import torch\nimport pprs_mpi\nfrom pprs_mpi import Problem\n"
                       "def build() -> Problem:\n"
                       "    torch.manual_seed(0)\n"
                       "    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())\n"
                       "    target = torch.tensor([1])\n"
                       "    loss = lambda out: torch.nn.functional.multi_margin_loss(out[None], target)\n"
                       "    return pprs_mpi.from_torch(model, loss, input_shape=(4,))\n")
    result = solve("--problem", f"{builder}:build", "--iters", "2", "--quiet", "--out", tmp_path / "r.h5")
    assert result.returncode == 0 and result.stderr == "", result.stderr
