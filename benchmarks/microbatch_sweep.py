"""Is the default layout the right one? The width-512 MLP of benchmarks/deep_mlp.py (K = 64) serially
and on `mpirun -n 2` at every b = K/M for M = 1, 2, 4, 8 and at the default (`auto`), and with the default b
under both schedules with the planner's grouping (`--balance auto`) and the even one (`declared`), per
iteration (the trace's wall_time, median after 3 warm-up iterations, median over interleaved rounds), next to
the planner's prediction; and the matrix product
those runs spend their time in, b × 512 × 512 in NumPy for b = 8 ... 64 and in torch at b = 64 (one thread
each), which gives layout.py's constants (a product costs about (b + b₀) times a per-row cost) and the gap
between NumPy's OpenBLAS and torch's kernels.

    python benchmarks/microbatch_sweep.py [--rounds 2]    # writes benchmarks/results/microbatch_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np

from pprs_mpi.trace import load

RESULTS = HERE / "results" / "microbatch_sweep.json"
K, WIDTH, ITERS, SKIP = 64, 512, 40, 3
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
       "OMPI_MCA_btl": os.environ.get("OMPI_MCA_btl", "^ofi")}


def per_iteration(ranks: int, size: str, schedule: str, balance: str, out: Path) -> tuple[float, dict]:
    """Median seconds per iteration of one run, and its layout: b, nodes per stage, the predicted time."""
    command = [sys.executable, "-m", "pprs_mpi.solve", "--problem", f"{HERE / 'deep_mlp.py'}:deep_mlp",
               "--problem-arg", f"width={WIDTH}", "-K", str(K), "--iters", str(ITERS), "--eval-every", "0",
               "--microbatch-size", size, "--schedule", schedule, "--balance", balance, "--quiet", "--overwrite",
               "--out", str(out)]
    if ranks > 1:
        command = ["mpirun", "-n", str(ranks), *command]
    done = subprocess.run(command, cwd=HERE.parent, env=ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    trace = load(out)
    b, choice = int(trace.attrs["microbatch_size"]), json.loads(trace.attrs["layout_choice"])
    predicted = [c["predicted_s"] for c in choice["candidates"] if c["microbatch_size"] == b]
    layout = {"microbatch_size": b, "nodes_per_stage": np.bincount(trace.graph["stage_of"]).tolist(),
              "predicted_s": predicted[0] if predicted else None}
    return float(np.median(np.diff(trace.columns["wall_time"])[SKIP:])), layout


def product_seconds(rows: int, repeats: int = 300) -> dict[str, float]:
    """One rows × 512 @ 512 × 512 product in NumPy, and in torch where it is installed."""
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((rows, WIDTH)), rng.standard_normal((WIDTH, WIDTH))
    found = {"numpy": _best(lambda: x @ W.T, repeats)}
    try:
        import torch
    except ImportError:
        return found
    torch.set_num_threads(1)
    tx, tW = torch.from_numpy(x), torch.from_numpy(W)
    found["torch"] = _best(lambda: torch.nn.functional.linear(tx, tW), repeats)
    return found


def _best(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            f()
        times.append((time.perf_counter() - start) / repeats)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    variants = [(1, "auto", "gpipe", "auto"), (2, "auto", "gpipe", "auto"),
                *((2, str(K // M), "gpipe", "auto") for M in (1, 2, 4, 8)),
                (2, "auto", "gpipe", "declared"), (2, "auto", "1f1b", "auto"), (2, "auto", "1f1b", "declared")]
    times: dict = {variant: [] for variant in variants}
    chosen = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for variant in variants:
                seconds, chosen[variant] = per_iteration(*variant, Path(scratch) / "run.h5")
                times[variant].append(seconds)
    rows = [{"ranks": ranks, "requested": size, "schedule": schedule, "balance": balance,
             **chosen[ranks, size, schedule, balance],
             "per_iteration_s": statistics.median(times[ranks, size, schedule, balance]),
             "rounds_s": times[ranks, size, schedule, balance]}
            for ranks, size, schedule, balance in variants]
    products = {b: product_seconds(b) for b in (8, 16, 32, 64)}
    numpy_s = [products[b]["numpy"] for b in (8, 64)]
    per_row = (numpy_s[1] - numpy_s[0]) / (64 - 8)
    result = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
              "problem": f"deep_mlp width {WIDTH}, K = {K}", "iterations": ITERS, "runs": rows,
              "products_s": {str(b): p for b, p in products.items()},
              "numpy_product_per_row_s": per_row, "numpy_product_extra_rows": numpy_s[0] / per_row - 8}
    for row in rows:
        where = "serial" if row["ranks"] == 1 else f"-n {row['ranks']}"
        predicted = f", predicted {row['predicted_s'] * 1e3:.2f} ms" if row["predicted_s"] else ""
        print(f"{where:>7} --microbatch-size {row['requested']:>4} (b = {row['microbatch_size']:>2}) "
              f"--schedule {row['schedule']:>5} --balance {row['balance']:>8} {row['nodes_per_stage']}: "
              f"{row['per_iteration_s'] * 1e3:.2f} ms per iteration{predicted}")
    for b, p in products.items():
        torch_text = f", torch {p['torch'] * 1e6:.0f} µs ({p['numpy'] / p['torch']:.2f}x)" if "torch" in p else ""
        print(f"{b:>2} × {WIDTH} × {WIDTH} product: NumPy {p['numpy'] * 1e6:.0f} µs{torch_text}")
    print(f"NumPy: about (b + {result['numpy_product_extra_rows']:.1f}) × {per_row * 1e6:.2f} µs")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
