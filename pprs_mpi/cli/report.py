"""`python -m pprs_mpi.report RUN.h5 [RUN2.h5 ...]`: print the summaries of run traces (pprs_mpi.report),
write their plots (--plot), or follow running ones (--follow)."""

from __future__ import annotations

import argparse
import math
import sys
import time

from pprs_mpi.cli import quiet_on_a_closed_pipe
from pprs_mpi.report import render
from pprs_mpi.trace import TraceError, TraceLocked, load


class PlotError(Exception):
    """The plots could not be written (a --plot path that is not a writable directory): one line."""


def report_once(args, plots) -> list[dict]:
    """Read the traces, write the plots if asked, print the report; return the summaries."""
    traces = [load(path) for path in args.runs]
    text, summaries = render(traces, args.targets, args.json)
    try:
        written = plots.write_all(traces, args.plot, args.iteration) if plots else []
    except OSError as err:
        if isinstance(err, BrokenPipeError) or not err.strerror:
            raise
        raise PlotError(f"--plot {args.plot}: cannot write {err.filename or args.plot} ({err.strerror})") from None
    print(text)
    for path in written:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    sys.stdout.flush()  # a closed pipe shows here, inside main, not at interpreter exit
    return summaries


def follow(args, plots) -> int:
    """Report again every `args.interval` seconds until no run is still running (the first round's
    errors end it like a plain report; later, a trace held by its writer is read next round)."""
    summaries = report_once(args, plots)
    while any(s["status"] == "running" for s in summaries):
        time.sleep(args.interval)
        print("\x1b[2J\x1b[H" if sys.stdout.isatty() else f"--- {time.strftime('%H:%M:%S')}", flush=True)
        try:
            summaries = report_once(args, plots)
        except TraceLocked:
            print("(a trace is being written: next try in a moment)", flush=True)
    return 0


@quiet_on_a_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """The command line; Ctrl-C (ending --follow) exits 130 without a traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130


def _main(argv: list[str] | None) -> int:
    """Parse the arguments and report once or follow; bad input is one line on stderr and status 2."""
    parser = argparse.ArgumentParser(prog="python -m pprs_mpi.report",
                                     description="Summaries and comparisons of run traces.")
    parser.add_argument("runs", nargs="+", metavar="RUN.h5", help="trace files")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--targets", type=_targets,
                        help="comma-separated values of f, e.g. 0.1,0.05 (default: best + 10%%/1%%/0.1%% of the "
                             "gap between first and best f)")
    parser.add_argument("--iteration", type=int, help="iteration shown in the Gantt chart (default: last complete)")
    parser.add_argument("--follow", action="store_true",
                        help="report again every --interval seconds until no run is still running")
    parser.add_argument("--interval", type=_positive, default=5.0, help="seconds between reports (default 5)")
    args = parser.parse_args(argv)
    plots = None
    if args.plot is not None:
        try:
            from pprs_mpi import plots
        except ImportError:
            print("--plot needs matplotlib: pip install 'pprs_mpi[plot]'", file=sys.stderr)
            return 2
    try:
        if args.follow:
            return follow(args, plots)
        report_once(args, plots)
    except BrokenPipeError:
        raise  # an OSError, but not bad input: `main` ends quietly
    except (TraceError, OSError, PlotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _targets(text: str) -> list[float]:
    """--targets: comma-separated values of f."""
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _positive(text: str) -> float:
    """--interval: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value
