"""Busy readers on a live run: 3 tight h5py reader loops and 2 `report` loops watch a `mpirun -n 3`
solve; its wall time is compared with the same solve unread, measured alternately in this script.

    python benchmarks/live_readers.py [--iters N] [--repeats R] [--reader-nice 19]

Prints and saves (benchmarks/results/live_readers.json) the median wall-time ratio read / unread,
the readers' successful opens and errors (a torn file would be an error), and whether every read
run ended bitwise equal to the unread one. On a machine with fewer cores than ranks + readers, CPU
contention alone slows the run, whatever the readers read; a third run per repeat, beside five CPU
loops that never touch the trace, measures that share, so read / CPU-loops is what the trace's
readers cost beyond their CPU time. Readers run at `--reader-nice` (default 19), or with
READER_SCHED_IDLE=1 under SCHED_IDLE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from pprs_mpi.trace import load

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from crash_cases import same_run  # noqa: E402  (the harness's bitwise comparison of two runs)

ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", "OMP_NUM_THREADS": "1"}
RUN = ["--problem", "branch", "--depth", "4", "--dim", "6", "--rows", "8", "-K", "4", "--gamma", "0.05",
       "--lr", "0.02", "--mu", "nesterov", "--eval-every", "5", "--seed", "3", "--quiet", "--checkpoint-every", "20"]
PREAMBLE = """import json, os, sys
os.nice(int(sys.argv[2]))
if os.environ.get("READER_SCHED_IDLE"):
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
"""  # every reader: its niceness, or SCHED_IDLE
H5PY_READER = PREAMBLE + """
import h5py
opens = errors = 0
while not os.path.exists(sys.argv[3]):
    try:
        with h5py.File(sys.argv[1], "r") as f:  # h5py's default: HDF5 file locking per HDF5_USE_FILE_LOCKING
            rows = f["trace/iteration"][()]
            status = f.attrs["status"]
            checkpoint = f["checkpoint/x"][()] if "checkpoint" in f else None
        opens += 1
    except FileNotFoundError:
        pass
    except Exception as err:  # a torn or locked file
        errors += 1
print(json.dumps({"opens": opens, "errors": errors}))
"""
CPU_LOOP = PREAMBLE + """
loops = 0
while not os.path.exists(sys.argv[3]):
    sum(range(20000))
    loops += 1
print(json.dumps({"opens": 0, "runs": 0, "loops": loops, "errors": 0}))
"""
REPORT_LOOP = PREAMBLE + """
import subprocess
runs = errors = 0
while not os.path.exists(sys.argv[3]):
    result = subprocess.run([sys.executable, "-m", "pprs_mpi.report", sys.argv[1], "--json"], capture_output=True)
    runs += 1
    errors += result.returncode != 0 and b"no such file" not in result.stderr
print(json.dumps({"runs": runs, "errors": errors}))
"""


def solve(out: Path, iters: int) -> subprocess.Popen:
    return subprocess.Popen(["mpirun", "-n", "3", sys.executable, "-m", "pprs_mpi.solve", *RUN, "--iters", str(iters),
                             "--out", str(out)], env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def timed_run(out: Path, iters: int, nice: int | None, control: bool = False) -> tuple[float, list[dict]]:
    """Wall time of one solve (with readers unless `nice` is None) and what the readers saw; with
    `control`, the five readers are plain CPU loops that never touch the trace."""
    done = out.with_suffix(".done")
    started = time.perf_counter()
    process = solve(out, iters)
    readers = [] if nice is None else [
        subprocess.Popen([sys.executable, "-c", code, str(out), str(nice), str(done)], stdout=subprocess.PIPE,
                         env={**os.environ, **ENV, **extra}, text=True)
        for code, extra in [(H5PY_READER, {}), (H5PY_READER, {}), (H5PY_READER, {"HDF5_USE_FILE_LOCKING": "FALSE"}),
                            (REPORT_LOOP, {}), (REPORT_LOOP, {})]] if not control else [
        subprocess.Popen([sys.executable, "-c", CPU_LOOP, str(out), str(nice), str(done)], stdout=subprocess.PIPE,
                         env={**os.environ, **ENV}, text=True) for _ in range(5)]
    _, err = process.communicate(timeout=600)
    wall = time.perf_counter() - started
    done.touch()
    seen = [json.loads(reader.communicate(timeout=120)[0]) for reader in readers]
    if process.returncode != 0:
        raise SystemExit(f"the solve failed: {err.strip()}")
    return wall, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reader-nice", type=int, default=19)
    parser.add_argument("--save", default=str(Path(__file__).parent / "results" / "live_readers.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        unread, read, control, seen, equal = [], [], [], [], []
        for i in range(args.repeats):  # interleaved, so that drifting machine load hits all alike
            unread.append(timed_run(Path(tmp) / f"unread{i}.h5", args.iters, None)[0])
            wall, readers = timed_run(Path(tmp) / f"read{i}.h5", args.iters, args.reader_nice)
            read.append(wall)
            seen.append(readers)
            control.append(timed_run(Path(tmp) / f"control{i}.h5", args.iters, args.reader_nice, control=True)[0])
            equal.append(same_run(load(Path(tmp) / f"read{i}.h5"), load(Path(tmp) / f"unread{i}.h5")))
            print(f"repeat {i}: unread {unread[-1]:.2f} s, read {read[-1]:.2f} s, 5 CPU loops {control[-1]:.2f} s, "
                  f"readers {readers}", flush=True)
    ratio = statistics.median(r / u for r, u in zip(read, unread))
    figures = {
        "iters": args.iters, "ranks": 3, "reader_nice": args.reader_nice, "cores": os.cpu_count(),
        "reader_sched_idle": bool(os.environ.get("READER_SCHED_IDLE")),
        "unread_wall_s": unread, "read_wall_s": read, "cpu_loops_wall_s": control,
        "median_ratio_read_over_unread": round(ratio, 3),
        "median_ratio_cpu_loops_over_unread": round(statistics.median(c / u for c, u in zip(control, unread)), 3),
        "median_ratio_read_over_cpu_loops": round(statistics.median(r / c for r, c in zip(read, control)), 3),
        "h5py_reader_opens": [sum(r["opens"] for r in s[:3]) for s in seen],
        "report_runs": [sum(r["runs"] for r in s[3:]) for s in seen],
        "reader_errors": sum(r["errors"] for s in seen for r in s),
        "bitwise_equal": all(equal),
    }
    print(json.dumps(figures, indent=1))
    print(f"median wall time with 3 h5py readers + 2 report loops: {ratio:.2f}x the unread run "
          f"({'within' if ratio <= 1.5 else 'OVER'} 1.5x), {figures['median_ratio_read_over_cpu_loops']:.2f}x a run "
          f"beside 5 CPU loops that never touch the trace ({figures['median_ratio_cpu_loops_over_unread']:.2f}x "
          f"unread); reader errors {figures['reader_errors']}; bitwise equal: {figures['bitwise_equal']}")
    Path(args.save).parent.mkdir(parents=True, exist_ok=True)
    Path(args.save).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
