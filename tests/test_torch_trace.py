"""`from_torch` of any module torch.fx can trace (tests/resmlp.py, a held-out model with residual blocks): cut
into nodes at module boundaries, split points and node counts, the same values and gradients as the model run
by torch itself, the checks, one line for each mistake, and serial ≡ MPI bitwise with the machine's own thread
counts (`--threads`). Skipped, with the reason, where torch is not installed."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]')")

import pprs_mpi  # noqa: E402
from conftest import MPI_ENV, solve  # noqa: E402
from pprs_mpi import check_gradients  # noqa: E402
from pprs_mpi.threads import VARIABLES  # noqa: E402
from pprs_mpi.trace import load  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import resmlp  # noqa: E402

BUILDER = Path(__file__).resolve().parent / "resmlp.py"


def value_and_gradient(graph, theta):
    """f and ∇f at the rows of `theta` through the graph's nodes, forward then VJPs in reverse order."""
    values = {graph.root: theta}
    for name in graph.order:
        values[name] = graph.op(name).forward(np, *(values[p] for p in graph.parents(name)))
    cotangents = {graph.leaf: np.ones_like(values[graph.leaf])}
    for name in reversed(graph.order):
        parents = graph.parents(name)
        grads = graph.op(name).vjp(np, [values[p] for p in parents], values[name], cotangents[name])
        for parent, grad in zip(parents, grads):
            cotangents[parent] = cotangents.get(parent, 0) + grad
    return values[graph.leaf], cotangents[graph.root]


GROUPINGS = [{}, {"nodes": 3}, {"split": "blocks.1,norm"}, {"split": "blocks.1.fc2"}, {"nodes": 1}]


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_the_attack_gives_the_models_value_and_input_gradient(grouping):
    """θ = input: f and ∇f through the nodes equal torch's autograd through the whole model, in float64."""
    problem = resmlp.attack(**grouping)
    theta = np.random.default_rng(0).standard_normal((3, 2048))
    f, g = value_and_gradient(problem.graph, theta)
    model = resmlp.model().double()
    x = torch.from_numpy(theta).requires_grad_()
    out = model(x)
    expected = (1 - out[:, :1] + out).clamp(min=0).sum(1)
    np.testing.assert_allclose(f, expected.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(g, torch.autograd.grad(expected.sum(), x)[0].numpy(), rtol=1e-11, atol=1e-13)
    assert all(check.ok for check in check_gradients(problem))


@pytest.mark.parametrize("grouping", [{}, {"nodes": 2}, {"split": "norm,head"}, {"split": "blocks.2.fc2"},
                                      {"nodes": 1}])
def test_the_finetune_gives_the_models_value_and_weight_gradient(grouping):
    """θ = weights: per noisy copy, the loss of the model with that copy's weights, and its gradient."""
    problem = resmlp.finetune(**grouping)
    generator = torch.Generator().manual_seed(1)
    inputs, labels = torch.randn(6, 2048, generator=generator).double(), torch.randint(0, 5, (6,), generator=generator)
    names = ["blocks.2.fc2.weight", "blocks.2.fc2.bias", "head.weight", "head.bias"]
    model = resmlp.model().double()
    x0 = np.concatenate([dict(model.named_parameters())[n].detach().numpy().ravel() for n in names])
    assert np.array_equal(problem.x0, x0)
    theta = x0 + 0.1 * np.random.default_rng(0).standard_normal((2, x0.size))
    f, g = value_and_gradient(problem.graph, theta)
    for row in range(2):
        weights, start = {}, 0
        for n in names:
            shape = dict(model.named_parameters())[n].shape
            weights[n] = torch.from_numpy(theta[row, start:start + shape.numel()]).reshape(shape).requires_grad_()
            start += shape.numel()
        loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model, weights, (inputs,)), labels)
        np.testing.assert_allclose(f[row], loss.item(), rtol=1e-13)
        expected = torch.cat([grad.ravel() for grad in torch.autograd.grad(loss, list(weights.values()))])
        np.testing.assert_allclose(g[row], expected.numpy(), rtol=1e-10, atol=1e-13)
    assert all(check.ok for check in check_gradients(problem))


def test_parts_are_nodes_at_module_boundaries_and_the_skip_connection_an_edge():
    graph = resmlp.attack().graph
    assert graph.order == ("input", "embed_Projection", "blocks.0_Block", "blocks.1_Block", "blocks.2_Block",
                           "norm_LayerNorm", "head_Linear", "loss")
    assert graph.parents("blocks.2_Block") == ("blocks.1_Block", "embed_Projection")  # h + skip: an edge, not a copy
    assert resmlp.attack(split="blocks.1,norm").graph.order == ("input", "embed..blocks.0", "blocks.1..blocks.2",
                                                                "norm..head", "loss")
    counted = resmlp.attack(nodes=3).graph
    assert len(counted.order) == 3 + 2  # the input and the loss besides the 3 parts
    # θ = weights: what does not depend on the chosen weights (embed, blocks 0 and 1, the skip) is computed once
    assert resmlp.finetune().graph.order == ("blocks.2_Block", "norm_LayerNorm", "head_Linear", "loss")
    assert resmlp.finetune().graph.parents("head_Linear") == ("norm_LayerNorm", "theta")


def test_nodes_balances_the_parts_by_their_floating_point_operations():
    """nodes=2 over embed (98304 multiply-adds), three blocks (9216 each), norm (0) and the head (240): the
    embedding alone is the largest node."""
    assert resmlp.attack(nodes=2).graph.order[1:3] == ("embed_Projection", "blocks.0..head")


def test_the_users_model_is_untouched_and_the_hash_sees_the_weights():
    model = resmlp.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda out: out.sum()  # noqa: E731
    digests = pprs_mpi.from_torch(model, loss, input_shape=(2048,)).graph.fingerprints()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(name.startswith("_pprs") for name, _ in model.named_buffers())
    assert digests == pprs_mpi.from_torch(resmlp.model(), loss, input_shape=(2048,)).graph.fingerprints()
    with torch.no_grad():
        model.blocks[1].fc2.weight[0, 0] += 1e-6
    changed = pprs_mpi.from_torch(model, loss, input_shape=(2048,)).graph.fingerprints()
    assert [n for n in digests if digests[n] != changed[n]] == ["blocks.1_Block"]


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


class Pair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize("make, says", [
    (lambda: pprs_mpi.from_torch(Branchy(), torch.sum, input_shape=(4,)),
     "from_torch: torch.fx cannot trace Branchy: TraceError: symbolically traced variables cannot be used as inputs "
     "to control flow at test_torch_trace.py:"),
    (lambda: pprs_mpi.from_torch(resmlp.model(), torch.sum, input_shape=(2048,), split=["blocks.7"]),
     "from_torch: split point 'blocks.7' names no submodule of ResMLP (its submodules: embed, blocks, blocks.0"),
    (lambda: pprs_mpi.from_torch(resmlp.model(), torch.sum, params=["head.wieght"], inputs=np.zeros((2, 2048))),
     "from_torch: ResMLP has no parameter 'head.wieght' (it has: embed.weight, blocks.0.norm.weight"),
    (lambda: pprs_mpi.from_torch(Pair(), torch.sum, input_shape=(4,)),
     "from_torch: Pair.forward returns a tuple, not a tensor"),
    (lambda: pprs_mpi.from_torch(resmlp.model(), torch.sum, input_shape=(2048,), nodes=9),
     "from_torch: nodes=9, but ResMLP has 6 unit(s) to group"),
    (lambda: resmlp.finetune(split="blocks.1"),
     "from_torch: split point 'blocks.1' is not on θ's path through ResMLP"),
    (lambda: pprs_mpi.from_torch(resmlp.model(), torch.sum, input_shape=(2048,), nodes=2, split=["head"]),
     "from_torch: give split (where nodes start) or nodes (how many), not both"),
    (lambda: pprs_mpi.from_torch(resmlp.model(), torch.sum, input_shape=(2048,), nodes=0),
     "from_torch: nodes must be an integer >= 1, got 0"),
    (lambda: pprs_mpi.from_torch("resnet", torch.sum, input_shape=(2048,)),
     "from_torch takes an nn.Module (or a list of modules), got str"),
])
def test_each_mistake_is_one_line_naming_it(make, says):
    with pytest.raises((ValueError, TypeError)) as refused:
        make()
    assert str(refused.value).startswith(says) and "\n" not in str(refused.value), str(refused.value)


def test_a_list_of_modules_runs_in_sequence_one_node_each():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)]
    problem = pprs_mpi.from_torch(layers, lambda out: out.abs().sum(), input_shape=(4,))
    assert problem.graph.order == ("input", "0_Linear", "1_Tanh", "2_Linear", "loss")
    theta = np.random.default_rng(0).standard_normal((2, 4))
    f, _ = value_and_gradient(problem.graph, theta)
    with torch.no_grad():
        expected = torch.nn.Sequential(*layers).double()(torch.from_numpy(theta)).abs().sum(1)
    np.testing.assert_allclose(f, expected.numpy(), rtol=1e-14)


def test_the_untraceable_models_fallback_is_one_node(tmp_path):
    """The fallback the line names, nodes=1, runs the model as it is."""
    problem = pprs_mpi.from_torch(Branchy(), lambda out: out.abs().sum(), input_shape=(4,), nodes=1)
    assert problem.graph.order == ("input", "Branchy", "loss") and all(c.ok for c in check_gradients(problem))


def test_a_mistake_through_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = solve("--problem", f"{BUILDER}:attack", "--problem-arg", "split=blocks.9", "--out", tmp_path / "r.h5")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "split point 'blocks.9' names no submodule of ResMLP" in result.stderr


def unpinned(command, timeout=180):
    """`command` with the machine's own thread counts: none of OMP/OpenBLAS/MKL_NUM_THREADS is set."""
    env = {key: value for key, value in {**os.environ, **MPI_ENV}.items() if key not in VARIABLES}
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=env)


RUN_FLAGS = ["-K", "6", "--microbatch-size", "2", "--iters", "3", "--eval-every", "1", "--gamma", "0.05",
             "--lr", "0.01", "--seed", "5", "--quiet"]


@pytest.mark.mpi
@pytest.mark.parametrize("builder", ["attack", "finetune"])
def test_serial_and_three_ranks_are_bitwise_equal_with_the_machines_threads(builder, tmp_path):
    """θ = input and θ = weights, several nodes, no thread variable set: --stages 3 in one process and
    mpirun -n 3 give the same iterates bit for bit (every rank computes with --threads, default 1)."""
    reference = f"{BUILDER}:{builder}"
    serial = unpinned([sys.executable, "-m", "pprs_mpi.solve", "--problem", reference, "--stages", "3",
                       *RUN_FLAGS, "--out", tmp_path / "serial.h5"])
    assert serial.returncode == 0, serial.stderr
    parallel = unpinned(["mpirun", "-n", "3", sys.executable, "-m", "pprs_mpi.solve", "--problem", reference,
                         *RUN_FLAGS, "--out", tmp_path / "mpi.h5"])
    assert parallel.returncode == 0, parallel.stderr
    a, b = load(tmp_path / "serial.h5"), load(tmp_path / "mpi.h5")
    assert a.attrs["stages"] == 3 and b.attrs["ranks"] == 3 and a.config["threads"] == b.config["threads"] == 1
    assert not np.array_equal(a.result["y"], getattr(resmlp, builder)().x0)  # it moved
    for column in ("f_smoothed", "f_eval"):
        assert np.array_equal(a.columns[column], b.columns[column], equal_nan=True), column
    assert np.array_equal(a.result["y"], b.result["y"])


class Scaled(torch.nn.Module):
    """Constants of its own beside its units: a buffer, a number computed from it, a parameter read directly."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)
        self.register_buffer("scale", torch.tensor(2.0))
        self.shift = torch.nn.Parameter(torch.linspace(-1, 1, 3))

    def forward(self, x):
        copies = self.scale.dim() + 2  # a number that does not depend on θ
        h = self.a(x) * self.scale
        return (self.b(h) + self.shift).repeat(1, copies)


@pytest.mark.parametrize("use", ["input", "weights"])
def test_a_models_own_buffers_numbers_and_parameters_enter_the_nodes_that_use_them(use):
    torch.manual_seed(0)
    model, inputs = Scaled(), np.linspace(-1, 1, 12).reshape(3, 4)
    kwargs = {"input_shape": (4,)} if use == "input" else {"params": ["shift", "b.weight"], "inputs": inputs}
    problem = pprs_mpi.from_torch(model, lambda out: (out ** 2).sum(), **kwargs)
    theta = np.random.default_rng(0).standard_normal((2, problem.graph.dim))
    f, _ = value_and_gradient(problem.graph, theta)
    double = Scaled().double()
    double.load_state_dict(model.state_dict())
    for row in range(2):
        if use == "input":
            expected = (double(torch.from_numpy(theta[row:row + 1])) ** 2).sum()
        else:
            weights = {"shift": torch.from_numpy(theta[row, :3]),
                       "b.weight": torch.from_numpy(theta[row, 3:]).reshape(3, 6)}
            expected = (torch.func.functional_call(double, weights, (torch.from_numpy(inputs),)) ** 2).sum()
        np.testing.assert_allclose(f[row], expected.item(), rtol=1e-13)
    assert all(check.ok for check in check_gradients(problem))


def test_the_hash_sees_the_losss_code_and_the_tensors_it_closes_over():
    """Labels drawn without a seed give each rank other labels: the loss node's digest must differ."""
    def digest(labels, scale=1.0):
        loss = lambda out: scale * torch.nn.functional.cross_entropy(out[None], labels)  # noqa: E731
        return pprs_mpi.from_torch(resmlp.model(), loss, input_shape=(2048,)).graph.fingerprints()["loss"]

    assert digest(torch.tensor([1])) == digest(torch.tensor([1]))
    assert digest(torch.tensor([1])) != digest(torch.tensor([2]))


FLOPS_WITHOUT_DYNAMO = """
import sys
sys.path[:0] = [{tests!r}]
import resmlp, torch
from torch.utils import flop_counter
problem = resmlp.attack()
ours = {{name: problem.graph.op(name).macs for name in problem.graph.order}}
dispatch = flop_counter._FlopCounterMode.__dict__["__torch_dispatch__"].__wrapped__
print("torch._dynamo" in sys.modules, hasattr(dispatch, "__dynamo_disable"))
with flop_counter.FlopCounterMode(display=False) as counter:  # torch's own way, which imports torch._dynamo
    resmlp.model().double()(torch.ones(1, 2048, dtype=torch.float64))
print(sum(ours.values()) == counter.get_total_flops() // 2, "torch._dynamo" in sys.modules)
"""


def test_counting_a_models_flops_skips_torch_compiles_import_and_counts_as_torch_does():
    """from_torch counts each node's multiply-adds with torch's FlopCounterMode, without the import of
    torch._dynamo (a second per rank) that its first use makes, leaving torch as it found it: the nodes' counts
    add up to torch's own count of the whole model, which does import it."""
    tests = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", FLOPS_WITHOUT_DYNAMO.format(tests=tests)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **MPI_ENV})
    assert done.stdout.split() == ["False", "False", "True", "True"], done.stdout + done.stderr
