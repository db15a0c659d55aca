"""Runs an experiment's independent solves: sharding, spreading over MPI ranks, skipping done runs, ETA.

Every run is one `pprs_mpi.solve.main` call in this process with the serial engine on MPI.COMM_SELF,
so `mpirun -n P` gives P independent workers and a Slurm array (`--shard I/N`) gives N more.
Assignment is static and round-robin: shard I takes runs I, I+N, I+2N, ... and rank r of P takes
every P-th of those, so every run is done by exactly one (shard, rank).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pprs_mpi import solve
from pprs_mpi.signals import StopOnSignal
from pprs_mpi.trace import TraceError, load

FINISHED = ("completed", "diverged")
INTERRUPTED = 3  # exit code of a sweep stopped by SIGTERM/SIGUSR1, as for solve


class ExperimentError(ValueError):
    """Bad input or an unusable output folder; the message is one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is an ExperimentError (one line, exit 2) instead of usage text."""

    def error(self, message):
        raise ExperimentError(message)


@dataclass(frozen=True)
class Run:
    """One solve: `name` is the trace's file stem under OUT/runs, `argv` the solve flags (no --out),
    `cost` its relative price for the ETA (see `cost`)."""

    name: str
    argv: tuple[str, ...]
    cost: float


def cost(iters: int, K: int) -> float:
    """ETA weight of a run whose K copies travel as one microbatch: an iteration costs about 1 + K/5 passes of
    one copy (per-iteration overhead; measured on the digits CNN: 3.7, 8 and 71 ms for K = 1, 10, 100)."""
    return iters * (1 + K / 5)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' → (I, N) with 0 ≤ I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ExperimentError(f"--shard must look like I/N (e.g. 3/10), got '{text}'") from None
    if not 0 <= index < count:
        raise ExperimentError(f"--shard I/N needs 0 <= I < N, got '{text}'")
    return index, count


def assign(runs: list[Run], shard: tuple[int, int], rank: int, size: int) -> list[Run]:
    """The runs of shard `shard` that rank `rank` of `size` does."""
    index, count = shard
    return runs[index::count][rank::size]


def write_protocol(out: Path, protocol: dict) -> None:
    """OUT/protocol.json, so that `--collect-only` and later shards know the grid; refuses a different one."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "protocol.json"
    if path.exists() and read_protocol(out) != json.loads(json.dumps(protocol)):
        raise ExperimentError(f"{path} describes a different experiment or grid: use another --out")
    temporary = out / f".protocol.{os.getpid()}.json"
    temporary.write_text(json.dumps(protocol, indent=1, sort_keys=True))
    temporary.replace(path)  # atomic, so concurrent shards never see a half-written file


def read_protocol(out: Path) -> dict:
    path = out / "protocol.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExperimentError(f"cannot read {path} ({err}): run the experiment into this --out first") from None


def status(path: Path) -> str:
    """The trace's status, or 'missing' / 'unreadable'."""
    if not path.exists():
        return "missing"
    try:
        return load(path).status
    except TraceError:
        return "unreadable"


def execute(runs: list[Run], runs_dir: Path, label: str) -> tuple[dict[str, int], bool]:
    """Does the runs whose trace is not already finished, printing a progress line with ETA after each.

    Returns the count of each final status and whether a signal stopped the sweep. A solve that rejects
    its input (exit 2) stops everything:
    it means the experiment's own arguments are wrong. SIGTERM or SIGUSR1 (Slurm's warning) stops the
    sweep: during a run, solve itself stops it ('interrupted'); between runs, `StopOnSignal` notices.
    """
    runs_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    todo = [run for run in runs if status(runs_dir / f"{run.name}.h5") not in FINISHED]
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"{label}: {skipped} of {len(runs)} runs already finished, skipped", flush=True)
        counts["skipped"] = skipped
    total_cost, done_cost, start = sum(run.cost for run in todo), 0.0, time.perf_counter()
    with StopOnSignal() as stop:
        for i, run in enumerate(todo, 1):
            if stop.requested:
                break
            path = runs_dir / f"{run.name}.h5"
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                code = solve.main([*run.argv, "--engine", "serial", "--quiet", "--overwrite", "--out", str(path)],
                                  comm=_comm_self())  # an unfinished trace is redone
            if code == solve.BAD_INPUT:
                raise ExperimentError(f"run {run.name} rejected its arguments: {stderr.getvalue().strip()}")
            outcome, note = _outcome(path, stderr.getvalue())
            counts[outcome] = counts.get(outcome, 0) + 1
            stop.requested |= outcome == "interrupted"
            done_cost += run.cost
            elapsed = time.perf_counter() - start
            eta = elapsed * (total_cost - done_cost) / done_cost if done_cost else 0.0
            print(f"{label}: {i}/{len(todo)} runs ({100 * i / len(todo):.0f}%)  elapsed {_clock(elapsed)}  "
                  f"ETA {_clock(eta)}  {run.name}: {outcome}{note}", flush=True)
    return counts, stop.requested


def _outcome(path: Path, stderr: str) -> tuple[str, str]:
    """(status, note): where a diverged run stopped, or the solve's last error line for a failed one."""
    try:
        trace = load(path)
    except TraceError as err:
        return "unreadable", f" ({err})"
    if trace.status == "diverged":
        return "diverged", f" at iteration {int(trace.columns['iteration'][-1]) if trace.n_rows else 0}"
    lines = stderr.strip().splitlines()
    return trace.status, f" ({lines[-1]})" if trace.status != "completed" and lines else ""


def run_all(runs: list[Run], out: Path, protocol: dict, shard: tuple[int, int], label: str, collect) -> int:
    """Writes the protocol, does this process's share of `runs`, then (one shard, rank 0) calls `collect()`.

    Returns INTERRUPTED (3) when a signal stopped some process's share. Under mpirun, any error ends the whole
    job, so that no rank waits forever in the final reduction.
    """
    from mpi4py import MPI
    comm, stopped = MPI.COMM_WORLD, False
    try:
        write_protocol(out, protocol)
        mine = assign(runs, shard, comm.rank, comm.size)
        where = f" rank {comm.rank}/{comm.size}" if comm.size > 1 else ""
        where += f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""
        print(f"{label}{where}: {len(mine)} of {len(runs)} runs, traces in {out / 'runs'}", flush=True)
        counts, stopped = execute(mine, out / "runs", label + where)
        print(f"{label}{where}: {'stopped by a signal' if stopped else 'finished'}: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
    except Exception as err:  # noqa: BLE001 — under mpirun one rank's error must end every rank
        if comm.size == 1:
            raise
        print(f"{label} rank {comm.rank}: error: {err}", file=sys.stderr, flush=True)
        comm.Abort(1)
    if comm.allreduce(stopped, op=MPI.LOR) if comm.size > 1 else stopped:
        if comm.rank == 0:
            print(f"{label}: stopped by a signal; run the same command again to continue (finished runs are kept, "
                  f"an interrupted one starts over)", flush=True)
        return INTERRUPTED
    if shard[1] > 1:
        if comm.rank == 0:
            print(f"{label}: shard done; when all shards are, run the same command with --collect-only", flush=True)
        return 0
    return collect() if comm.rank == 0 else 0


def _comm_self():
    from mpi4py import MPI
    return MPI.COMM_SELF


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
