"""`python -m pprs_mpi.solve`: the command line in pprs_mpi.cli.solve, imported once Ctrl-C is handled (the
imports take most of a run's first second; see signals.end_on_interrupt)."""

import sys

from pprs_mpi.signals import end_on_interrupt

PREFIX = "pprs_mpi.solve: "  # what begins every line a run's failure prints (defined here: imported first)


def main(argv: list[str] | None = None, comm=None) -> int:
    """Runs one solve and returns its exit code (see pprs_mpi.cli.solve.main); SIGINT ends it at once, with
    one line and exit code 130, from this first line until the iterations start and after they end."""
    with end_on_interrupt(PREFIX):
        from pprs_mpi.cli.solve import main as solve
        return solve(argv, comm)


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
