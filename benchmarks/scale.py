"""What a run of P ranks costs as P grows (issue 34): start-up by part, bytes sent during the setup, the
per-rank plan, trace bytes and report time, with a fitted exponent (y ~ P^e) for each.

- MPI runs of `lad` with D = P on this machine, oversubscribed (`--ranks`, default 2 … 128): each rank
  times its parts (imports, MPI_Init, the builder, the graph agreement, the schedule and placement, the
  trace, the engine (clock sync, plan, buffers), the iterations) in CPU seconds (its own work: with P
  ranks on 2 cores, wall time also counts the other ranks' turns) and in wall seconds, and counts the
  bytes its setup rounds send; the largest per part over the ranks is kept, and rank 0's bytes. Then
  the trace's size per timed iteration and the report's time on it.
- One stage's plan of a chain of P stages in one process (P up to 4096): what every rank builds.
- A single-process model of the writer at `--model-ranks` (default 1024): the serial engine runs that
  many stages and writes its trace as rank 0 would (the same sampled timeline, every stage's summary);
  its size at 10 and 30 timed iterations gives the bytes of one commit after 100 (the default
  --timeline-every times about 100), and the report's time on it.

Results go to benchmarks/results/scale.json.

    PYTHONPATH=. python benchmarks/scale.py [--ranks 2,4,8,16,32,64,128] [--model-ranks 1024] [--iters 3]

(PYTHONPATH=. from a checkout measures that checkout, not an installed pprs_mpi.)
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter(), time.process_time()  # before the imports: the first part of a start-up

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

import pprs_mpi.run.assemble as assemble  # noqa: E402
import pprs_mpi.run.execute as execute  # noqa: E402
from pprs_mpi import config  # noqa: E402
from pprs_mpi.analysis import summarize  # noqa: E402
from pprs_mpi.engines.plan import compile_stage  # noqa: E402
from pprs_mpi.engines.stage import Sampling, Wiring  # noqa: E402
from pprs_mpi.graph import Graph  # noqa: E402
from pprs_mpi.ops import Abs, SquaredNorm  # noqa: E402
from pprs_mpi.report import format_summary  # noqa: E402
from pprs_mpi.schedule import build  # noqa: E402
from pprs_mpi.setup_sync import SetupSync  # noqa: E402
from pprs_mpi.trace import load  # noqa: E402

IMPORTED = time.perf_counter(), time.process_time()
RESULTS = Path(__file__).parent / "results" / "scale.json"
PARTS = ("imports", "mpi_init", "builder", "graph_agreement", "schedule", "trace_open", "setup_total", "engine",
         "iterations")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "^ofi",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}


def solver_args(P: int, iters: int, out: str) -> list[str]:
    return ["--problem", "lad", "--depth", str(P), "--dim", "4", "--rows", "6", "-K", "8", "--iters", str(iters),
            "--timeline-every", "1", "--quiet", "--out", out]


# -- one rank of an MPI run (--worker) ------------------------------------------------------------------

class _Counting:
    """A communicator that counts the pickled bytes this rank's setup rounds send (isend and bcast)."""

    def __init__(self, comm, counter: dict):
        self._comm, self._counter = comm, counter

    def isend(self, obj, dest, tag):
        self._counter["bytes"] += len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        self._counter["messages"] += 1
        return self._comm.isend(obj, dest=dest, tag=tag)

    def bcast(self, obj, root=0):
        if self._comm.rank == root:  # a tree broadcast: the root sends about log2(P) copies
            self._counter["bytes"] += len(pickle.dumps(obj)) * max(1, int(np.ceil(np.log2(self._comm.size))))
        return self._comm.bcast(obj, root=root)

    def __getattr__(self, name):
        return getattr(self._comm, name)


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


def _timed(module, name: str, times: dict, part: str) -> None:
    """Adds the wall and CPU seconds of every call of module.name to times[part]."""
    function = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = _clocks()
        try:
            return function(*args, **kwargs)
        finally:
            times[part] = times.get(part, 0.0) + _clocks() - start
    setattr(module, name, wrapper)


def worker(out_json: str, argv: list[str]) -> None:
    """One rank: runs the solver on argv with its parts timed; rank 0 writes every rank's figures to out_json."""
    times = {"imports": np.subtract(IMPORTED, _STARTED)}
    start = _clocks()
    from mpi4py import MPI
    times["mpi_init"] = _clocks() - start
    comm = MPI.COMM_WORLD
    counter = {"bytes": 0, "messages": 0}
    plain_init = SetupSync.__init__

    def counting_init(self, comm, prefix="", timeout=None):
        plain_init(self, comm, prefix, timeout)
        self.comm = _Counting(self.comm, counter)
    SetupSync.__init__ = counting_init
    for module, name, part in ((assemble, "build_problem", "builder"),
                               (assemble, "_same_graph_everywhere", "graph_agreement"),
                               (assemble, "place", "schedule"), (assemble, "open_trace", "trace_open"),
                               (execute, "set_up", "setup_total"), (execute, "_make_engine", "engine"),
                               (execute, "execute", "iterations")):
        _timed(module, name, times, part)
    execute.run(lambda: config.load(argv), comm)
    gathered = comm.gather({"times": {part: list(map(float, t)) for part, t in times.items()}, **counter}, root=0)
    if comm.rank == 0:
        Path(out_json).write_text(json.dumps(gathered))


# -- the benchmark --------------------------------------------------------------------------------------

def mpi_run(P: int, iters: int, directory: Path) -> dict:
    out, figures = directory / f"p{P}.h5", directory / f"p{P}.json"
    command = ["mpirun", "-n", str(P), sys.executable, __file__, "--worker", str(figures), "--",
               *solver_args(P, iters, str(out))]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, **MPI_ENV})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"P={P}: mpirun exited {result.returncode}: {result.stderr[-2000:]}")
    ranks = json.loads(figures.read_text())
    trace = load(out)
    timed = len(np.unique(trace.timeline["iteration"]))
    report = report_seconds(out)
    row = {"ranks": P, "wall_seconds": wall, "status": trace.status,
           **{part: max(r["times"].get(part, (0.0, 0.0))[1] for r in ranks) for part in PARTS},
           **{f"{part}_wall": max(r["times"].get(part, (0.0, 0.0))[0] for r in ranks) for part in PARTS},
           "setup_bytes_rank0": ranks[0]["bytes"], "setup_messages_rank0": ranks[0]["messages"],
           "setup_bytes_all_ranks": sum(r["bytes"] for r in ranks),
           "trace_bytes": out.stat().st_size, "timed_iterations": timed,
           "timeline_bytes_per_timed_iteration": trace.timeline.nbytes / timed, "report_seconds": report}
    print(f"P={P:4d}: wall {wall:6.1f} s; CPU s per part (slowest rank) "
          + ", ".join(f"{p} {row[p]:.3f}" for p in PARTS)
          + f"; setup sent by rank 0 {row['setup_bytes_rank0']:,} B; trace {row['trace_bytes']:,} B; "
            f"report {report:.2f} s", flush=True)
    return row


def report_seconds(path: Path, repeats: int = 3) -> float:
    """The best of `repeats` of what `python -m pprs_mpi.report PATH` does in-process: read, summarise, format."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        format_summary(summarize(load(path)), "")
        best = min(best, time.perf_counter() - start)
    return best


def plan_seconds(P: int, M: int = 8) -> dict:
    """One rank's plan of a chain of P stages: the schedule (every rank computes it) and its own stage's plan."""
    graph = Graph.chain(2, [Abs()] * (P - 1) + [SquaredNorm()])
    start = time.perf_counter()
    wiring = Wiring(graph, [(name,) for name in graph.order])
    schedule = build("1f1b", wiring.stages, {n: graph.parents(n) for n in graph.order}, M)
    built = time.perf_counter()
    compile_stage(wiring, schedule, Sampling(K=2 * M, gamma=0.1, seed=0, microbatch_size=2), P // 2)
    return {"ranks": P, "schedule_seconds": built - start, "plan_seconds": time.perf_counter() - built}


def writer_model(P: int, directory: Path) -> dict:
    """The serial engine's trace of P stages at 10 and 30 timed iterations: bytes of a commit after 100."""
    sizes = {}
    for iters in (10, 30):
        out = directory / f"model{P}-{iters}.h5"
        args = [*solver_args(P, iters - 1, str(out)), "--engine", "serial", "--stages", str(P)]
        result = subprocess.run([sys.executable, "-m", "pprs_mpi.solve", *args], capture_output=True, text=True,
                                timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"writer model at P={P}: {result.stderr[-2000:]}")
        sizes[iters] = out.stat().st_size
    per_iteration = (sizes[30] - sizes[10]) / 20
    row = {"ranks": P, "trace_bytes_10_timed": sizes[10], "trace_bytes_30_timed": sizes[30],
           "bytes_per_timed_iteration": per_iteration, "commit_bytes_at_100_timed": sizes[10] + 90 * per_iteration,
           "report_seconds_30_timed": report_seconds(directory / f"model{P}-30.h5")}
    print(f"writer model P={P}: {per_iteration:,.0f} B per timed iteration, a commit after 100 timed iterations "
          f"{row['commit_bytes_at_100_timed'] / 1e6:.1f} MB; report {row['report_seconds_30_timed']:.2f} s",
          flush=True)
    return row


def exponent(rows: list[dict], key: str, least: int = 8) -> float | None:
    """e of y ~ P^e, least squares in log-log over P >= least (small P is start-up constants)."""
    points = [(r["ranks"], r[key]) for r in rows if r["ranks"] >= least and r[key] > 0]
    if len(points) < 2:
        return None
    P, y = np.log([p for p, _ in points]), np.log([v for _, v in points])
    return float(np.polyfit(P, y, 1)[0])


def main() -> None:
    if "--worker" in sys.argv:
        at = sys.argv.index("--worker")
        worker(sys.argv[at + 1], sys.argv[sys.argv.index("--") + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="2,4,8,16,32,64,128")
    parser.add_argument("--plan-ranks", default="64,256,1024,4096")
    parser.add_argument("--model-ranks", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        plans = [plan_seconds(int(P)) for P in args.plan_ranks.split(",")]
        for row in plans:
            print(f"plan P={row['ranks']}: schedule {row['schedule_seconds']:.3f} s, one stage's plan "
                  f"{row['plan_seconds']:.4f} s", flush=True)
        runs = [mpi_run(int(P), args.iters, directory) for P in args.ranks.split(",")]
        model = writer_model(args.model_ranks, directory)
    keys = [*PARTS, "setup_bytes_rank0", "setup_bytes_all_ranks", "timeline_bytes_per_timed_iteration",
            "trace_bytes", "report_seconds", "wall_seconds"]
    exponents = {key: exponent(runs, key) for key in keys}
    exponents.update({key: exponent(plans, key, least=256) for key in ("schedule_seconds", "plan_seconds")})
    print("fitted exponents (y ~ P^e):", ", ".join(f"{k} {v:.2f}" for k, v in exponents.items() if v is not None))
    RESULTS.write_text(json.dumps({
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "problem": "lad, D = P, d = 4, K = 8 (M = 8), --timeline-every 1", "runs": runs, "plans": plans,
        "writer_model": model, "exponents": exponents}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
