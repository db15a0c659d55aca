"""The real-model examples: a ResNet attacked with PPRS (θ = the image) and a transformer encoder whose head
is fine-tuned (θ = the head's weights). Each passes the gradient check and runs bitwise equal serially and on
2 and 4 ranks. Skipped, with the reason, where torch is not installed. Every launch has a timeout."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]')")

import pprs_mpi  # noqa: E402
from conftest import mpirun  # noqa: E402
from pprs_mpi import check_gradients  # noqa: E402
from pprs_mpi.problems import build  # noqa: E402
from pprs_mpi.trace import load  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OPTIONS = {"K": 4, "microbatch_size": 2, "iters": 2, "eval_every": 1, "gamma": 0.05, "lr": 0.01, "seed": 2}


@pytest.mark.parametrize("example, nodes", [("torch_resnet.py", 13), ("torch_transformer.py", 4)])
def test_the_example_passes_the_gradient_check(example, nodes):
    problem = build(f"{EXAMPLES / example}:build")
    checks = check_gradients(problem, points=1)
    assert len(checks) == nodes and all(c.ok for c in checks), [c.describe() for c in checks if not c.ok]


def test_the_resnets_shortcuts_stay_inside_its_blocks_and_nodes_groups_them():
    """Default: one node per top-level layer and block; nodes=4 balances them by their operations."""
    graph = build(f"{EXAMPLES / 'torch_resnet.py'}:build").graph
    assert [n for n in graph.order if "Block" in n] == ["layers.0.0_BasicBlock", "layers.0.1_BasicBlock",
                                                        "layers.1.0_BasicBlock", "layers.1.1_BasicBlock"]
    grouped = build(f"{EXAMPLES / 'torch_resnet.py'}:build", nodes=4).graph
    assert len(grouped.order) == 4 + 4  # input, linf, loss and objective besides the 4 groups


@pytest.mark.mpi
@pytest.mark.parametrize("example", ["torch_resnet.py", "torch_transformer.py"])
def test_the_example_is_bitwise_equal_serially_and_on_2_and_4_ranks(example, tmp_path):
    reference = f"{EXAMPLES / example}:build"
    serial = pprs_mpi.minimize(reference, quiet=True, out=str(tmp_path / "serial.h5"), **OPTIONS)
    assert not np.array_equal(serial.y, build(reference).x0)  # it moved
    flags = [item for key, value in OPTIONS.items()
             for item in (f"--{key.replace('_', '-')}" if len(key) > 1 else f"-{key}", value)]
    for ranks in (2, 4):
        parallel = mpirun(ranks, "--problem", reference, "--quiet", "--out", tmp_path / f"{ranks}.h5", *flags,
                          timeout=180)
        assert parallel.returncode == 0, parallel.stderr
        trace = load(tmp_path / f"{ranks}.h5")
        assert trace.attrs["ranks"] == ranks
        assert np.array_equal(trace.columns["f_smoothed"], serial.f_smoothed, equal_nan=True)
        assert np.array_equal(trace.columns["f_eval"], serial.f_eval, equal_nan=True)
        assert np.array_equal(trace.result["y"], serial.y)


@pytest.mark.parametrize("use", ["input", "weights"])
def test_attention_on_thetas_path_passes_the_check(use):
    """θ through nn.MultiheadAttention: without a tape, attention took a fused kernel that rounds otherwise than
    the recorded one (the evaluation pass differed) and has no derivative (θ = the attention's weights)."""
    import sys
    sys.path.insert(0, str(EXAMPLES))
    from torch_transformer import Encoder
    torch.manual_seed(0)
    model, sequences, labels = Encoder().eval(), torch.randn(4, 5, 6), torch.randint(0, 3, (4,))
    if use == "input":
        problem = pprs_mpi.from_torch(model, lambda out: out.sum(), input_shape=(5, 6),
                                      split=["block.attention", "block.mlp", "head"])
    else:
        problem = pprs_mpi.from_torch(model, lambda out: torch.nn.functional.cross_entropy(out, labels),
                                      params=["block.attention.out_proj.weight", "block.mlp.0.weight"],
                                      inputs=sequences.numpy())
    checks = check_gradients(problem, points=1)
    assert all(c.ok for c in checks), [c.describe() for c in checks if not c.ok]
