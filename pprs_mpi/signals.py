"""Stop requests by signal: SIGTERM, SIGINT (Ctrl-C), or SIGUSR1 (Slurm's warning before a time limit,
which mpirun forwards), set a flag that the running loop checks at its next safe point."""

from __future__ import annotations

import signal


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
