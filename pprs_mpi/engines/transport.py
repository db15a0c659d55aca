"""How stages exchange arrays: the `Transport` a runner talks to, and the in-process one of the serial engine.

A message is named by its channel (`plan.Channel.id`) and microbatch; the MPI transport lives with
the MPI engine (engines/mpi.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Transport(Protocol):
    idle: Callable[[], bool] | None  # work to do instead of waiting for a message; returns whether it did any

    def expect(self, receives, check_shapes: bool = True) -> None:
        """This pass's receives: (channel, microbatches in the order they are needed) pairs."""

    def send(self, channel: int, mb: int, array) -> None: ...
    def arrived(self, channel: int, mb: int) -> bool: ...
    def recv(self, channel: int, mb: int): ...
    def complete_sends(self) -> None: ...


class LocalTransport:
    """An in-process mailbox standing in for MPI: a send files the array in its channel's row, a
    receive takes it out."""

    def __init__(self, n_channels: int, n_microbatches: int):
        self._boxes = [[None] * (n_microbatches + 1) for _ in range(n_channels)]
        self.idle = None  # never called: a message is there when it is needed, or the schedule is illegal

    def expect(self, receives, check_shapes: bool = True) -> None:
        pass  # the sender's checks cover an in-process message

    def send(self, channel: int, mb: int, array) -> None:
        self._boxes[channel][mb] = array

    def arrived(self, channel: int, mb: int) -> bool:
        return self._boxes[channel][mb] is not None

    def recv(self, channel: int, mb: int):
        box = self._boxes[channel]
        array, box[mb] = box[mb], None
        if array is None:
            raise RuntimeError(f"illegal schedule: channel {channel}, microbatch {mb} is needed before it is sent")
        return array

    def complete_sends(self) -> None:
        pass
