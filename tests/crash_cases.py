"""Crash-consistency cases for the trace: the real solver killed with SIGKILL at random points (also
inside checkpoint commits), or stopped by a full disk, then resumed with --resume.

Each case forks a child of this process (MPI is initialised once here; children solve on
COMM_SELF, so a case costs a fork, not an interpreter and MPI start-up), lets it run a random
distance, ends it, and checks that

- the trace loads and its last checkpoint reads (else the case counts as unresumable),
- at most --checkpoint-every iterations are redone: the iterations the child had done when it
  died, minus the checkpoint's iteration,
- --resume completes and gives bitwise the iterates and rows of an uninterrupted run.

Kill points: `async` (the parent's SIGKILL at a random moment of the run, wherever the child is),
`in-checkpoint` (SIGKILL from a timer started as a checkpoint commit begins, landing at a random
point of the commit), `step` (SIGKILL at one step of the commit protocol: half-way through writing
the temporary file, before or after the rename, after the directory's fsync). A killed child never
ends its run on its own: before its last iteration it waits for the kill, so a loaded machine (a
parent scheduled late, a slow commit stretching the in-checkpoint timer) moves where the kill lands,
never whether it lands; what is checked is the property, for whatever point that is. Full disk: a real
tmpfs of random size when one can be mounted, else ENOSPC injected into the writer's os.write at a
random commit. Used by tests/test_durability.py (CI size) and benchmarks/crash_harness.py (long).
"""

from __future__ import annotations

import mmap
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

SMALL = ["--problem", "branch", "--depth", "4", "--dim", "6", "--rows", "8", "-K", "4", "--gamma", "0.05",
         "--lr", "0.02", "--mu", "nesterov", "--eval-every", "5", "--seed", "3", "--quiet"]
KILLS = ("async", "in-checkpoint", "step")
STEPS = ("mid-write", "before-rename", "after-rename", "after-dir-fsync")
CHILD_TIMEOUT_S = 60.0
CHECKPOINT_EVERY = (4, 6, 10)  # --checkpoint-every of a case, drawn at random


@dataclass
class Tally:
    """What the cases found; `unresumable` lists the failures and must stay empty."""

    kills: dict = field(default_factory=dict)  # kind -> count
    enospc: int = 0
    unresumable: list = field(default_factory=list)
    max_redone: int = 0
    checkpoint_every_of_max: int = 0
    before_first_checkpoint: int = 0
    full_disk: str = ""  # "tmpfs" (a real one) or "injected"

    def summary(self) -> dict:
        return {"kills": sum(self.kills.values()), "kills_by_kind": dict(self.kills), "enospc_cases": self.enospc,
                "full_disk": self.full_disk,
                "unresumable": len(self.unresumable), "max_iterations_redone": self.max_redone,
                "checkpoint_every_at_max": self.checkpoint_every_of_max,
                "killed_before_first_checkpoint": self.before_first_checkpoint}


class Harness:
    """Runs cases in `workdir` on traces of `iters` iterations; `disk` is a tmpfs mount point or None."""

    def __init__(self, workdir, iters: int = 100, seed: int = 0, disk=None):
        from mpi4py import MPI  # initialised here, before any fork
        from pprs_mpi import solve, trace
        self.comm, self.solve, self.T = MPI.COMM_SELF, solve, trace
        self.workdir, self.iters, self.disk = str(workdir), iters, disk and str(disk)
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.progress = mmap.mmap(-1, 8)  # iterations done by the running child, shared through fork
        reference = os.path.join(self.workdir, "reference.h5")
        code, err = self._child([*SMALL, "--iters", str(iters), "--out", reference])
        assert code == 0, err
        self.reference = trace.load(reference)

    def kill_case(self, kind: str) -> None:
        """One run killed by SIGKILL at a point of `kind`, then resumed and compared."""
        every = self.rng.choice(CHECKPOINT_EVERY)
        path = self._fresh_path()
        target = self.rng.randrange(every, self.iters - every - 1)  # a periodic checkpoint before and after
        argv = [*SMALL, "--iters", str(self.iters), "--checkpoint-every", str(every), "--out", path]
        hook = {"async": None, "in-checkpoint": ("timer", target), "step": (self.rng.choice(STEPS), target)}[kind]
        code, err = self._child(argv, hook, kill_at=target if kind == "async" else None, wait_at=self.iters - 1)
        if code != -signal.SIGKILL:
            self.tally.unresumable.append(f"{kind}: the child was not killed (exit {code}: {err[-300:]})")
            return
        self.tally.kills[kind] = self.tally.kills.get(kind, 0) + 1
        self._check_and_resume(path, every, f"{kind} at iteration {self._done()}")

    def enospc_case(self) -> None:
        """One run on a disk that fills up (a real tmpfs, or ENOSPC injected), resumed once space is back."""
        every = self.rng.choice(CHECKPOINT_EVERY)
        path = self._fresh_path()
        argv = [*SMALL, "--iters", str(self.iters), "--checkpoint-every", str(every), "--timeline-every", "1",
                "--out", path]
        if self.disk:
            self._mount_size(f"{self.rng.randrange(24, 400)}k")
            code, err = self._child(argv)
        else:
            code, err = self._child(argv, ("enospc", self.rng.randrange(2, 40)))
        if code == 0:
            return  # the run fitted: not a full-disk case
        self.tally.enospc += 1
        if code not in (1, 2) or "No space left on device" not in err or err.count("\n") != 1:
            self.tally.unresumable.append(f"enospc: exit {code}, not one line naming ENOSPC: {err[-300:]}")
            return
        leftovers = sorted(set(os.listdir(os.path.dirname(path))) - {os.path.basename(path)})
        if leftovers:
            self.tally.unresumable.append(f"enospc: files left beside the trace: {leftovers}")
        if self.disk:
            self._mount_size("64m")
        if code == 2:  # the disk could not hold the trace's first version: refused before the run began
            self.tally.before_first_checkpoint += not os.path.exists(path)
            return
        self._check_and_resume(path, every, f"enospc at iteration {self._done()}")

    def _check_and_resume(self, path: str, every: int, what: str) -> None:
        T = self.T
        try:
            T.load(path)
            checkpoint = T.read_checkpoint(path)[1]["iteration"]
        except T.TraceError as err:
            if "no checkpoint" in str(err):
                self.tally.before_first_checkpoint += 1
                return
            self.tally.unresumable.append(f"{what}: {err}")
            return
        redone = self._done() - checkpoint
        if redone > every:
            self.tally.unresumable.append(f"{what}: {redone} iterations to redo, more than --checkpoint-every {every}")
        if redone > self.tally.max_redone:
            self.tally.max_redone, self.tally.checkpoint_every_of_max = redone, every
        code, err = self._child(["--resume", path])
        if code != 0:
            self.tally.unresumable.append(f"{what}: --resume exited {code}: {err[-300:]}")
        elif not same_run(T.load(path), self.reference):
            self.tally.unresumable.append(f"{what}: the resumed run differs from the uninterrupted one")

    def _fresh_path(self) -> str:
        where = self.disk or self.workdir
        for name in os.listdir(where):
            if name.startswith("case"):
                os.unlink(os.path.join(where, name))
        return os.path.join(where, "case.h5")

    def _mount_size(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", self.disk], check=True, timeout=30)

    def _done(self) -> int:
        return struct.unpack("q", self.progress[:8])[0]

    def _child(self, argv: list[str], hook=None, kill_at: int | None = None, wait_at: int | None = None
               ) -> tuple[int, str]:
        """Runs solve.main(argv) in a forked child; returns its exit code (-9 when killed) and stderr. With
        `kill_at` the parent kills it once it has done that many iterations; with `wait_at` the child, having
        done that many, waits to be killed (by the parent or its own hook) instead of going on."""
        self.progress[:8] = struct.pack("q", 0)
        err_path = os.path.join(self.workdir, "child.err")
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                sys.stderr = open(err_path, "w", buffering=1)  # pytest may have replaced sys.stderr
                sys.stdout = open(os.devnull, "w")
                os.dup2(sys.stderr.fileno(), 2)
                self._install(hook, wait_at)
                code = self.solve.main(argv, comm=self.comm)
            finally:
                os._exit(code)
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if kill_at is not None and not killed and self._done() >= kill_at:
                time.sleep(self.rng.uniform(0, 0.003))  # somewhere in the next iteration(s)
                os.kill(pid, signal.SIGKILL)
                killed = True
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return 124, "timed out"
            time.sleep(0.0002)
        with open(err_path) as f:
            return os.waitstatus_to_exitcode(status), f.read()

    def _install(self, hook, wait_at: int | None) -> None:
        """In the child: count iterations done into shared memory (and wait for the kill at `wait_at`), and arm
        the kill or ENOSPC hook."""
        T, progress = self.T, self.progress
        append = T.TraceWriter.append

        def counting_append(writer, **row):
            append(writer, **row)
            progress[:8] = struct.pack("q", int(row["iteration"]))
            if wait_at is not None and row["iteration"] >= wait_at:
                time.sleep(2 * CHILD_TIMEOUT_S)  # the kill comes first: the parent's deadline at the latest
        T.TraceWriter.append = counting_append
        if hook is None:
            return
        what, when = hook
        if what == "enospc":
            _fail_nth_call(T.os, "write", when, OSError(28, "No space left on device"))
        elif what == "timer":
            _kill_during_checkpoint_after(T, progress, when, self.rng.uniform(0, 1))
        else:
            _kill_at_step(T, progress, when, what)


def same_run(a, b) -> bool:
    """Bitwise the same iterates and per-iteration columns (wall times aside)."""
    return (np.array_equal(a.result["y"], b.result["y"]) and np.array_equal(a.result["x"], b.result["x"])
            and all(np.array_equal(a.columns[c], b.columns[c], equal_nan=True)
                    for c in ("iteration", "pipeline_time", "f_smoothed", "f_eval", "grad_norm", "step_size")))


def _iterations_done(progress) -> int:
    return struct.unpack("q", progress[:8])[0]


def _suicide() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _fail_nth_call(module, name: str, n: int, error: BaseException) -> None:
    real, calls = getattr(module, name), [0]

    def failing(*args):
        calls[0] += 1
        if calls[0] == n:
            raise error
        return real(*args)
    setattr(module, name, failing)


def _kill_during_checkpoint_after(T, progress, iteration: int, fraction: float) -> None:
    """SIGKILL at `fraction` of the expected duration of the first checkpoint commit after `iteration`
    (a timer thread started as the commit begins, so the kill lands wherever the writer then is)."""
    real, durations = T.TraceWriter.write_checkpoint, [0.002]

    def timed(writer, arrays, attrs):
        if _iterations_done(progress) >= iteration:
            threading.Timer(fraction * max(durations), _suicide).start()
        started = time.perf_counter()
        real(writer, arrays, attrs)
        durations.append(time.perf_counter() - started)
    T.TraceWriter.write_checkpoint = timed


def _kill_at_step(T, progress, iteration: int, step: str) -> None:
    """SIGKILL at one step of the first checkpoint commit after `iteration`."""
    real_write, real_replace, real_fsync_dir = os.write, os.replace, T._fsync_dir
    write_checkpoint, armed = T.TraceWriter.write_checkpoint, [False]

    def arming(writer, arrays, attrs):
        armed[0] = _iterations_done(progress) >= iteration
        write_checkpoint(writer, arrays, attrs)
        armed[0] = False

    def write(fd, data):
        if armed[0] and step == "mid-write":
            real_write(fd, data[:len(data) // 2])
            _suicide()
        return real_write(fd, data)

    def replace(src, dst):
        if armed[0] and step == "before-rename":
            _suicide()
        real_replace(src, dst)
        if armed[0] and step == "after-rename":
            _suicide()

    def fsync_dir(path):
        real_fsync_dir(path)
        if armed[0] and step == "after-dir-fsync":
            _suicide()
    T.TraceWriter.write_checkpoint, T._fsync_dir, T.os.write, T.os.replace = arming, fsync_dir, write, replace


def mount_tmpfs(where) -> bool:
    """Mounts a small tmpfs at `where` (root only); False where that is not permitted."""
    os.makedirs(where, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    command = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def unmount(where) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def run_cases(workdir, kills: int, enospc: int, iters: int = 100, seed: int = 0, use_tmpfs: bool = True) -> Tally:
    """`kills` kill cases (kinds in turn) and `enospc` full-disk cases; returns the tally."""
    disk = os.path.join(str(workdir), "disk")
    mounted = use_tmpfs and mount_tmpfs(disk)
    try:
        harness = Harness(workdir, iters=iters, seed=seed, disk=disk if mounted else None)
        harness.tally.full_disk = "tmpfs" if mounted else "injected"
        for i in range(kills):
            harness.kill_case(KILLS[i % len(KILLS)])
        for _ in range(enospc):
            harness.enospc_case()
        return harness.tally
    finally:
        if mounted:
            unmount(disk)
