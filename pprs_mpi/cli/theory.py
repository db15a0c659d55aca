"""`python -m pprs_mpi.theory --L ... --R ... --d ... --eps ... --depth ...`: the bounds of Theorems 1-4, the
presets and the predicted times (pprs_mpi.theory)."""

from __future__ import annotations

import argparse
import sys

from pprs_mpi.cli import quiet_on_a_closed_pipe
from pprs_mpi.config import OneLineParser
from pprs_mpi.theory import evaluate, plot, render

BAD_INPUT = 2


def parser() -> argparse.ArgumentParser:
    """The flags: the problem's constants, the target precision and the depth."""
    p = OneLineParser(prog="python -m pprs_mpi.theory",
                description="Bounds of Theorems 1-4 (O/Ω ones with constant 1), presets, and predicted times.")
    p.add_argument("--L", type=float, required=True, help="Lipschitz constant L")
    p.add_argument("--R", type=float, required=True, help="distance R = ‖θ_0 − θ*‖")
    p.add_argument("--d", type=int, required=True, help="dimension d")
    p.add_argument("--eps", type=float, required=True, help="target precision ε")
    p.add_argument("--depth", type=int, required=True, help="graph depth Δ")
    p.add_argument("--r", type=float, default=0.1, help="Theorem 4's radius r (default 0.1)")
    p.add_argument("--D", type=float, default=1.0, help="initial gap D = f(θ_0) − f* (default 1)")
    p.add_argument("--beta", type=float, default=1.0, help="smoothness β for Theorem 1 (default 1)")
    p.add_argument("--plot", metavar="FILE.png", help="also plot the times against Δ")
    return p


@quiet_on_a_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Prints the bounds, presets and predicted times (and --plot writes them against Δ); exit 2 on bad input."""
    try:
        args = parser().parse_args(argv)
        result = evaluate(args.L, args.R, args.d, args.eps, args.depth, args.r, args.D, args.beta)
    except ValueError as err:
        print(f"pprs_mpi.theory: error: {err}", file=sys.stderr)
        return BAD_INPUT
    print(render(result))
    if args.plot:
        try:
            plot(args, args.plot)
        except (OSError, ImportError) as err:
            print(f"pprs_mpi.theory: error: cannot write plot '{args.plot}': {err}", file=sys.stderr)
            return BAD_INPUT
        print(f"plot: {args.plot}")
    return 0
