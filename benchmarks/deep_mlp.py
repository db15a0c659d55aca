"""A deep ReLU network over its input, the problem of benchmarks/vs_hand_loop.py's `mlp` cases.

f(θ) = ‖W_L relu(… relu(W_1 θ + b_1) …) + b_L‖₁: `depth` Affine layers of `width` × `width` (He-scaled
Gaussian weights, small Gaussian biases), a ReLU between consecutive ones and an L1 loss, θ ∈ R^width
started at a Gaussian point; 2·depth nodes in a chain. Deterministic for a `problem_seed`.

    python -m pprs_mpi.solve --problem benchmarks/deep_mlp.py:deep_mlp --problem-arg width=512 -K 64

`torch_mlp` is the same network, weights and start as torch modules through `from_torch` (one TorchOp node
per Linear and per ReLU, and the L1 loss): what a PyTorch user's `nn.Sequential` becomes (needs torch).
"""

from __future__ import annotations

import numpy as np

from pprs_mpi.graph import Graph
from pprs_mpi.ops import Affine, L1Norm, ReLU
from pprs_mpi.problems import Problem


def deep_mlp(width: int = 64, depth: int = 8, problem_seed: int = 0) -> Problem:
    """A chain of `depth` Affine(width -> width) layers with ReLUs between them, and an L1 loss."""
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    rng = np.random.default_rng(problem_seed)
    ops = []
    for layer in range(depth):
        W = rng.standard_normal((width, width)) * np.sqrt(2.0 / width)
        ops += [Affine(W, 0.1 * rng.standard_normal(width))] + ([ReLU()] if layer < depth - 1 else [])
    names = [f"{type(op).__name__.lower()}{i // 2}" for i, op in enumerate(ops)]
    return Problem("deep_mlp", Graph.chain(width, [*ops, L1Norm()], [*names, "l1"]), rng.standard_normal(width))


def torch_mlp(width: int = 64, depth: int = 8, problem_seed: int = 0) -> Problem:
    """`deep_mlp`'s network as an `nn.Sequential` of Linear and ReLU modules through `from_torch`."""
    import torch

    from pprs_mpi.torch_graph import from_torch
    reference = deep_mlp(width, depth, problem_seed)
    modules = []
    for name in reference.graph.order[:-1]:
        op = reference.graph.op(name)
        if isinstance(op, Affine):
            linear = torch.nn.Linear(width, width, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(op.W))
                linear.bias.copy_(torch.from_numpy(op.b))
            modules.append(linear)
        else:
            modules.append(torch.nn.ReLU())
    return from_torch(torch.nn.Sequential(*modules), lambda out: out.abs().sum(), input_shape=(width,),
                      x0=reference.x0, name="torch_mlp")
