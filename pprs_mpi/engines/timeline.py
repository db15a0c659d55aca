"""What the engines record per rank: timeline phases and records, and the per-rank memory figures.

The single definition of the phase codes and the record layout; the trace and the report read them
from here (this module imports nothing of the package).
"""

from __future__ import annotations

import time

import numpy as np

FORWARD_PHASE, BACKWARD_PHASE, WAIT_PHASE = 0, 1, 2
PHASES = ("forward", "backward", "wait")  # indexed by the phase codes above
TIMELINE_DTYPE = np.dtype([("rank", "i4"), ("iteration", "i8"), ("microbatch", "i4"), ("phase", "u1"),
                           ("node", "i4"), ("start", "f8"), ("end", "f8")])
MEMORY_KEYS = ("peak_stash", "buffer_bytes", "peak_send_bytes")  # each rank's memory figures, in this order


class Timeline:
    """Per-rank records (iteration, microbatch, phase, node, start, end), seconds since `origin`.

    Only every `every`-th iteration is recorded, so that a long run's timeline stays small in memory
    and in the trace; the records are handed over (and forgotten) at each gather.
    """

    def __init__(self, rank: int, every: int = 1):
        self.rank, self.every, self.origin = rank, max(1, every), time.perf_counter()
        self.iteration, self.active = 0, True
        self.rows: list[tuple] = []

    def start(self, iteration: int) -> None:
        self.iteration, self.active = iteration, iteration % self.every == 0

    def record(self, mb: int, phase: int, node: int, start: float, end: float) -> None:
        if self.active:
            self.rows.append((self.rank, self.iteration, mb, phase, node, start - self.origin, end - self.origin))

    def take(self) -> np.ndarray:
        """The records so far as a TIMELINE_DTYPE array; the buffer is emptied (gathered at checkpoints)."""
        rows, self.rows = self.rows, []
        return np.array(rows, dtype=TIMELINE_DTYPE)
