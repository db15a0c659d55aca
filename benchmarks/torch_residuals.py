"""Stash against recompute for TorchOp nodes: the time per iteration and the peak memory of each.

A gradient pass of a TorchOp keeps autograd's tape (its residuals) with each microbatch until the backward
(`stash=True`, the default), or keeps only the inputs and runs the forward again in the backward
(`stash=False`). The model: `from_torch` of an MLP of `--layers` × (Linear(width) + GELU) grouped into nodes
of `--block` layers (a node's tape holds its intermediate activations; its input alone does not), θ its input,
K noisy copies in microbatches, serial engine, float64, one process per variant (peak RSS is per process),
interleaved rounds; the time is the median of the trace's per-iteration wall times. Memory: the bytes kept for
one microbatch until its backward (autograd's saved tensors, counted by storage, or the inputs), which GPipe
keeps for every microbatch of a pass and 1F1B for about the depth's; and the process's peak RSS.

    python benchmarks/torch_residuals.py [--rounds 3] [--width 1024] [--K 64]

The figures go to benchmarks/results/torch_residuals.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "torch_residuals.json"


def one_run(args) -> dict:
    """Builds the problem, runs it and returns the median ms per iteration and the peak RSS (MiB)."""
    import numpy as np
    import torch

    import pprs_mpi
    from pprs_mpi.trace import load
    torch.manual_seed(0)
    torch.set_num_threads(1)
    blocks = [torch.nn.Sequential(*[module for _ in range(args.block)
                                    for module in (torch.nn.Linear(args.width, args.width), torch.nn.GELU())])
              for _ in range(args.layers // args.block)]
    problem = pprs_mpi.from_torch(torch.nn.Sequential(*blocks), lambda out: out.abs().sum(), input_shape=(args.width,))
    for node in problem.graph.order:
        op = problem.graph.op(node)
        if hasattr(op, "stash"):
            op.stash = args.variant == "stash"
    with tempfile.TemporaryDirectory() as folder:
        result = pprs_mpi.minimize(problem, K=args.K, microbatch_size=args.microbatch_size, gamma=0.01, lr=1e-6,
                                   iters=args.iters, eval_every=0, quiet=True, out=f"{folder}/run.h5")
        wall = load(result.trace).columns["wall_time"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms_per_iteration": float(np.median(np.diff(wall)[1:]) * 1e3), "peak_rss_mib": peak_mib,
            "kept_mib_per_microbatch": kept_bytes(problem.graph, args.microbatch_size) / 2**20,
            "y_checksum": float(np.sum(result.y))}


def kept_bytes(graph, rows: int) -> int:
    """Bytes a gradient pass keeps for one microbatch of `rows` copies until its backward, over all nodes: the
    tensors autograd saves (a kept tape) or the inputs (recompute), whichever each node keeps."""
    import numpy as np
    import torch
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    values = {graph.root: np.random.default_rng(0).standard_normal((rows, graph.dim))}
    # the weights a tape refers to (Linear saves its weight) are the module's, shared by every microbatch
    weights = {tensor.untyped_storage().data_ptr() for name in graph.order
               for module in getattr(graph.op(name), "_working", {}).values() if isinstance(module, torch.nn.Module)
               for tensor in module.state_dict().values()}
    total = 0
    for name in graph.order:
        op, inputs = graph.op(name), [values[p] for p in graph.parents(name)]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            values[name], kept = op.forward_with_residuals(np, *inputs)
        if getattr(op, "stash", False):  # each storage once: a tape saves views of the same memory
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
            total += sum(size for pointer, size in storages.items() if pointer not in weights)
        else:
            total += sum(x.nbytes for x in kept)
        saved.clear()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--block", type=int, default=4, help="layers per node")
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--microbatch-size", type=int, default=64)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--variant", choices=("stash", "recompute"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(one_run(args)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"stash": [], "recompute": []}
    for _ in range(args.rounds):  # interleaved: each variant once per round, each in a fresh process
        for variant in runs:
            command = [sys.executable, __file__, "--variant", variant, "--width", str(args.width),
                       "--layers", str(args.layers), "--block", str(args.block), "--K", str(args.K),
                       "--microbatch-size", str(args.microbatch_size), "--iters", str(args.iters)]
            out = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ("ms_per_iteration", "peak_rss_mib", "kept_mib_per_microbatch")
    median = {variant: {key: sorted(r[key] for r in rs)[len(rs) // 2] for key in keys} for variant, rs in runs.items()}
    same = len({r["y_checksum"] for rs in runs.values() for r in rs}) == 1
    table = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
             "torch": __import__("torch").__version__, "settings": {k: v for k, v in vars(args).items() if v},
             "runs": runs, "median": median, "same_iterates": same,
             "recompute_time_ratio": median["recompute"]["ms_per_iteration"] / median["stash"]["ms_per_iteration"],
             "stash_extra_mib": median["stash"]["peak_rss_mib"] - median["recompute"]["peak_rss_mib"]}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(table, indent=2))
    print(f"{table['machine']}; torch {table['torch']}; MLP {args.layers} x (Linear({args.width}) + GELU), "
          f"{args.block} layers per node, "
          f"K = {args.K} in microbatches of {args.microbatch_size}, serial engine, float64, {args.rounds} rounds")
    for variant, figures in median.items():
        print(f"  {variant:<10} {figures['ms_per_iteration']:8.2f} ms/iteration   kept per microbatch "
              f"{figures['kept_mib_per_microbatch']:6.2f} MiB   peak RSS {figures['peak_rss_mib']:7.1f} MiB")
    kept = {variant: figures["kept_mib_per_microbatch"] for variant, figures in median.items()}
    print(f"  recompute takes {table['recompute_time_ratio']:.2f}x the time of stash and keeps "
          f"{kept['recompute'] / kept['stash']:.2f}x its bytes per microbatch; iterates identical: {same}")
    print(f"  (peak RSS differs by {table['stash_extra_mib']:+.1f} MiB: start-up, not the pass, sets it at this size)")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
