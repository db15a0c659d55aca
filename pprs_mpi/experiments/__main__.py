"""`python -m pprs_mpi.experiments {fig3,erm,finitesum,rates,depth,lowerbounds,nonconvex,anytime,reproduction} ...`
(fig3, erm, finitesum and rates also under `mpirun -n P`); bad input: one line, exit 2."""

from __future__ import annotations

import sys

from pprs_mpi.experiments.runner import ExperimentError

USAGE = ("usage: python -m pprs_mpi.experiments "
         "{fig3,erm,finitesum,rates,depth,lowerbounds,nonconvex,anytime,reproduction} [options]"
         "   (--help after the name for its options)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "fig3":
        from pprs_mpi.experiments.fig3 import main as run
    elif name == "erm":
        from pprs_mpi.experiments.erm import main as run
    elif name == "finitesum":
        from pprs_mpi.experiments.finitesum import main as run
    elif name == "rates":
        from pprs_mpi.experiments.rates import main as run
    elif name == "depth":
        from pprs_mpi.experiments.depth import main as run
    elif name == "lowerbounds":
        from pprs_mpi.experiments.lowerbounds import main as run
    elif name == "nonconvex":
        from pprs_mpi.experiments.nonconvex import main as run
    elif name == "anytime":
        from pprs_mpi.experiments.anytime import main as run
    elif name == "reproduction":
        from pprs_mpi.experiments.reproduction import main as run
    else:
        print(f"pprs_mpi.experiments: error: unknown experiment '{name}': choose fig3, erm, finitesum, rates, depth, "
              "lowerbounds, nonconvex, anytime or reproduction", file=sys.stderr)
        return 2
    try:
        return run(rest)
    except ExperimentError as err:
        print(f"pprs_mpi.experiments {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
