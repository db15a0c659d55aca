"""`python -m pprs_mpi.experiments anytime`: does anytime PPRS beat the paper's constant parameters?

Methods, all PPRS with μ = 0 and the same K and T (so every run costs the same pipeline time):
constant γ and η (the paper's), and the variants of `parameters`, `noise` and `averaging`: γ_t decaying,
η_t decaying, both, both on Theorem 3's 1/(1 + t) shape, antithetic noise, and the Polyak and suffix
(last half) averages. Every method is tuned on the same grid of (η, γ) bases (the same budget of
configurations; τ and p stay at their defaults) and with the Figure 3 discipline:

1. Tuning. Every configuration runs on the tuning seeds; each method keeps its configuration of lowest
   mean final gap. The best variant of a problem is the variant of lowest mean tuning gap. The targets of
   the time-to-target comparison are the constant method's mean tuning final gap (×1 and ×0.5).
   (For the attack, whose f* is unknown, a tuning gap is taken to the lowest final f of any tuning run of
   that seed.)
2. Reporting. The kept configurations run on the report seeds, and only those runs are compared:
   per seed, the final gap f(ŷ_T) − f* (ŷ the averaged iterate for the averaging variants, y_T otherwise)
   and the pipeline time to each target (+inf if never reached). The main question, declared before any
   report run: does the best variant reach a final gap ≤ 0.5× constant PPRS's? Met when the median of
   gap_variant − 0.5·gap_constant over the report seeds is < 0 and the sign test of those differences
   rejects at α = 0.05. Every variant against constant is exploratory (stats.compare, Holm-corrected).

Problems: lad, linf and branch (f* = 0 known; seed p is problem_seed p) and the attack (`adversarial`;
seed p attacks image p towards the next class, pairs that cannot be attacked screened out as in Figure 3;
f* unknown, so its gap is taken to the lowest f any report run of that seed saw). Seed p is also the noise seed.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from pprs_mpi.experiments import screen, stats
from pprs_mpi.experiments.fig3 import pair_options
from pprs_mpi.experiments.runner import ExperimentError, OneLineParser, record_session

METHODS = {  # name → the solve options that make it, beside the tuned lr and gamma
    "constant": {},
    "decay γ": {"gamma_schedule": "decay"},
    "decay η": {"lr_schedule": "decay"},
    "decay γ, η": {"gamma_schedule": "decay", "lr_schedule": "decay"},
    "theorem3 γ, η": {"gamma_schedule": "theorem3", "lr_schedule": "theorem3"},
    "antithetic": {"noise": "antithetic"},
    "polyak": {"average": "polyak"},
    "suffix:0.5": {"average": "suffix:0.5"},
}
PLANTED_GRID = {"lr": (0.1, 0.03, 0.01, 0.003), "gamma": (0.03, 0.003)}
ATTACK_GRID = {"lr": (1e-3, 3e-4, 1e-4, 3e-5), "gamma": (1e-2, 1e-3)}
PROBLEMS = ("lad", "linf", "branch", "adversarial")


def grid_of(problem: str) -> dict:
    return ATTACK_GRID if screen.applies(problem) else PLANTED_GRID


def configs(problem: str) -> list[dict]:
    grid = grid_of(problem)
    return [{"lr": lr, "gamma": gamma} for lr in grid["lr"] for gamma in grid["gamma"]]


def solve(problem: str, method: str, config: dict, seed: int, common: dict) -> dict:
    """One run: its status and its curve (pipeline time, f at the reported iterate) at the evaluated rows."""
    from mpi4py import MPI

    from pprs_mpi import api
    from pprs_mpi.trace import load
    options = {**common, **METHODS[method], **config, **pair_options(problem)(seed), "seed": seed}
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "run.h5")
        result = api.minimize(problem, comm=MPI.COMM_SELF, engine="serial", quiet=True, out=path, **options)
        columns = load(path).columns
    value = columns["f_avg" if "average" in METHODS[method] else "f_eval"]
    rows = np.flatnonzero(np.isfinite(value))
    return {"status": result.status, "time": columns["pipeline_time"][rows].tolist(), "f": value[rows].tolist()}


def final(run: dict) -> float:
    """The run's final f, +inf for a run that did not complete."""
    return run["f"][-1] if run["status"] == "completed" and run["f"] else math.inf


def time_to(run: dict, level: float) -> float:
    """Pipeline time of the first evaluation with f ≤ level (+inf if none)."""
    hits = [t for t, f in zip(run["time"], run["f"]) if f <= level]
    return hits[0] if hits else math.inf


def seeds_of(problem: str, seeds: list[int], options: dict) -> list[int]:
    """The seeds that can be used: all of them, or for an attack those whose pair screen.py finds attackable."""
    if not screen.applies(problem):
        return seeds
    lam = screen.lam_of(problem, options)
    return [s for s in seeds
            if screen.screen_pair(problem, {**options, **pair_options(problem)(s)}, lam)["verdict"] == "attackable"]


def study(problem: str, args, common: dict, say) -> dict:
    """Tuning then reporting on one problem; the record the document is written from."""
    tune_seeds = seeds_of(problem, list(args.tune_seeds), common)
    report_seeds = seeds_of(problem, list(args.report_seeds), common)
    f_star = None if screen.applies(problem) else 0.0
    tuning = {}
    for method in METHODS:
        for i, config in enumerate(configs(problem)):
            runs = [solve(problem, method, config, s, common) for s in tune_seeds]
            tuning.setdefault(method, []).append({**config, "finals": [final(r) for r in runs]})
        say(f"{problem}: tuned {method}")
    kept = {m: min(found, key=lambda c: (np.mean(c["finals"]), c["lr"], c["gamma"])) for m, found in tuning.items()}
    variants = [m for m in METHODS if m != "constant"]
    best = min(variants, key=lambda m: (np.mean(kept[m]["finals"]), m))
    report = {m: [solve(problem, m, {"lr": kept[m]["lr"], "gamma": kept[m]["gamma"]}, s, common)
                  for s in report_seeds] for m in METHODS}
    say(f"{problem}: reported")
    if f_star is None:  # the attack: per seed, the lowest f seen by any report run, the lowest final of any tuning run
        reference = [min(min(report[m][i]["f"], default=math.inf) for m in METHODS) for i in range(len(report_seeds))]
        tune_reference = [min(c["finals"][i] for found in tuning.values() for c in found)
                          for i in range(len(tune_seeds))]
    else:
        reference, tune_reference = [f_star] * len(report_seeds), [f_star] * len(tune_seeds)
    gaps = {m: [final(r) - ref for r, ref in zip(report[m], reference)] for m in METHODS}
    constant_gap = float(np.mean(np.subtract(kept["constant"]["finals"], tune_reference)))
    targets = [constant_gap, 0.5 * constant_gap]
    times = {m: [[time_to(r, ref + level) for r, ref in zip(report[m], reference)] for level in targets]
             for m in METHODS}
    return {"problem": problem, "grid": grid_of(problem), "f_star": f_star, "tune_seeds": tune_seeds,
            "report_seeds": report_seeds,
            "tuning": tuning, "kept": {m: {"lr": k["lr"], "gamma": k["gamma"], "tune_mean": float(np.mean(k["finals"]))}
                                       for m, k in kept.items()},
            "best_variant": best, "gaps": gaps, "targets": targets, "times": times,
            "main": main_question(gaps[best], gaps["constant"]),
            "exploratory": exploratory(gaps, times)}


def main_question(variant: list[float], constant: list[float]) -> dict:
    """Does the variant reach a final gap ≤ 0.5× constant's? The sign test (and Wilcoxon) of the per-seed
    differences gap_variant − 0.5 gap_constant, and the ratio of the median gaps."""
    difference = np.asarray(variant) - 0.5 * np.asarray(constant)
    sign_p, median = stats.sign_test(difference), float(np.median(difference))
    return {"median_difference": median, "sign_p": sign_p, "wilcoxon_p": stats.wilcoxon(difference),
            "below": int(np.sum(difference < 0)), "seeds": int(difference.size),
            "median_ratio": float(np.median(variant) / np.median(constant)) if np.median(constant) else None,
            "met": bool(median < 0 and sign_p < stats.ALPHA)}


def exploratory(gaps: dict, times: dict) -> list[dict]:
    """Every variant against constant on the final gap and on each time to target, Holm-corrected together."""
    found = []
    with np.errstate(invalid="ignore"):  # never reached by both: inf − inf, a tie for stats.compare
        for method in (m for m in METHODS if m != "constant"):
            found.append({"method": method, "metric": "final gap", **stats.compare(gaps[method], gaps["constant"])})
            for i, (mine, theirs) in enumerate(zip(times[method], times["constant"])):
                found.append({"method": method, "metric": f"time to target {i + 1}", **stats.compare(mine, theirs)})
    for c, p in zip(found, stats.holm([c["sign_p"] for c in found])):
        c["p"], c["outcome"] = p, stats.outcome(c, p)
    return found


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pprs_mpi.experiments anytime",
                      description="Anytime PPRS (schedules, antithetic noise, averaging) against constant PPRS.")
    p.add_argument("--out", default="docs/data/anytime", help="folder of results.json (default docs/data/anytime)")
    p.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma-separated (default {','.join(PROBLEMS)})")
    p.add_argument("--iters", type=int, default=400, help="iterations T of every run (default 400)")
    p.add_argument("-K", type=int, default=8, help="samples per iteration (default 8, even for antithetic)")
    p.add_argument("--tune-seeds", type=_seeds, default=range(0, 3), help="first:stop of the tuning seeds (0:3)")
    p.add_argument("--report-seeds", type=_seeds, default=range(100, 112),
                   help="first:stop of the report seeds (default 100:112)")
    p.add_argument("--doc", default="docs/anytime.md", help="the document to write (default docs/anytime.md)")
    p.add_argument("--document", action="store_true", help="only write --doc from OUT/results.json")
    return p


def _seeds(text: str) -> range:
    try:
        first, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like FIRST:STOP, got {text!r}") from None
    if not 0 <= first < stop:
        raise argparse.ArgumentTypeError(f"seeds FIRST:STOP need 0 <= FIRST < STOP, got {text!r}")
    return range(first, stop)


def main(argv: list[str]) -> int:
    from pprs_mpi.experiments.anytime_document import write
    args = parser().parse_args(argv)
    out = Path(args.out)
    if args.document:
        write(json.loads((out / "results.json").read_text()), Path(args.doc), _sessions(out))
        return 0
    problems = [p for p in args.problems.split(",") if p]
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown or args.iters < 1 or args.K < 2 or args.K % 2:
        raise ExperimentError(f"unknown problem {unknown[0]!r}: choose among {', '.join(PROBLEMS)}" if unknown else
                              "--iters must be >= 1 and -K even and >= 2 (antithetic pairs)")
    out.mkdir(parents=True, exist_ok=True)
    common = {"K": args.K, "iters": args.iters, "mu": 0.0, "eval_every": max(1, args.iters // 40)}
    protocol = {"methods": METHODS, **common, "alpha": stats.ALPHA, "tune_seeds": list(args.tune_seeds),
                "report_seeds": list(args.report_seeds)}
    done = _finished(out / "results.json", protocol)
    started = time.perf_counter()
    for problem in problems:
        if problem not in done:  # a study stopped part-way keeps the problems it finished
            done[problem] = study(problem, args, common, lambda text: print(
                f"[{time.perf_counter() - started:,.0f} s] {text}", flush=True))
            results = {"protocol": protocol, "problems": [done[p] for p in PROBLEMS if p in done]}
            (out / "results.json").write_text(json.dumps(results, indent=1))  # +inf as Infinity, which json reads
    record_session(out, time.perf_counter() - started, 1, "python -m pprs_mpi.experiments anytime " + " ".join(argv))
    write(json.loads((out / "results.json").read_text()), Path(args.doc), _sessions(out))
    return 0


def _sessions(out: Path) -> list[dict]:
    path = out / "sessions.json"
    return json.loads(path.read_text()) if path.exists() else []


def _finished(path: Path, protocol: dict) -> dict[str, dict]:
    """problem → record of an earlier session's results.json with the same protocol (none otherwise)."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    same = json.loads(json.dumps(earlier.get("protocol"))) == json.loads(json.dumps(protocol))
    return {record["problem"]: record for record in earlier["problems"]} if same else {}
