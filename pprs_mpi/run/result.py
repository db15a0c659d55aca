"""What a run leaves on rank 0: a `Result` built from the driver's outcome, and `RunFailed` for a run that
failed after it started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pprs_mpi.driver import Outcome

EXIT_CODES = {"completed": 0, "diverged": 1, "interrupted": 3}  # interrupted: a checkpoint was written


class RunFailed(RuntimeError):
    """A run that failed after it started (in one process, or on every rank under `minimize`); the trace
    says `failed`."""


@dataclass
class Result:
    """What a run leaves on rank 0: its status, the iterates, the objective's values and the trace."""

    status: str  # completed, diverged or interrupted
    y: np.ndarray  # the output y_T of Algorithm 1
    x: np.ndarray
    f_final: float  # f(y_T) (completed), else the last value seen
    iterations: np.ndarray  # int64, one per trace row: the iterations done (0 first)
    f_smoothed: np.ndarray  # float, per row: mean of the K sample values
    f_eval: np.ndarray  # float, per row: f(y_t) where evaluated, NaN elsewhere
    trace: str  # path of the HDF5 trace (pprs_mpi.trace.load reads it)
    message: str = ""  # why a run that did not complete stopped, or that a resume had nothing to do

    @classmethod
    def of(cls, outcome: Outcome, rows: dict, trace: str, message: str = "") -> "Result":
        """The Result of the driver's `outcome`, with the trace's `rows` (columns by name) as written."""
        return cls(outcome.status, outcome.state.y, outcome.state.x, outcome.f_final, rows["iteration"],
                   rows["f_smoothed"], rows["f_eval"], trace, message)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]
