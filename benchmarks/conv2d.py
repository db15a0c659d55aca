"""Conv2d forward + VJP on one CPU core: 64 images 3x32x32, 64 filters 3x3, padding 1 (goal: < 50 ms).

Prints a table of median times and writes benchmarks/results/conv2d.json.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads its BLAS

import json
import platform
import time
from pathlib import Path

import numpy as np

from pprs_mpi.ops import Conv2d

BATCH, CHANNELS, SIZE, FILTERS, KERNEL = 64, 3, 32, 64, 3
REPEATS, WARMUP = 21, 3
RESULTS = Path(__file__).resolve().parent / "results" / "conv2d.json"


def median_ms(fn) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def measure(dtype) -> dict:
    rng = np.random.default_rng(0)
    op = Conv2d(rng.standard_normal((FILTERS, CHANNELS, KERNEL, KERNEL)), rng.standard_normal(FILTERS), padding=1)
    x = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(dtype)
    out = op.forward(np, x)
    cot = rng.standard_normal(out.shape).astype(dtype)
    forward = median_ms(lambda: op.forward(np, x))
    vjp = median_ms(lambda: op.vjp(np, (x,), out, cot))
    both = median_ms(lambda: op.vjp(np, (x,), op.forward(np, x), cot))
    return {"dtype": np.dtype(dtype).name, "forward_ms": forward, "vjp_ms": vjp, "forward_plus_vjp_ms": both}


def main() -> None:
    rows = [measure(np.float32), measure(np.float64)]
    print(f"Conv2d {BATCH}x{CHANNELS}x{SIZE}x{SIZE}, {FILTERS} filters {KERNEL}x{KERNEL}, padding 1, one core, "
          f"median of {REPEATS}")
    print(f"{'dtype':<8} {'forward ms':>11} {'vjp ms':>9} {'fwd+vjp ms':>11}")
    for r in rows:
        print(f"{r['dtype']:<8} {r['forward_ms']:>11.2f} {r['vjp_ms']:>9.2f} {r['forward_plus_vjp_ms']:>11.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "config": {"batch": BATCH, "channels": CHANNELS, "size": SIZE, "filters": FILTERS, "kernel": KERNEL,
                   "padding": 1, "threads": 1, "repeats": REPEATS},
        "machine": {"processor": platform.processor() or platform.machine(), "numpy": np.__version__},
        "results": rows,
    }, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
