"""What a message costs between neighbouring ranks, timed at start-up for `--microbatch-size measured`.

Ranks r and r + 1 hold consecutive stages, so each such pair times a ping-pong of a one-number message and of a
large one (the even pairs, then the odd ones, so that no rank serves two at once) on the setup's communicator,
under a tag of its own. The slowest pair's times give the latency and the cost per byte that the layout planner
adds to its per-message cost (`layout.MessageCost`). Errors end the setup in one line on every rank, as its
rounds do: a rank that fails here, or stops because a neighbour did, first tells its neighbours (ABORT_TAG), the
only ranks that may be waiting for it, and any wait ends after DEADLINE_S, so that no rank waits for ever.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pprs_mpi import pending_sends
from pprs_mpi.layout import MessageCost

TAG, ABORT_TAG = 3, 4  # beside setup_sync's step and answer tags, on its communicator
WARM_UP, ROUND_TRIPS = 2, 10
LARGEST_BYTES = 8 << 20  # the large message is the run's largest, up to this (enough to time the bandwidth)
DEADLINE_S = 30.0  # a neighbour that has not answered a message by then has failed


class NeighbourFailed(Exception):
    """The neighbour this rank was timing with has failed, and said so (its error is the setup's)."""


def measure(sync, large_bytes: int) -> MessageCost | None:
    """The slowest neighbouring pair's message costs on rank 0 (None on the others), every rank timing its pairs
    with messages of 8 and `large_bytes` bytes (at most LARGEST_BYTES); a failure is the setup's one line."""
    large_bytes = int(min(max(large_bytes, 16), LARGEST_BYTES))
    comm, rank, size = sync.comm, sync.rank, sync.size
    try:
        mine = _time_neighbours(comm, rank, size, large_bytes)
    except Exception as err:  # noqa: BLE001 — MPI's errors, a neighbour that did not answer: one line everywhere
        # the neighbours may be waiting for this rank (who told it, too: harmless), and theirs for them in turn
        pending_sends.keep([comm.isend(None, dest=n, tag=ABORT_TAG) for n in (rank - 1, rank + 1) if 0 <= n < size])
        if not isinstance(err, NeighbourFailed):
            sync.fail(f"timing messages with its neighbours (--microbatch-size measured): {err}")
        mine = []  # a neighbour failed: its error is in the round below, and it is the job's line
    every = sync.gather(mine)
    if every is None:
        return None
    pairs = [pair for timed in every for pair in timed]
    small, large = max(p[0] for p in pairs), max(p[1] for p in pairs)
    return MessageCost(small, max(0.0, (large - small) / (large_bytes - 8)), len(pairs))


def _time_neighbours(comm, rank: int, size: int, large_bytes: int) -> list[tuple[float, float]]:
    """(small, large) half round trips of the pairs in which this rank is the left one (rank, rank + 1)."""
    buffers = (np.zeros(1), np.zeros(large_bytes // 8))
    timed = []
    for phase in (0, 1):
        if rank % 2 == phase and rank + 1 < size:
            timed.append(tuple(_ping_pong(comm, rank + 1, buffer, True) for buffer in buffers))
        elif rank % 2 != phase and rank >= 1:
            for buffer in buffers:
                _ping_pong(comm, rank - 1, buffer, False)
    return timed


def _ping_pong(comm, partner: int, buffer: np.ndarray, first: bool) -> float:
    """Half the mean round trip of `buffer` with `partner` (`first`: this rank sends first), after WARM_UP."""
    for trip in range(WARM_UP + ROUND_TRIPS):
        if trip == WARM_UP:
            start = time.perf_counter()
        for sending in ((True, False) if first else (False, True)):
            _wait(comm, (comm.Isend if sending else comm.Irecv)(buffer, partner, TAG), partner, buffer)
    return (time.perf_counter() - start) / ROUND_TRIPS / 2


def _wait(comm, request, partner: int, buffer: np.ndarray) -> None:
    """Waits for `request` on `buffer` until it completes, `partner` has said it failed, or DEADLINE_S has passed;
    a request given up is kept, with the buffer MPI may still use."""
    deadline = time.monotonic() + DEADLINE_S
    while not request.Test():
        failed = comm.Iprobe(source=partner, tag=ABORT_TAG)
        if failed or time.monotonic() > deadline:
            pending_sends.keep([request], [buffer])
            if failed:
                raise NeighbourFailed()
            raise TimeoutError(f"rank {partner} did not answer within {DEADLINE_S:g} s")
        os.sched_yield()
