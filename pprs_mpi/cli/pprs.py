"""`pprs COMMAND [ARGS ...]`: every command line as one console script (pyproject's [project.scripts]), as
torchrun, deepspeed and mlflow are called; `pprs solve ARGS` is `python -m pprs_mpi.solve ARGS`, and runs
under `mpirun -n P pprs solve ...` alike."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"solve": "run one solve", "check": "check a problem's VJPs against finite differences",
            "report": "summarise, plot or follow traces", "theory": "the theorems' bounds and presets",
            "train": "train the shipped classifier"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        lines = [f"  {name:<7} {what} (python -m pprs_mpi.{name})" for name, what in COMMANDS.items()]
        print("usage: pprs COMMAND [ARGS ...]   (pprs COMMAND --help for its options)", *lines, sep="\n")
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"pprs: error: {what} (commands: {', '.join(COMMANDS)}; pprs --help)", file=sys.stderr)
        return 2
    return importlib.import_module(f"pprs_mpi.cli.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
