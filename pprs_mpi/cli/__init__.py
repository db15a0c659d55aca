"""The command lines: each turns argv into a call of the library and its outcome into lines and an exit
code (0 done, 1 failed or diverged, 2 bad input, in one line). Nothing in the library imports them.

    solve.py    python -m pprs_mpi.solve    run one solve (pprs_mpi.run)
    check.py    python -m pprs_mpi.check    check a problem's VJPs (pprs_mpi.check)
    report.py   python -m pprs_mpi.report   summarise, plot or follow traces (pprs_mpi.report)
    theory.py   python -m pprs_mpi.theory   the theorems' bounds and presets (pprs_mpi.theory)
    train.py    python -m pprs_mpi.train    train the shipped classifier (pprs_mpi.classifier)
    pprs.py     pprs COMMAND ...            all of them as one console script (pprs solve, pprs report, ...)
"""

import functools
import os
import sys


def quiet_on_a_closed_pipe(main):
    """Wraps a command's `main(argv)`: a reader that closes the pipe early (`| head -1`) ends it quietly, exit 0."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
            return 0

    return wrapped
