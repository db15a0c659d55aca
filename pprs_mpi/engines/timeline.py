"""What the engines record per rank: timeline phases and records, per-rank summaries, and the per-rank
memory figures.

The single definition of the phase codes and the record layout; the trace and the report read them
from here (this module imports nothing of the package).

A run records in sampled iterations only (every `every`-th); outside them nothing is timed. In those,
every rank adds up its own summary (seconds computing and waiting, its span, its actions), and a bounded
sample of ranks (`sampled_ranks`) also keeps the detailed records, so that the trace and its commits do not
grow with the number of ranks while every rank's compute and wait fractions stay measured.
"""

from __future__ import annotations

import time

import numpy as np

FORWARD_PHASE, BACKWARD_PHASE, WAIT_PHASE = 0, 1, 2
PHASES = ("forward", "backward", "wait")  # indexed by the phase codes above
TIMELINE_DTYPE = np.dtype([("rank", "i4"), ("iteration", "i8"), ("microbatch", "i4"), ("phase", "u1"),
                           ("node", "i4"), ("start", "f8"), ("end", "f8")])
MEMORY_KEYS = ("peak_stash", "buffer_bytes", "peak_send_bytes")  # each rank's memory figures, in this order
SUMMARY_KEYS = ("compute_seconds", "wait_seconds", "span_seconds", "actions")  # each rank's, gradient passes
TIMELINE_RANKS = 32  # ranks whose detailed records a run keeps: all of a smaller job


def sampled_ranks(size: int, most: int = TIMELINE_RANKS) -> list[int]:
    """The ranks that keep detailed records: all up to `most`, else `most` evenly spaced from the first to
    the last (the pipeline's ends, where an iteration's span starts and ends, included)."""
    if size <= most:
        return list(range(size))
    return sorted({round(i * (size - 1) / (most - 1)) for i in range(most)})


class Timeline:
    """Per-rank records (iteration, microbatch, phase, node, start, end), seconds since `origin`, and the
    rank's summary of its gradient passes (`SUMMARY_KEYS`, since the engine started).

    Only every `every`-th iteration is timed (`active`), so that a long run's timeline stays small in memory
    and in the trace and untimed iterations pay nothing per action; `detailed` ranks keep the records, which
    are handed over (and forgotten) at each gather."""

    def __init__(self, rank: int, every: int = 1, detailed: bool = True):
        self.rank, self.every, self.detailed, self.origin = rank, max(1, every), detailed, time.perf_counter()
        self.iteration, self.active = 0, True
        self.rows: list[tuple] = []
        self.summary = dict.fromkeys(SUMMARY_KEYS, 0.0)
        self._counted = False  # whether this pass counts in the summary (a sampled gradient pass)
        self._first = self._last = None  # this pass's first start and last end

    def start(self, iteration: int, evaluation: bool = False) -> None:
        self._close_pass()
        self.iteration, self.active = iteration, iteration % self.every == 0
        self._counted = self.active and not evaluation

    def record(self, mb: int, phase: int, node: int, start: float, end: float) -> None:
        if not self.active:
            return
        if self.detailed:
            self.rows.append((self.rank, self.iteration, mb, phase, node, start - self.origin, end - self.origin))
        if self._counted:
            summary = self.summary
            if phase == WAIT_PHASE:
                summary["wait_seconds"] += end - start
            else:
                summary["compute_seconds"] += end - start
                summary["actions"] += 1
            if self._first is None or start < self._first:
                self._first = start
            if self._last is None or end > self._last:
                self._last = end

    def take(self) -> tuple[np.ndarray, dict]:
        """The records so far as a TIMELINE_DTYPE array (the buffer is emptied: gathered at checkpoints), and
        the summary so far."""
        self._close_pass()
        rows, self.rows = self.rows, []
        return np.array(rows, dtype=TIMELINE_DTYPE), dict(self.summary)

    def _close_pass(self) -> None:
        if self._first is not None:
            self.summary["span_seconds"] += self._last - self._first
        self._first = self._last = None
