"""Where pprs_mpi's time goes against the hand-written loop of vs_torch_pipelining.py, in one process.

One stage of the reference pipeline (4 × (Linear(512) + ReLU), an L1 loss, K = 16 microbatches of one
row, float32, γ = 0, all forwards then all backwards), four ways, in interleaved repeats:

- hand: the hand-written loop's arithmetic: one step per layer, no loss value;
- graph ops: pprs_mpi's ops of the same graph (Affine, ReLU, ..., L1Norm), called in a bare loop;
- graph ops, Affine+ReLU fused: the same with each layer one op;
- serial engine: pprs_mpi's serial engine on that graph (the same gradient as the bare loop, bitwise);
- with torch installed, the same stage as torch modules: TorchOp nodes in the bare loop, the modules as
  one autograd graph per microbatch (what fusing a stage's TorchOps could reach at best), and their
  forwards alone without a tape (the floor of torch's kernels on these shapes).

So the gap to the hand loop splits into the graph's granularity (op calls, the loss value PPRS needs)
and the engine's own work. The table goes to benchmarks/results/granularity.json.

    python benchmarks/granularity.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np

from pprs_mpi.api import engine_for
from pprs_mpi.backend import select
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.graph import Graph
from pprs_mpi.ops import Affine, L1Norm, Op, ReLU, TorchOp
from vs_torch_pipelining import LAYERS_PER_STAGE, layers, torch_layers  # the same directory

RESULTS = Path(__file__).resolve().parent / "results" / "granularity.json"
WIDTH, K = 512, 16


class AffineReLU(Op):
    """max(x @ W.T + b, 0) as one op, as the hand loop computes a layer."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, xp, x):
        return xp.maximum(x @ self.W.T + self.b, 0)

    def vjp(self, xp, inputs, output, cotangent):
        return ((cotangent * (output > 0)) @ self.W,)


def hand(stage, theta):
    stash = []
    for _ in range(K):
        h, outputs = theta[None].copy(), []
        for W, b in stage:
            h = np.maximum(h @ W.T + b, 0)
            outputs.append(h)
        stash.append(outputs)
    gradient = np.zeros_like(theta)
    for outputs in stash:
        g = np.sign(outputs[-1])
        for (W, _), out in zip(reversed(stage), reversed(outputs)):
            g = (g * (out > 0)) @ W
        gradient += g[0]
    return gradient / K


def bare(ops, theta):
    """The ops' forwards for every microbatch, then their VJPs, as a stage runs them under GPipe (through the
    pair a gradient pass calls, forward_with_residuals and vjp_with_residuals)."""
    stash = []
    for _ in range(K):
        h, kept = np.array(np.broadcast_to(theta, (1, WIDTH))), []
        for op in ops:
            h, residuals = op.forward_with_residuals(np, h)
            kept.append((residuals, h))
        stash.append(kept)
    gradient = np.zeros_like(theta)
    for kept in stash:
        cotangent = np.ones_like(kept[-1][1])
        for op, (residuals, y) in zip(reversed(ops), reversed(kept)):
            cotangent, = op.vjp_with_residuals(np, residuals, y, cotangent)
        gradient += cotangent.sum(axis=0)
    return gradient / K


def torch_variants(stage_modules, theta) -> dict:
    """The same stage as torch modules: TorchOp nodes in the bare loop; the modules as one autograd graph per
    microbatch (one backward for the whole stage, what fusing a stage's TorchOps could reach at best); and
    their forwards alone without a tape (the kernels' floor). {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(1)
    ops = [TorchOp(module) for module in stage_modules] + [TorchOp(lambda out: out.abs().sum(1), name="l1")]
    graph = Graph.chain(WIDTH, ops)  # builds the ops (shapes, their float32 copies)
    whole = torch.nn.Sequential(*stage_modules)
    x = torch.from_numpy(np.array(np.broadcast_to(theta, (1, WIDTH))))

    def one_graph():
        taped = []
        for _ in range(K):
            leaf = x.detach().requires_grad_()
            taped.append((leaf, whole(leaf).abs().sum()))
        return sum(torch.autograd.grad(loss, leaf)[0][0] for leaf, loss in taped).numpy() / K

    def forwards_only():
        with torch.no_grad():
            for _ in range(K):
                whole(x).abs().sum()
        return None

    assert graph.order and np.allclose(bare(ops, theta), one_graph(), rtol=1e-4, atol=1e-5)
    return {"TorchOp nodes": lambda: bare(ops, theta), "torch, one autograd graph per microbatch": one_graph,
            "torch forwards only, no tape": forwards_only}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15, help="interleaved repeats of 10 passes each (default 15)")
    args = p.parse_args()
    stage = layers(WIDTH)[:LAYERS_PER_STAGE]
    graph_ops = [op for W, b in stage for op in (Affine(W, b), ReLU())] + [L1Norm()]
    fused_ops = [AffineReLU(W, b) for W, b in stage] + [L1Norm()]
    graph = Graph.chain(WIDTH, graph_ops)
    engine = engine_for(graph, [tuple(graph.order)], Sampling(K, 0.0, 0, 1), select("cpu", "float32"),
                        timeline_every=10**9)
    theta = np.ones(WIDTH, dtype=np.float32)
    variants = {"hand": lambda: hand(stage, theta), "graph ops": lambda: bare(graph_ops, theta),
                "graph ops, Affine+ReLU fused": lambda: bare(fused_ops, theta),
                "serial engine": lambda: engine.gradient(theta, 1)[0]}
    assert np.array_equal(variants["graph ops"](), variants["serial engine"]())
    assert np.allclose(variants["hand"](), variants["serial engine"](), rtol=1e-4, atol=1e-5)
    variants.update(torch_variants(list(torch_layers(WIDTH))[:2 * LAYERS_PER_STAGE], theta))
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(10):
                run()
            times[name].append((time.perf_counter() - start) / 10 * 1e3)
    median = {name: float(np.median(t)) for name, t in times.items()}
    table = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)", "width": WIDTH, "K": K,
             "ms_per_pass": times, "median_ms": median}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(table, indent=2))
    print(f"one stage (4 layers of width {WIDTH}, L1 loss), K = {K}, one process; median of {args.repeats} repeats")
    for name, ms in median.items():
        print(f"  {name:<40} {ms:7.3f} ms   {ms / median['hand']:.2f}x the hand loop, "
              f"{ms / median['graph ops']:.2f}x pprs_mpi's ops")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
