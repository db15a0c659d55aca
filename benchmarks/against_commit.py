"""The README's main job on this checkout against an earlier commit: time per iteration and the final
iterate, bitwise, in interleaved rounds on the same machine.

Each round runs both checkouts' `python -m pprs_mpi.solve` (the README default: lad, depth 8, K = 8)
on 4 ranks and serially, for T = 3000 and T = 300 iterations; the time per iteration is the
difference of the two wall times over 2700, so start-up (imports, MPI, the first trace) cancels
out and what remains is what a user waits for per iteration, checkpoints included. The final
y_T of the two checkouts must be bitwise equal. The baseline is exported with `git archive`.

    python benchmarks/against_commit.py                      # against the commit before the compiled plan
    python benchmarks/against_commit.py --baseline HEAD~3 --rounds 5
    python benchmarks/against_commit.py --baseline REV --solve-args "--microbatch-size 1"   # the same b in both

A different default between the two checkouts (the microbatch size, say) changes the summation order, so y_T
is bitwise equal only where both run the same layout: give it with --solve-args.

The table goes to benchmarks/results/against_commit.json (against_commit_same_layout.json with --solve-args).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
RESULTS_DIR = HERE / "results"
BEFORE_THE_PLAN = "caae55a^"  # main before issue 14's compiled per-stage plan
LONG, SHORT = 3000, 300
ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def export(revision: str, folder: Path) -> str:
    """The tree of `revision` written into `folder`; returns its commit hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPOSITORY, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=REPOSITORY, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return commit


def solve(tree: Path, ranks: int, iterations: int, out: Path, extra: list[str]) -> tuple[float, np.ndarray]:
    """Wall seconds of one README-default run from `tree` (with the `extra` arguments), and its final y."""
    command = [sys.executable, "-m", "pprs_mpi.solve", "--out", str(out), "--iters", str(iterations), *extra]
    if ranks > 1:
        command = ["mpirun", "-n", str(ranks)] + command
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env={**os.environ, **ENV, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{tree}: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    with h5py.File(out, "r") as f:
        y = f["result/y"][()]
    out.unlink()
    return wall, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=BEFORE_THE_PLAN,
                   help=f"git revision to compare with (default {BEFORE_THE_PLAN})")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--solve-args", default="",
                   help="extra arguments of both checkouts' solve, e.g. '--microbatch-size 1'")
    args = p.parse_args()
    extra = args.solve_args.split()
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline"
        commit = export(args.baseline, baseline)
        trees = {f"baseline {commit}": baseline, "this checkout": REPOSITORY}
        ms = {(name, ranks): [] for name in trees for ranks in (4, 1)}
        finals: dict = {}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                for ranks in (4, 1):
                    long, finals[name, ranks] = solve(tree, ranks, LONG, Path(scratch) / "run.h5", extra)
                    short, _ = solve(tree, ranks, SHORT, Path(scratch) / "run.h5", extra)
                    ms[name, ranks].append((long - short) / (LONG - SHORT) * 1e3)
                    print(f"{name:<18} {ranks} rank(s): {ms[name, ranks][-1]:.3f} ms per iteration", flush=True)
    (old, new) = trees
    table = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)", "baseline": old,
             "solve_args": extra,
             "rounds": args.rounds, "ms_per_iteration": {f"{name}, {ranks} rank(s)": times
                                                          for (name, ranks), times in ms.items()},
             "cases": []}
    for ranks in (4, 1):
        before, after = statistics.median(ms[old, ranks]), statistics.median(ms[new, ranks])
        table["cases"].append({"ranks": ranks, "baseline_ms": before, "this_ms": after, "speedup": before / after,
                               "same_y_T_bitwise": bool(np.array_equal(finals[old, ranks], finals[new, ranks]))})
    results = RESULTS_DIR / ("against_commit.json" if not extra else "against_commit_same_layout.json")
    RESULTS_DIR.mkdir(exist_ok=True)
    results.write_text(json.dumps(table, indent=2))
    print(f"\nmachine: {table['machine']}; README default (lad, depth 8, K = 8), T = {LONG}; "
          f"median of {args.rounds} interleaved rounds")
    for case in table["cases"]:
        where = f"{case['ranks']} ranks" if case["ranks"] > 1 else "serial "
        print(f"  {where}: {old} {case['baseline_ms']:.3f} ms, this checkout {case['this_ms']:.3f} ms per iteration: "
              f"{case['speedup']:.2f}x; y_T bitwise equal: {case['same_y_T_bitwise']}")
    print(f"saved {results}")


if __name__ == "__main__":
    main()
