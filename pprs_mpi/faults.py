"""Fault injection for testing failure handling: make one rank raise or exit at one iteration.

Set with `--inject-fault RANK:ITERATION:KIND` or the environment variable PPRS_FAULT (same syntax).
`raise` throws an exception inside the pipeline pass; `exit` kills the process abruptly, as a
crashed node would; `hang` stops the rank responding, as a stuck node would (see --comm-timeout).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

KINDS = ("raise", "exit", "hang")
USAGE = "fault must look like RANK:ITERATION:raise|exit|hang"


class InjectedFault(RuntimeError):
    """The exception raised by an injected `raise` fault."""


@dataclass(frozen=True)
class Fault:
    rank: int
    iteration: int
    kind: str

    @classmethod
    def parse(cls, text: str) -> "Fault":
        try:
            rank, iteration, kind = text.split(":")
            fault = cls(int(rank), int(iteration), kind)
        except ValueError:
            raise ValueError(f"{USAGE}, got {text!r}") from None
        if kind not in KINDS or fault.rank < 0 or fault.iteration < 0:
            raise ValueError(f"{USAGE}, got {text!r}")
        return fault

    def trigger(self, rank: int, iteration: int) -> None:
        """Fires when this is the chosen rank and iteration."""
        if (rank, iteration) != (self.rank, self.iteration):
            return
        if self.kind == "exit":
            os._exit(17)
        if self.kind == "hang":
            while True:
                time.sleep(1.0)
        raise InjectedFault(f"injected fault at iteration {iteration}")


def from_environment() -> Fault | None:
    text = os.environ.get("PPRS_FAULT", "")
    return Fault.parse(text) if text else None
