"""Pipeline efficiency of the MPI engine: a chain of 2 equal, heavy stages on 2 ranks.

For K in {1, 4, 16, 64} it measures the mean iteration wall time, and once the unit cost c (one
stage's forward or backward on one microbatch, measured alone) and an MPI ping-pong latency. It
prints runtime efficiency = 2(K + P − 1)·c / measured (with c measured alone, and with the median
unit inside the run, which shows contention between the ranks), the speedup over the serial engine
on the same problem, and the per-message overhead (measured − ideal) / messages against the
ping-pong (for the empty pipeline also with ops that only pass their array on: the engine's own cost);
for the empty pipeline also the serial engine's time for the same work, the floor that two
ranks can at best halve.

A "small problem" row runs the README's default job (lad, depth 8, d = 16, K = 8) through
`pprs_mpi.minimize`: iteration time (the trace's per-iteration wall time) and pipeline efficiency
(makespan × mean action time / iteration time) on 4 ranks, and serially (sum of one iteration's
action times / iteration time), in interleaved rounds.
The table is saved to benchmarks/results/pipeline_efficiency.json (pipeline_efficiency_gpu.json).

    python benchmarks/pipeline_efficiency.py            # launches itself under mpirun -n 2, then -n 4
    python benchmarks/pipeline_efficiency.py --unit-ms 5 --samples 1,4,16,64
    python benchmarks/pipeline_efficiency.py --device gpu   # each rank on its node-local GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per rank: the two stages must not fight over BLAS threads

import numpy as np

from pprs_mpi.api import engine_for
from pprs_mpi.backend import Backend, select
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.graph import Graph
from pprs_mpi.ops import Op

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DIM = 256
RANKS = 2
SMALL_PROBLEM = ["--problem", "lad", "--depth", "8"]  # the README's first command
SMALL_RANKS = 4
SMALL_ITERATIONS = 400
SAMPLED = 20  # the timeline's sampling in a 2,000-iteration run (config: --timeline-every defaults to ⌈T/100⌉)


class Busy(Op):
    """Identity (or sum, as the leaf) whose forward and VJP each burn the same fixed matmul work (none: `work`
    None, the least an op can do, so that what is left is the engine's own cost)."""

    def __init__(self, work: np.ndarray | None, leaf: bool):
        self.work, self.leaf = work, leaf

    def output_shape(self, shape):
        return () if self.leaf else shape

    def _burn(self, xp, like):
        if self.work is None:
            return 0.0
        w = self.const(xp, "work", like.dtype)
        return (w @ w)[0, 0] * 0.0  # 0.0 keeps the result exact; the matmul is the cost (asynchronous on a GPU)

    def forward(self, xp, x):
        zero = self._burn(xp, x)
        return x.sum(axis=1) + zero if self.leaf else x + zero

    def vjp(self, xp, inputs, output, cotangent):
        zero = self._burn(xp, inputs[0])
        grad = xp.broadcast_to(cotangent[:, None], inputs[0].shape) if self.leaf else cotangent
        return (grad + zero,)


def work_size(backend: Backend, unit_ms: float) -> int:
    """Side n of the n×n matmul that takes about unit_ms on this core or GPU."""
    n = 64
    while n < 16384:
        work = backend.xp.ones((n, n), dtype=backend.dtype)
        work @ work  # warm-up: a GPU's first matmul of a shape loads its kernel
        backend.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            work @ work
        backend.synchronize()
        if (time.perf_counter() - start) / 5 * 1e3 >= unit_ms:
            break
        n = int(n * 1.1)
    return n


def chain(n: int) -> Graph:
    """Two Busy nodes (identity, then sum) burning an n×n matmul per forward and per VJP (n = 0: nothing)."""
    work = np.random.default_rng(0).standard_normal((n, n)) if n else None
    return Graph.chain(DIM, [Busy(work, leaf=False), Busy(work, leaf=True)])


def unit_cost(graph: Graph, backend: Backend, repeats: int = 20) -> float:
    """Median seconds of one stage's forward or backward on one microbatch, alone."""
    op, x = graph.op(graph.order[0]), backend.xp.ones((1, DIM), dtype=backend.dtype)
    times = []
    for _ in range(repeats + 1):  # the first, untimed, moves the op's constants to the device
        start = time.perf_counter()
        op.forward(backend.xp, x)
        backend.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def engines(graph: Graph, K: int, backend: Backend, comm=None, cuda_aware: bool = False, timeline_every: int = 1):
    sampling = Sampling(K, gamma=0.1, seed=0, microbatch_size=1)
    return engine_for(graph, graph.stages(RANKS), sampling, backend, comm=comm, cuda_aware=cuda_aware,
                      timeline_every=timeline_every)


def mean_iteration(engine, backend: Backend, iterations: int) -> float:
    x = backend.xp.zeros(DIM, dtype=backend.dtype)
    engine.gradient(x, 0)  # warm-up: first-touch allocations
    start = time.perf_counter()
    for t in range(1, iterations + 1):
        engine.gradient(x, t)
    return (time.perf_counter() - start) / iterations


def sleep_until_all_arrive(comm) -> None:
    """A barrier that waits asleep instead of spinning."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(1e-3)


def ping_pong(comm, buffer: np.ndarray | None = None, repeats: int = 200) -> float:
    """Half the round trip of `buffer` (default DIM float64) between ranks 0 and 1, in seconds."""
    buffer = np.zeros(DIM) if buffer is None else buffer
    for timed in (False, True):  # the first exchanges set up the connection: not timed
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            if comm.rank == 0:
                comm.Send(buffer, dest=1)
                comm.Recv(buffer, source=1)
            elif comm.rank == 1:
                comm.Recv(buffer, source=0)
                comm.Send(buffer, dest=0)
    return (time.perf_counter() - start) / repeats / 2


def worker(args) -> None:
    """Runs under mpirun: every rank builds the same graph; rank 0 measures and writes the table."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    backend = select(args.device, local_rank=comm.Split_type(MPI.COMM_TYPE_SHARED).rank)
    cuda_aware = backend.cuda_awareness()[0]
    devices = comm.gather(f"{backend.device} ({backend.staging(cuda_aware).path})", root=0)
    # Rank 0 sizes the work and measures c while the other rank sleeps: "measured alone". (A rank
    # blocked in an MPI call busy-polls and, on hyperthreads, would slow rank 0's measurement.)
    n = work_size(backend, args.unit_ms) if comm.rank == 0 else None
    sleep_until_all_arrive(comm)
    graph = chain(comm.bcast(n, root=0))
    c = unit_cost(graph, backend) if comm.rank == 0 else 0.0
    sleep_until_all_arrive(comm)
    latency = ping_pong(comm)
    rows = []
    for K in args.samples:
        engine = engines(graph, K, backend, comm, cuda_aware)
        if comm.rank != 0:
            engine.serve()
            continue
        iterations = max(3, int(args.seconds / (2 * (K + RANKS - 1) * c)))
        measured = mean_iteration(engine, backend, iterations)
        records, _ = engine.gather()
        engine.stop()
        last = records[records["iteration"] == records["iteration"].max()]
        computing = last[last["phase"] < 2]
        c_run = float(np.mean(computing["end"] - computing["start"]))  # the same unit, inside the pipeline
        busy = [float((computing["end"] - computing["start"])[computing["rank"] == r].sum()) /
                float(last["end"][last["rank"] == r].max() - last["start"][last["rank"] == r].min())
                for r in range(RANKS)]
        serial = mean_iteration(engines(graph, K, backend), backend, max(2, iterations // 2))
        ideal = 2 * (K + RANKS - 1) * c
        messages = 3 * K  # per microbatch: one activation, one cotangent, one leaf value to rank 0
        ideal_run = 2 * (K + RANKS - 1) * c_run
        rows.append({"K": K, "iterations": iterations, "measured_s": measured, "ideal_s": ideal,
                     "efficiency": ideal / measured, "unit_cost_in_run_s": c_run,
                     "efficiency_in_run_unit": ideal_run / measured, "busy_fraction_per_rank": busy,
                     "serial_s": serial, "speedup": serial / measured,
                     "overhead_per_message_s": (measured - ideal_run) / messages})
    # The same pipeline with (almost) no work: what each message costs the engine, all included, with every
    # iteration's actions timed (as in runs of up to 100 iterations) and with every SAMPLED-th only (the default
    # of a 2,000-iteration run: `--timeline-every` is ⌈T/100⌉); and, sampled, with ops that do nothing but pass
    # the array on (n = 0): the engine's own cost
    per_message = {}
    for n, every in ((1, 1), (1, SAMPLED), (0, SAMPLED)):
        empty = engines(chain(n), 64, backend, comm, cuda_aware, timeline_every=every)
        if comm.rank != 0:
            empty.serve()
            continue
        per_message[n, every] = mean_iteration(empty, backend, 2 * SAMPLED) / (3 * 64)
        empty.stop()
    if comm.rank == 0:
        # the same work in one process, no MPI: the ops, the noise and the engine's bookkeeping of both stages
        serial_per_message = mean_iteration(engines(chain(1), 64, backend), backend, 20) / (3 * 64)
        table = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                 "mpi": MPI.Get_library_version().split("\x00")[0].splitlines()[0].strip(), "ranks": RANKS,
                 "devices": devices,
                 "unit_cost_s": c, "ping_pong_latency_s": latency, "empty_pipeline_s_per_message": per_message[1, 1],
                 "empty_pipeline_sampled_s_per_message": per_message[1, SAMPLED], "sampled_every": SAMPLED,
                 "noop_pipeline_sampled_s_per_message": per_message[0, SAMPLED],
                 "empty_serial_s_per_message": serial_per_message, "rows": rows}
        results = RESULTS_DIR / f"pipeline_efficiency{'_gpu' if backend.on_gpu else ''}.json"
        results.parent.mkdir(exist_ok=True)
        results.write_text(json.dumps(table, indent=2))
        print_table(table)
        print(f"saved {results}")


def small_problem_worker(args) -> None:
    """Runs under mpirun -n SMALL_RANKS: the README default through `pprs_mpi.minimize` on every rank and,
    on rank 0 alone, serially, in interleaved rounds. Rank 0 adds the row to the table the 2-rank run saved."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    folder = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0)
    rows = {"mpi": [], "serial": []}
    for r in range(args.rounds):  # interleaved, so that load from elsewhere hits both alike
        rows["mpi"].append(_small_round(comm, f"{folder}/mpi{r}.h5"))
        if comm.rank == 0:
            rows["serial"].append(_small_round(MPI.COMM_SELF, f"{folder}/serial{r}.h5", engine="serial"))
        sleep_until_all_arrive(comm)
    if comm.rank == 0:
        results = RESULTS_DIR / "pipeline_efficiency.json"
        table = json.loads(results.read_text())
        table["small_problem"] = {
            "command": "python -m pprs_mpi.solve " + " ".join(SMALL_PROBLEM), "ranks": SMALL_RANKS,
            "iterations": SMALL_ITERATIONS,
            **{f"{engine}_{key}": float(np.median([r[key] for r in rounds]))
               for engine, rounds in rows.items() for key in rounds[0]}}
        results.write_text(json.dumps(table, indent=2))
        print_table(table)


def _small_round(comm, out: str, **options) -> dict:
    """Iteration time (median of the trace's per-iteration wall times) and pipeline efficiency of one run
    of the README default; {} on ranks other than 0."""
    import pprs_mpi
    from pprs_mpi.trace import load
    result = pprs_mpi.minimize(SMALL_PROBLEM[1], comm=comm, problem_args={"depth": int(SMALL_PROBLEM[3])},
                               iters=SMALL_ITERATIONS, eval_every=0, quiet=True, out=out, **options)
    if result is None:
        return {}
    trace = load(result.trace)
    per_iteration = float(np.median(np.diff(trace.columns["wall_time"])))
    records = trace.timeline[trace.timeline["phase"] < 2]
    actions = records["end"] - records["start"]
    per_pass = len(records) / len(np.unique(records["iteration"]))  # actions of one recorded iteration
    ideal = trace.attrs["makespan"] * float(actions.mean()) if comm.size > 1 else per_pass * float(actions.mean())
    return {"iteration_s": per_iteration, "efficiency": ideal / per_iteration,
            "makespan": float(trace.attrs["makespan"]), "mean_action_s": float(actions.mean())}


def print_table(table: dict) -> None:
    print(f"machine: {table['machine']}; {table['mpi']}; {table['ranks']} ranks on {', '.join(table['devices'])}")
    print(f"unit cost c = {table['unit_cost_s'] * 1e3:.2f} ms, "
          f"ping-pong latency = {table['ping_pong_latency_s'] * 1e6:.1f} us")
    print("efficiency = 2(K+P-1)c / measured, c alone; eff(c_run): c_run = mean unit inside the run (both ranks")
    print("computing at once); busy = compute / span per rank; overhead/msg = (measured - 2(K+P-1)c_run) / 3K")
    print(f"{'K':>4} {'measured ms':>12} {'ideal ms':>9} {'efficiency':>10} {'c_run ms':>9} {'eff(c_run)':>10} "
          f"{'busy r0/r1':>11} {'serial ms':>10} {'speedup':>8} {'overhead/msg us':>16}")
    for r in table["rows"]:
        busy = "/".join(f"{b:.2f}" for b in r["busy_fraction_per_rank"])
        print(f"{r['K']:>4} {r['measured_s'] * 1e3:>12.2f} {r['ideal_s'] * 1e3:>9.2f} {r['efficiency']:>10.3f} "
              f"{r['unit_cost_in_run_s'] * 1e3:>9.2f} {r['efficiency_in_run_unit']:>10.3f} {busy:>11} "
              f"{r['serial_s'] * 1e3:>10.2f} {r['speedup']:>8.2f} {r['overhead_per_message_s'] * 1e6:>16.1f}")
    print(f"empty stages, K=64: {table['empty_pipeline_s_per_message'] * 1e6:.1f} us per message "
          f"({table['empty_pipeline_s_per_message'] / table['ping_pong_latency_s']:.1f}x the ping-pong latency; "
          "this includes the Python work of posting, testing and recording each message)")
    if "empty_pipeline_sampled_s_per_message" in table:
        print(f"  timed in every {table['sampled_every']}th iteration only (a 2,000-iteration run's default): "
              f"{table['empty_pipeline_sampled_s_per_message'] * 1e6:.1f} us per message "
              f"({table['empty_pipeline_sampled_s_per_message'] / table['ping_pong_latency_s']:.1f}x)")
    if "noop_pipeline_sampled_s_per_message" in table:
        print(f"  the same with ops that only pass their array on (the engine's own cost): "
              f"{table['noop_pipeline_sampled_s_per_message'] * 1e6:.1f} us per message "
              f"({table['noop_pipeline_sampled_s_per_message'] / table['ping_pong_latency_s']:.1f}x)")
    if "empty_serial_s_per_message" in table:
        print(f"  the serial engine on the same empty stages: {table['empty_serial_s_per_message'] * 1e6:.1f} us per "
              "message-equivalent (the same ops, noise and bookkeeping, no MPI: what two ranks can at best halve)")
    small = table.get("small_problem")
    if small:
        print(f"small problem ({small['command']}), median of interleaved rounds:")
        print(f"  {small['ranks']} ranks: {small['mpi_iteration_s'] * 1e3:.3f} ms per iteration, pipeline efficiency "
              f"{small['mpi_efficiency']:.1%} ({small['mpi_makespan']:.0f} units of "
              f"{small['mpi_mean_action_s'] * 1e6:.1f} us)")
        print(f"  serial:  {small['serial_iteration_s'] * 1e3:.3f} ms per iteration, compute fraction "
              f"{small['serial_efficiency']:.1%} ({small['serial_mean_action_s'] * 1e6:.1f} us per action)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unit-ms", type=float, default=5.0, help="target unit cost c in ms (default 5)")
    p.add_argument("--samples", type=lambda s: [int(k) for k in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=3.0, help="rough time budget per K")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where each rank computes (default cpu)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the small problem (default 3)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--small-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.small_worker:
        return small_problem_worker(args)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}
    command = ["mpirun", "-n", str(RANKS), sys.executable, __file__, "--worker", "--unit-ms", str(args.unit_ms),
               "--samples", ",".join(map(str, args.samples)), "--seconds", str(args.seconds), "--device", args.device]
    code = subprocess.run(command, env=env, timeout=900).returncode
    if code == 0 and args.device == "cpu":
        small = ["mpirun", "-n", str(SMALL_RANKS), sys.executable, __file__, "--small-worker",
                 "--rounds", str(args.rounds)]
        code = subprocess.run(small, env=env, timeout=900).returncode
    sys.exit(code)


if __name__ == "__main__":
    main()
