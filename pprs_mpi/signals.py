"""Stop requests by signal: SIGTERM, SIGINT (Ctrl-C), or SIGUSR1 (Slurm's warning before a time limit,
which mpirun forwards), set a flag that the running loop checks at its next safe point. Outside the
iterations, where there is nothing to checkpoint, Ctrl-C ends the command line at once (`end_on_interrupt`)."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

from pprs_mpi.launch import launched_rank

INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a process that Ctrl-C ended


@contextmanager
def end_on_interrupt(prefix: str):
    """While active (from the first line of the command line's main: Python's imports, the setup, the builder,
    the last lines), SIGINT ends the process at once: one line (from rank 0 alone under a launcher) and exit
    code INTERRUPTED_EXIT, no traceback. A KeyboardInterrupt raised there instead could surface anywhere, even
    as an ImportError from inside NumPy's import; the trace needs nothing, as every commit is atomic (a kill -9
    leaves it as valid). `StopOnSignal` takes SIGINT over for the iterations, and gives it back after."""

    def end(signum, frame):
        if launched_rank() == 0:
            os.write(2, f"{prefix}interrupted (SIGINT) before the first iteration or after the last: stopped at "
                        "once, with nothing to checkpoint\n".encode())
        os._exit(INTERRUPTED_EXIT)

    previous = signal.signal(signal.SIGINT, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StopOnSignal:
    """While active, SIGTERM, SIGINT and SIGUSR1 set `requested` instead of ending the process (so Ctrl-C
    checkpoints and marks the trace 'interrupted' like SIGTERM); the previous handlers come back on exit,
    for callers that run several solves in one process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __enter__(self) -> "StopOnSignal":
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.requested = True
