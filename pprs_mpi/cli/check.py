"""`python -m pprs_mpi.check PROBLEM`: every node's VJP against central finite differences, one line a node
(what is checked and how: pprs_mpi.check)."""

from __future__ import annotations

import sys

from pprs_mpi import config
from pprs_mpi.cli import quiet_on_a_closed_pipe
from pprs_mpi.check import RTOL, check_gradients, first_difference
from pprs_mpi.config import ConfigError
from pprs_mpi.run.assemble import build_problem


@quiet_on_a_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """The command line: one line per node, then a verdict; exit 0 all pass, 1 one fails, 2 bad input."""
    parser = config.OneLineParser(prog="python -m pprs_mpi.check",
                            description="Check every node's VJP of a problem against central finite differences.")
    parser.add_argument("problem", help="built-in problem name, FILE.py:FUNCTION or package.module:FUNCTION")
    parser.add_argument("--problem-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="an argument of the builder (repeatable)")
    parser.add_argument("--points", type=int, default=3, help="random points per node (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points (default 0)")
    parser.add_argument("--dtype", choices=("both", "float64"), default="both",
                        help="both (default): the float64 VJPs and the float32 contract; float64: the VJPs only, "
                        "as solve --check-gradients checks a float64 run")
    parser.add_argument("--rtol", type=float, default=RTOL,
                        help=f"largest relative error that passes (default {RTOL:g})")
    try:
        args = parser.parse_args(argv)
        if args.points < 1 or not args.rtol > 0:
            raise ConfigError("--points must be >= 1 and --rtol > 0")
        cfg = config.resolve({"problem": args.problem, config.PROBLEM_ARGS: config.problem_arg_pairs(args.problem_arg)})
        problem = build_problem(cfg)
        differs = first_difference(problem, build_problem(cfg))
    except ConfigError as err:
        print(f"pprs_mpi.check: error: {err}", file=sys.stderr)
        return 2
    if differs:
        print(f"FAIL  the builder is not deterministic: two builds differ at {differs} (seed its random numbers: "
              "serial runs would not be reproducible, and the ranks of an MPI run would build different graphs)")
        return 1
    checks = check_gradients(problem, points=args.points, seed=args.seed, rtol=args.rtol,
                             float32=args.dtype == "both")
    width = max(len(c.node) for c in checks)
    for c in checks:
        detail = c.describe().partition(": ")[2]
        print(f"{'ok  ' if c.ok else 'FAIL'}  {c.node:<{width}}  {c.op:<16} {detail}")
    failed, nodes = [c for c in checks if not c.ok], len(problem.graph.order)
    if failed:
        unchecked = nodes - len(checks)
        skipped = f" ({unchecked} not checked: their inputs come from a failing node)" if unchecked else ""
        print(f"{len(failed)} of {nodes} node(s) fail{skipped}; first: {failed[0].describe()}")
        return 1
    print(f"all {nodes} node(s) pass (relative error <= {args.rtol:g} at {args.points} random point(s))")
    return 0
