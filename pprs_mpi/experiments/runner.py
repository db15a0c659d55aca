"""Runs an experiment's independent solves: sharding, spreading over MPI ranks, skipping done runs, ETA.

Every run is one `pprs_mpi.minimize` call in this process with the serial engine on MPI.COMM_SELF,
so `mpirun -n P` gives P independent workers and a Slurm array (`--shard I/N`) gives N more.
Assignment is static and round-robin: shard I takes runs I, I+N, I+2N, ... and rank r of P takes
every P-th of those, so every run is done by exactly one (shard, rank).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pprs_mpi import api, config
from pprs_mpi.config import ConfigError
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
    """One solve: `name` is the trace's file stem under OUT/runs, `options` those of `pprs_mpi.minimize`
    (the problem among them; no `out`), `cost` its relative price for the ETA (see `cost`)."""

    name: str
    options: dict
    cost: float


def cost(iters: int, K: int) -> float:
    """ETA weight of a run whose K copies travel as one microbatch: an iteration costs about 1 + K/5 passes of
    one copy (per-iteration overhead; measured on the digits CNN: 3.7, 8 and 71 ms for K = 1, 10, 100)."""
    return iters * (1 + K / 5)


def solve_options(argv: list[str]) -> dict:
    """The solve options an experiment's command line passes on to every run (e.g. --network FILE)."""
    try:
        return config.given_by(argv)
    except ConfigError as err:
        raise ExperimentError(f"solve options {' '.join(argv)!r}: {err}") from None


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
            outcome, note = _solve(run, runs_dir / f"{run.name}.h5")
            counts[outcome] = counts.get(outcome, 0) + 1
            stop.requested |= outcome == "interrupted"
            done_cost += run.cost
            elapsed = time.perf_counter() - start
            eta = elapsed * (total_cost - done_cost) / done_cost if done_cost else 0.0
            print(f"{label}: {i}/{len(todo)} runs ({100 * i / len(todo):.0f}%)  elapsed {_clock(elapsed)}  "
                  f"ETA {_clock(eta)}  {run.name}: {outcome}{note}", flush=True)
    return counts, stop.requested


def _solve(run: Run, path: Path) -> tuple[str, str]:
    """Does one run (over an unfinished trace of it); (status, note): where a diverged run stopped, or
    why one failed. Options a solve rejects stop the experiment: its own arguments are wrong."""
    options = {**run.options, "engine": "serial", "quiet": True, "out": str(path), "overwrite": True}
    try:
        result = api.minimize(options.pop("problem"), comm=_comm_self(), **options)
    except ConfigError as err:
        raise ExperimentError(f"run {run.name} rejected its arguments: {err}") from None
    except api.RunFailed as err:
        return "failed", f" ({err})"
    if result.status == "diverged":
        return "diverged", f" at iteration {int(result.iterations[-1]) if len(result.iterations) else 0}"
    return result.status, f" ({result.message})" if result.message and result.status != "completed" else ""


class NotReady(Exception):
    """A phase cannot start yet: runs of an earlier phase (another shard's) are not finished."""


def run_all(phases: list, out: Path, protocol: dict, shard: tuple[int, int], label: str, collect,
            command: str = "") -> int:
    """Writes the protocol, does this process's share of each phase's runs in turn, then (one shard, rank 0)
    calls `collect()`, recording `command` and the wall time in OUT/sessions.json. A phase is (name, a function
    returning its runs); it is called once every process has finished the phase before, so its runs may depend
    on their results (e.g. report runs of tuned settings).

    Returns INTERRUPTED (3) when a signal stopped some process's share. A phase raising `NotReady` ends this
    command quietly (exit 0, to be run again). Under mpirun, any error ends the whole job, so that no rank
    waits forever in a reduction.
    """
    from mpi4py import MPI
    comm, stopped, ready = MPI.COMM_WORLD, False, True
    started = time.perf_counter()
    where = (f" rank {comm.rank}/{comm.size}" if comm.size > 1 else "") + (
        f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    try:
        write_protocol(out, protocol)
        for phase, make_runs in phases:
            tag = f"{label} {phase}" if len(phases) > 1 else label
            try:
                runs = make_runs()
            except NotReady as why:
                ready = False
                if comm.rank == 0:
                    print(f"{tag}: {why}", flush=True)
                break
            mine = assign(runs, shard, comm.rank, comm.size)
            print(f"{tag}{where}: {len(mine)} of {len(runs)} runs, traces in {out / 'runs'}", flush=True)
            counts, stopped = execute(mine, out / "runs", tag + where)
            print(f"{tag}{where}: {'stopped by a signal' if stopped else 'finished'}: "
                  + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
            if comm.size > 1:
                stopped = comm.allreduce(stopped, op=MPI.LOR)
            if stopped:
                break
    except Exception as err:  # noqa: BLE001 — under mpirun one rank's error must end every rank
        if comm.size == 1:
            raise
        print(f"{label} rank {comm.rank}: error: {err}", file=sys.stderr, flush=True)
        comm.Abort(1)
    if stopped:
        if comm.rank == 0:
            print(f"{label}: stopped by a signal; run the same command again to continue (finished runs are kept, "
                  f"an interrupted one starts over)", flush=True)
        return INTERRUPTED
    if not ready:
        return 0
    if shard[1] > 1:
        if comm.rank == 0:
            print(f"{label}: shard done; when all shards are, run the same command with --collect-only", flush=True)
        return 0
    if comm.rank == 0:
        record_session(out, time.perf_counter() - started, comm.size, command)
    return collect() if comm.rank == 0 else 0


def record_session(out: Path, wall_s: float, ranks: int, command: str) -> None:
    """Appends this invocation's wall time, rank count and machine to OUT/sessions.json (a resumed sweep has
    several), so that a report can say how long the experiment took and where."""
    path = out / "sessions.json"
    sessions = json.loads(path.read_text()) if path.exists() else []
    command = f"mpirun -n {ranks} {command}" if ranks > 1 and command else command
    sessions.append({"command": command, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "wall_s": round(wall_s, 1),
                     "ranks": ranks, "nproc": os.cpu_count(), "cpu": cpu_model()})
    path.write_text(json.dumps(sessions, indent=1))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _comm_self():
    from mpi4py import MPI
    return MPI.COMM_SELF


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
