"""A traced model through `from_torch` against the user's own torch loop: the time of one gradient estimate.

The model: tests/resmlp.py (a wide projection, three residual blocks of LayerNorm, Linear and GELU, a skip
around them, a head), traced into one node per block, θ its input, float64, one thread. One iteration of
PPRS estimates the gradient from K noisy copies θ + γX_k: the serial engine (`engine.gradient`, every node on
one stage, so that consecutive TorchOp nodes run fused as one autograd tape) in microbatches of b copies,
against what a torch user writes for the same estimate: the K copies (pprs_mpi's own noise, so that both
draw the same X_k at the same cost) as one batch, the model, the per-copy loss under vmap, one backward, the
mean. The two estimates are asserted equal (to RTOL) before any time is kept. Interleaved rounds; the best
round's mean of each.

    python benchmarks/from_torch_vs_own_loop.py [--K 16] [--rounds 5] [--iters 20]

The issue's target is at most 1.5× the user's loop. The figures go to
benchmarks/results/from_torch_vs_own_loop.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import numpy as np
import torch

import resmlp
from pprs_mpi.api import engine_for
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.noise import perturbations

RESULTS = HERE / "results" / "from_torch_vs_own_loop.json"
GAMMA, SEED = 0.05, 0
RTOL = 1e-10  # the two estimates agree to rounding: the same copies, summed in another order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    graph = resmlp.attack().graph
    model = resmlp.model().double().requires_grad_(False)
    x = np.zeros(graph.dim)

    def own(t):
        noisy = torch.from_numpy(x + GAMMA * perturbations(SEED, t, range(args.K), graph.dim))
        noisy.requires_grad_()
        values = torch.func.vmap(lambda out: (1 - out[0] + out).clamp(min=0).sum())(model(noisy))
        return torch.autograd.grad(values.sum() / args.K, noisy)[0].sum(0)

    rows = []
    for b in (args.K, max(1, args.K // 4)):
        engine = engine_for(graph, [tuple(graph.order)],
                            Sampling(K=args.K, gamma=GAMMA, seed=SEED, microbatch_size=b))
        ours, theirs = engine.gradient(x, 1)[0], own(1).numpy()
        assert np.allclose(ours, theirs, rtol=0, atol=RTOL * np.abs(theirs).max()), "the estimates differ"
        best = {"pprs_mpi": float("inf"), "own loop": float("inf")}
        for _ in range(args.rounds):
            for name, step in (("pprs_mpi", lambda t: engine.gradient(x, t)), ("own loop", own)):
                start = time.perf_counter()
                for t in range(args.iters):
                    step(t)
                best[name] = min(best[name], (time.perf_counter() - start) / args.iters)
        rows.append({"K": args.K, "microbatch_size": b, "pprs_ms": best["pprs_mpi"] * 1e3,
                     "own_ms": best["own loop"] * 1e3, "ratio": best["pprs_mpi"] / best["own loop"]})
        print(f"K={args.K} b={b}: from_torch (serial engine) {rows[-1]['pprs_ms']:.2f} ms per gradient estimate, "
              f"own torch loop {rows[-1]['own_ms']:.2f} ms: {rows[-1]['ratio']:.2f}×")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                   "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
