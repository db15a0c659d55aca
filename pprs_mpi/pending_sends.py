"""Nonblocking sends that a peer may never take (it failed, or moved on): MPI may still read their buffers,
so their requests and buffers are kept here, never dropped, until MPI has completed them.

Dropping a request from `comm.isend` frees its pickled buffer at once; above the eager limit (a few KB on
shared memory) MPI reads that buffer while the receiver takes the message, which then arrives garbled.
"""

from __future__ import annotations

_kept: list[tuple] = []  # (request, buffer or None), oldest first


def keep(requests, buffers=()) -> None:
    """Keeps `requests` (and `buffers`, the memory they send) until they complete; forgets completed ones."""
    buffers = list(buffers)
    _kept.extend((request, buffers[i] if i < len(buffers) else None) for i, request in enumerate(requests))
    _kept[:] = [(request, buffer) for request, buffer in _kept if not request.Test()]


def count() -> int:
    """How many kept sends MPI has not completed yet."""
    keep(())
    return len(_kept)
