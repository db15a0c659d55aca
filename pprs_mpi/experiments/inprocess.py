"""One small solve in this process, its curve returned: what the theorem experiments (depth, lowerbounds,
nonconvex) run, many times, on problems small enough that a trace file is only a temporary; and the command
those experiments share (`run_study`).

Each call is `pprs_mpi.minimize` with the serial engine on MPI.COMM_SELF, evaluating f(y_t) at every iteration,
its trace written into a temporary folder and read back: so the iterates are the package's own (the same code
as `solve`), and the experiments stay bitwise reproducible from their seeds.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from pprs_mpi.experiments.runner import ExperimentError, OneLineParser
from pprs_mpi.trace import load


def solve_curve(problem, **options) -> dict:
    """{'iteration', 'f', 'pipeline_time', 'status', 'y'} of one run: f(y_t) at t = 0..T (+inf where a diverged run
    never got), the trace's pipeline time per row (the paper's 2(M + Δ − 1) per iteration, at --simulated-depth
    where given), the final iterate."""
    from mpi4py import MPI

    from pprs_mpi import api
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "run.h5")
        result = api.minimize(problem, comm=MPI.COMM_SELF, engine="serial", quiet=True, eval_every=1, out=out,
                              overwrite=True, **options)
        trace = load(out)
        iteration, f = trace.columns["iteration"], trace.columns["f_eval"]
        ok = np.isfinite(f)
        iters = int(trace.config["iters"])
        curve = np.full(iters + 1, np.inf)
        curve[iteration[ok].astype(int)] = f[ok]
        time = np.full(iters + 1, np.nan)
        time[iteration.astype(int)] = trace.columns["pipeline_time"]
        return {"iteration": np.arange(iters + 1), "f": curve, "pipeline_time": time, "status": result.status,
                "y": np.asarray(result.y)}


def first_hit(errors: np.ndarray, level: float) -> int | None:
    """The first index at which errors ≤ level (an iteration count); None if never."""
    hits = np.flatnonzero(np.asarray(errors) <= level)
    return int(hits[0]) if hits.size else None


def fit_power(x, y) -> tuple[float, float]:
    """(exponent p, constant c) of the least-squares line log y = log c + p log x."""
    p, log_c = np.polyfit(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)
    return float(p), float(np.exp(log_c))


def publish(text: str, out: Path, docs: Path | None, name: str, figure: Callable[[Path], None] | None = None,
            doc_name: str | None = None) -> int:
    """A theory experiment's document: OUT/NAME.txt and the terminal, and with `docs` DOCS/DOC_NAME.md and, with
    `figure`, the figure it draws into DOCS/DOC_NAME.png (DOC_NAME: NAME unless given)."""
    (out / f"{name}.txt").write_text(text + "\n")
    print(text)
    if docs:
        docs.mkdir(parents=True, exist_ok=True)
        stem = docs / (doc_name or name)
        written = [stem.with_suffix(".png")] if figure else []
        if figure:
            figure(written[0])
        stem.with_suffix(".md").write_text(text + "\n")
        print("written: " + ", ".join(map(str, [*written, stem.with_suffix(".md")])))
    return 0


def study_parser(name: str, description: str, quick: str, writes: str) -> OneLineParser:
    """The options every theory experiment takes (--quick: `quick`; --out; --docs, where it writes `writes`;
    --collect-only); the experiment adds its own."""
    p = OneLineParser(prog=f"python -m pprs_mpi.experiments {name}", description=description, allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help=f"a tiny run ({quick}): seconds")
    p.add_argument("--out", default=name, help=f"data folder (default ./{name})")
    p.add_argument("--docs", help=f"also write {writes} there (e.g. docs)")
    p.add_argument("--collect-only", action="store_true", help="only rebuild the document from OUT")
    return p


def run_study(name: str, argv: list[str], args, protocols: tuple[dict, dict], options: tuple[str, ...],
              check: Callable[[dict], None], measure: Callable[[dict], dict],
              collect: Callable[[Path, Path | None], int]) -> int:
    """`experiments NAME`: with --collect-only the document rebuilt from OUT/NAME.json; else the protocol (the
    defaults or, with --quick, the quick one of `protocols`, overridden by the `options` given), checked (one line
    on bad values), measured, saved with the command and the machine, and collected."""
    out, docs = Path(args.out), Path(args.docs) if args.docs else None
    data = out / f"{name}.json"
    if args.collect_only:
        if not data.exists():
            raise ExperimentError(f"{data} does not exist: run `experiments {name} --out {out}` first")
        return collect(out, docs)
    proto = dict(protocols[1] if args.quick else protocols[0])
    proto.update({key: getattr(args, key) for key in options if getattr(args, key) is not None})
    check(proto)
    proto.update(out=str(out), command=f"python -m pprs_mpi.experiments {name} " + " ".join(argv))
    result = measure(proto)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, nproc = {os.cpu_count()}"
    data.write_text(json.dumps({"protocol": proto, **result, "machine": machine}, indent=1))
    return collect(out, docs)
