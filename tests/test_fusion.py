"""Consecutive framework nodes of one stage run as one call (engines/fusion.py): bitwise the gradients of the
same nodes run one by one, one pull-back per microbatch instead of one per node, and NumPy ops between them
splitting the runs. Skipped, with the reason, where torch (or JAX) is not installed."""

import numpy as np
import pytest

from pprs_mpi import Graph, Node
from pprs_mpi.api import engine_for
from pprs_mpi.engines.fusion import fused_runs
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.ops import Affine, ReLU

SAMPLING = Sampling(K=6, gamma=0.1, seed=4, microbatch_size=3)


def chain(ops, dim):
    return Graph(dim, [Node(f"n{i}", op, ("theta",) if i == 0 else (f"n{i - 1}",)) for i, op in enumerate(ops)])


def gradients(graph, stages, t=2):
    engine = engine_for(graph, stages, SAMPLING)
    x = np.linspace(-1.0, 1.0, graph.dim)
    return engine.gradient(x, t)


def counted(op_class, monkeypatch):
    calls = []
    original = op_class._pull_back

    def pull_back(self, tape, cotangent):
        calls.append(self.name)
        return original(self, tape, cotangent)

    monkeypatch.setattr(op_class, "_pull_back", pull_back)
    return calls


def torch_chain(with_numpy_between: bool = False):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]')")
    from pprs_mpi.ops import TorchOp
    torch.manual_seed(0)
    ops = [TorchOp(torch.nn.Linear(5, 7).double()), TorchOp(torch.tanh), TorchOp(torch.nn.Linear(7, 4).double())]
    if with_numpy_between:
        ops.append(ReLU())
    ops += [TorchOp(torch.sin), TorchOp(lambda a: (a * a).sum(1), name="loss")]
    return chain(ops, 5), TorchOp


def test_a_stage_of_torch_nodes_is_one_pull_back_per_microbatch_and_bitwise_the_same(monkeypatch):
    graph, op_class = torch_chain()
    calls = counted(op_class, monkeypatch)
    one_by_one = gradients(graph, [(n,) for n in graph.order])  # a node per stage: nothing to fuse
    assert len(calls) == len(graph.order) * SAMPLING.n_microbatches
    calls.clear()
    fused = gradients(graph, [tuple(graph.order)])
    assert len(calls) == SAMPLING.n_microbatches
    assert np.array_equal(fused[0], one_by_one[0]) and np.array_equal(fused[1], one_by_one[1])


def test_numpy_ops_between_framework_nodes_split_the_runs(monkeypatch):
    graph, op_class = torch_chain(with_numpy_between=True)
    assert fused_runs([graph.op(n) for n in graph.order]) == ((0, 3), (4, 6))
    calls = counted(op_class, monkeypatch)
    fused = gradients(graph, [tuple(graph.order)])
    assert len(calls) == 2 * SAMPLING.n_microbatches
    one_by_one = gradients(graph, [(n,) for n in graph.order])
    assert np.array_equal(fused[0], one_by_one[0]) and np.array_equal(fused[1], one_by_one[1])


def residual(framework: str):
    """θ -> n0 -> n1 -> n2 -> join(n2, skip from n0) -> n4 -> loss, every node the framework's: n0's output feeds
    two children, so its backward segment ends there, and the join takes two inputs."""
    if framework == "torch":
        torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]')")
        from pprs_mpi.ops import TorchOp as Op
        torch.manual_seed(0)
        lin, sin, tanh = (lambda i, o: torch.nn.Linear(i, o).double()), torch.sin, torch.tanh
    else:
        jax = pytest.importorskip("jax", reason="JAX is not installed (pip install 'pprs_mpi[jax]')")
        from pprs_mpi.ops import JaxOp as Op
        jnp = jax.numpy
        rng = np.random.default_rng(0)

        def lin(i, o):
            W, b = rng.standard_normal((o, i)) / i, rng.standard_normal(o)
            return lambda a: a @ W.T + b
        sin, tanh = jnp.sin, jnp.tanh
    nodes = [Node("n0", Op(lin(5, 6), name="n0"), ("theta",)), Node("n1", Op(tanh, name="n1"), ("n0",)),
             Node("n2", Op(lin(6, 6), name="n2"), ("n1",)),
             Node("join", Op(lambda a, b: a + sin(b), arity=2, name="join"), ("n2", "n0")),
             Node("n4", Op(lin(6, 3), name="n4"), ("join",)), Node("loss", Op(lambda a: (a * a).sum(1), name="loss"),
                                                                  ("n4",))]
    return Graph(5, nodes), Op


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_skip_connection_fuses_what_each_backward_segment_mirrors_bitwise_the_same(framework, monkeypatch):
    """One stage of a residual model: the join (two inputs) runs with its chain to the loss as one tape, and
    n1 -> n2 as another, although the forward runs n0 -> n1 -> n2 in one segment: n0's cotangent is the sum of
    two children's, which the engine adds before n0's own pull-back. Three pull-backs per microbatch, not six."""
    graph, op_class = residual(framework)
    calls = counted(op_class, monkeypatch)
    one_by_one = gradients(graph, [(n,) for n in graph.order])
    assert len(calls) == len(graph.order) * SAMPLING.n_microbatches
    calls.clear()
    fused = gradients(graph, [tuple(graph.order)])
    assert sorted(calls) == sorted(["join", "n1", "n0"] * SAMPLING.n_microbatches)
    assert np.array_equal(fused[0], one_by_one[0]) and np.array_equal(fused[1], one_by_one[1])


def test_a_traced_residual_model_runs_as_three_calls_per_microbatch(monkeypatch):
    """tests/resmlp.py through from_torch (7 TorchOp nodes: a projection, three blocks whose last adds the skip,
    a norm, a head, the loss) on one stage: the projection, the first two blocks, and the rest from the join."""
    pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]')")
    import resmlp
    from pprs_mpi.ops import TorchOp
    graph = resmlp.attack().graph
    calls = counted(TorchOp, monkeypatch)
    fused = gradients(graph, [tuple(graph.order)])
    assert sum(isinstance(graph.op(n), TorchOp) for n in graph.order) == 7
    assert len(calls) == 3 * SAMPLING.n_microbatches
    calls.clear()
    assert np.array_equal(fused[0], gradients(graph, [(n,) for n in graph.order])[0])
    assert len(calls) == 7 * SAMPLING.n_microbatches


def test_numpy_graphs_have_nothing_to_fuse():
    ops = [Affine(np.eye(3)), ReLU(), Affine(np.ones((1, 3)))]
    assert fused_runs(ops) == ()


def test_jax_nodes_fuse_too(monkeypatch):
    jax = pytest.importorskip("jax", reason="JAX is not installed (pip install 'pprs_mpi[jax]')")
    from pprs_mpi.ops import JaxOp
    jnp = jax.numpy
    graph = chain([JaxOp(jnp.sin), JaxOp(lambda a: a * 3.0 + 1.0, name="affine"), JaxOp(jnp.tanh),
                   JaxOp(lambda a: (a * a).sum(1), name="loss")], 4)
    calls = counted(JaxOp, monkeypatch)
    one_by_one = gradients(graph, [(n,) for n in graph.order])
    calls.clear()
    fused = gradients(graph, [tuple(graph.order)])
    assert len(calls) == SAMPLING.n_microbatches
    assert np.array_equal(fused[0], one_by_one[0]) and np.array_equal(fused[1], one_by_one[1])


def test_a_serial_run_of_one_microbatch_fuses_the_chain_in_one_stage_with_the_same_time_and_iterates(monkeypatch,
                                                                                                     tmp_path):
    """By default the serial engine emulates one stage per node; with all copies in one microbatch, one stage
    counts the same 2Δ time units, so it runs the chain in one stage and its framework nodes in one call."""
    import pprs_mpi
    from pprs_mpi.trace import load
    graph, op_class = torch_chain()
    calls = counted(op_class, monkeypatch)
    options = {"K": 6, "gamma": 0.1, "lr": 0.05, "iters": 3, "eval_every": 0, "seed": 1}
    fused = pprs_mpi.minimize(graph, out=str(tmp_path / "fused.h5"), **options)
    assert len(calls) == 3  # one pull-back per iteration (the microbatch of 6)
    stages = len(graph.order)
    one_by_one = pprs_mpi.minimize(graph, out=str(tmp_path / "split.h5"), stages=stages, **options)
    assert np.array_equal(fused.y, one_by_one.y)
    a, b = load(str(tmp_path / "fused.h5")), load(str(tmp_path / "split.h5"))
    assert (a.attrs["stages"], b.attrs["stages"]) == (1, stages)
    assert a.attrs["makespan"] == b.attrs["makespan"] == 2 * stages
    assert np.array_equal(a.columns["pipeline_time"], b.columns["pipeline_time"])
