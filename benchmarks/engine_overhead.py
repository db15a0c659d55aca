"""The serial engine's own cost per action: a chain of cheap nodes, one copy per microbatch, so that nearly
all of a pass is the engine's bookkeeping (#29's target: at most 5 µs per action).

A pass of K microbatches over N nodes makes 2·K·N actions (a forward or a backward of one node on one
microbatch). The engine's share is the pass time (best of several rounds, no timeline recorded) minus the
ops' own time for the same actions (their forward and VJP called in a bare loop), divided by the actions;
the noise draws, folds and sends of the pass count as the engine's. Rounds interleave the two measurements,
so that a busy machine slows both. The MPI engine's cost per message is benchmarks/pipeline_efficiency.py's
empty-pipeline row, against an mpi4py ping-pong. On a GPU (`--device gpu`, CuPy) the ops' bare loop is their
kernels' launches and time (the device waited for once, at its end), so the engine's share per action stands
next to what the kernels cost.

    python benchmarks/engine_overhead.py [--rounds 7]      # writes benchmarks/results/engine_overhead.json
    python benchmarks/engine_overhead.py --device gpu      # ... engine_overhead_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from pprs_mpi.api import engine_for
from pprs_mpi.backend import Backend, select
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Scale, Sum

RESULTS = Path(__file__).resolve().parent / "results"
DIM, NODES, K, PASSES = 4, 8, 64, 20


def chain() -> Graph:
    nodes = [Node(f"s{i}", Scale(1.0), ("theta" if i == 0 else f"s{i - 1}",)) for i in range(NODES)]
    return Graph(DIM, [*nodes, Node("sum", Sum(), (f"s{NODES - 1}",))])


def pass_seconds(engine, backend: Backend, x, t0: int) -> float:
    start = time.perf_counter()
    for t in range(t0, t0 + PASSES):
        engine.gradient(x, t)
    backend.synchronize()
    return (time.perf_counter() - start) / PASSES


def bare_op_seconds(graph: Graph, backend: Backend) -> float:
    """The ops' forward and VJP on one copy, called in a bare loop: one pass's worth of their work."""
    xp = backend.xp
    ops, a = [graph.op(n) for n in graph.order], xp.zeros((1, DIM), dtype=backend.dtype)
    start = time.perf_counter()
    for _ in range(K):
        for op in ops:
            out, residuals = op.forward_with_residuals(xp, a)
            op.vjp_with_residuals(xp, residuals, out, xp.ones_like(out))
    backend.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="NumPy, or CuPy on GPU 0")
    args = parser.parse_args()
    graph, backend = chain(), select(args.device)
    engine = engine_for(graph, [(n,) for n in graph.order], Sampling(K, 0.01, 0, 1), backend,
                        timeline_every=10**9)
    x = backend.xp.zeros(DIM, dtype=backend.dtype)
    pass_seconds(engine, backend, x, 0)  # warm-up (on a GPU also the kernels' first compilation)
    bare_op_seconds(graph, backend)
    passes, ops = [], []
    for r in range(args.rounds):
        passes.append(pass_seconds(engine, backend, x, 1000 * (r + 1)))
        ops.append(bare_op_seconds(graph, backend))
    actions = 2 * K * len(graph.order)
    best_pass, best_ops = min(passes), min(ops)
    result = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
              "device": backend.device,
              "graph": f"chain of {NODES} Scale nodes and a Sum, d = {DIM}", "K": K, "microbatch_size": 1,
              "actions_per_pass": actions, "rounds": args.rounds,
              "pass_s": passes, "bare_ops_s": ops,
              "per_action_s": best_pass / actions, "op_per_action_s": best_ops / actions,
              "engine_per_action_s": (best_pass - best_ops) / actions}
    print(f"{actions} actions per pass: {result['per_action_s'] * 1e6:.2f} µs per action, of which the op "
          f"{result['op_per_action_s'] * 1e6:.2f} µs and the engine {result['engine_per_action_s'] * 1e6:.2f} µs "
          f"(best of {args.rounds} interleaved rounds)")
    path = RESULTS / f"engine_overhead{'_gpu' if backend.on_gpu else ''}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
