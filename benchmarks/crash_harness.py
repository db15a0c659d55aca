"""The long mode of the trace's crash-consistency harness (tests/crash_cases.py; CI runs 30 kills).

    python benchmarks/crash_harness.py [--kills 210] [--enospc 40] [--seed 1]

Kills the real solver with SIGKILL at random points (a third each: anywhere in the run, at a random
moment inside a checkpoint commit, at one step of the commit protocol) and fills a real tmpfs at
random points (root; else ENOSPC is injected), resuming every case. Prints and saves
(benchmarks/results/crash_harness.json) the kills, the full-disk cases, the unresumable traces
(must be 0) and the most iterations redone (at most --checkpoint-every).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from crash_cases import run_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=210)
    parser.add_argument("--enospc", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", default=str(Path(__file__).parent / "results" / "crash_harness.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tally = run_cases(tmp, kills=args.kills, enospc=args.enospc, seed=args.seed)
    figures = {**tally.summary(), "seed": args.seed, "seconds": round(time.perf_counter() - started, 1),
               "failures": tally.unresumable}
    print(json.dumps(figures, indent=1))
    Path(args.save).parent.mkdir(parents=True, exist_ok=True)
    Path(args.save).write_text(json.dumps(figures, indent=1) + "\n")
    return 1 if tally.unresumable else 0


if __name__ == "__main__":
    sys.exit(main())
