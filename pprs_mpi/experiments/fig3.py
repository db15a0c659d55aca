"""The paper's Figure 3 (§6): PPRS against GD and AGD on adversarial attacks, at depths Δ = 20 and 200.

Protocol. Every method runs on N (image, target) pairs: pair p attacks held-out image p towards
the class after its label (`--image-index p --target -1`); on problems without images (e.g. the
planted `lad`) pair p is `--problem-seed p`. PPRS (μ = 0, as in the paper) runs for every lr × γ × K of the grid, GD
(μ = 0) and AGD (μ = 0.99) for every lr.

Time. The simulated depth changes only the time accounting, never the iterates, so each
configuration runs ONCE and is re-timed for both depths: an iteration costs 2(K + Δ − 1) time
units (the paper's 2T(K + Δ − 1)); GD and AGD (K = 1) cost 2Δ. For each Δ every method gets the
same budget, B_Δ = T·2(K_max + Δ − 1), i.e. `--iters` T iterations of the largest K; a
configuration runs the most iterations any depth's budget allows it, and each depth keeps the
part of its curve within B_Δ. The runs use one microbatch of K copies (the same iterates as K
microbatches up to rounding, since noise is keyed by sample index, and ~10x faster in the serial
engine) and no --simulated-depth, so their traces' pipeline_time is not the paper's: the
re-timing here is.

Selection rule. For each depth and method (PPRS K=2, K=10, K=100, GD, AGD) the lr (and γ) kept
is the one with the lowest mean over pairs of the last evaluated loss within the budget. A run
that diverges has loss +inf from then on, so a configuration with any diverged pair is never
chosen; every divergence is counted in the table. The table gives the pipeline time each
selected curve needs to reach loss levels: by default those where 50%, 80% and 95% of the largest
decrease of the mean loss achieved by any selected curve is reached (`--levels` sets them).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from pprs_mpi import optim, problems
from pprs_mpi.experiments import curves
from pprs_mpi.experiments.runner import (FINISHED, ExperimentError, OneLineParser, Run, cost, parse_shard,
                                         solve_options, read_protocol, run_all)
from pprs_mpi.schedule import ideal_makespan
from pprs_mpi.trace import TraceError, load

DEPTHS = (20, 200)
AGD_MU = optim.AGD_DEFAULT_MU
EVAL_POINTS = 50  # evaluations of f(y_t) per run, whatever its length
LEVEL_FRACTIONS = (0.5, 0.8, 0.95)  # default table levels: these fractions of the largest decrease of any selected curve
PAPER_LRS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


@dataclass(frozen=True)
class Grid:
    """What to run: PPRS over lrs × gammas × Ks, GD and AGD over baseline_lrs, each on `pairs` pairs."""

    lrs: tuple[float, ...]
    gammas: tuple[float, ...]
    Ks: tuple[int, ...]
    baseline_lrs: tuple[float, ...]
    pairs: int
    iters: int


PAPER = Grid(lrs=PAPER_LRS, gammas=PAPER_LRS, Ks=(2, 10, 100), baseline_lrs=PAPER_LRS, pairs=100, iters=100)
QUICK = Grid(lrs=(1e-3, 1e-4), gammas=(1e-3,), Ks=(2, 10), baseline_lrs=(1e-3, 1e-4, 1e-5), pairs=2, iters=1000)


def protocol(grid: Grid, problem: str, extra: list[str]) -> dict:
    """Everything that defines the experiment (written to OUT/protocol.json)."""
    k_max = max(grid.Ks)
    return {"experiment": "fig3", "problem": problem, "extra_args": list(extra), **asdict(grid),
            "agd_mu": AGD_MU, "depths": list(DEPTHS), "eval_points": EVAL_POINTS,
            "budgets": {str(depth): grid.iters * ideal_makespan(k_max, depth) for depth in DEPTHS}}


def configs(proto: dict) -> dict[str, dict]:
    """name → {method, algo, K, lr, gamma, mu, iters, eval_every} for every configuration of the grid."""
    found = {}
    for K in proto["Ks"]:
        for lr in proto["lrs"]:
            for gamma in proto["gammas"]:
                found[f"pprs_K{K}_lr{lr:g}_g{gamma:g}"] = {"method": f"PPRS K={K}", "algo": "pprs", "K": K,
                                                               "lr": lr, "gamma": gamma, "mu": 0.0}
    for algo, mu in (("gd", 0.0), ("agd", proto["agd_mu"])):
        for lr in proto["baseline_lrs"]:
            found[f"{algo}_lr{lr:g}"] = {"method": algo.upper(), "algo": algo, "K": 1, "lr": lr, "gamma": 0.0, "mu": mu}
    for config in found.values():
        config["iters"] = max(int(budget) // ideal_makespan(config["K"], int(depth))
                              for depth, budget in proto["budgets"].items())
        config["eval_every"] = max(1, config["iters"] // proto["eval_points"])
    return found


def pair_args(problem: str) -> Callable[[int], dict]:
    """Pair p → its problem parameters: an image and the class after its label where the problem attacks images,
    else a problem seed (see the module docstring)."""
    spec = problems.registry().get(problem)
    if spec is None:
        raise ExperimentError(f"unknown problem '{problem}': choose one of {', '.join(sorted(problems.registry()))}")
    if {"image_index", "target"} <= set(spec.parameters):
        return lambda pair: {"image_index": pair, "target": -1}
    if "problem_seed" in spec.parameters:
        return lambda pair: {"problem_seed": pair}
    raise ExperimentError(f"problem '{problem}' has neither --image-index nor --problem-seed to vary over pairs")


def runs(proto: dict) -> list[Run]:
    """Every run, pairs varying fastest so that a round-robin split gives each worker a similar mix."""
    found, pair_flags = [], pair_args(proto["problem"])
    for name, c in configs(proto).items():
        for pair in range(proto["pairs"]):
            options = {**solve_options(proto["extra_args"]), "problem": proto["problem"], "algo": c["algo"], "K": c["K"],
                       "gamma": c["gamma"], "lr": c["lr"], "mu": c["mu"], "iters": c["iters"], "seed": pair,
                       "eval_every": c["eval_every"], "microbatch_size": c["K"], **pair_flags(pair)}
            found.append(Run(f"{name}_pair{pair:03d}", options, cost(c["iters"], c["K"])))
    return found


def collect(out: Path, levels: tuple[float, ...] | None = None) -> int:
    """Builds OUT/summary.h5, OUT/fig3.png and OUT/table.{txt,json} from the traces present."""
    proto = read_protocol(out)
    grid, expected = configs(proto), {run.name for run in runs(proto)}
    per_config, left_out = _read_runs(out / "runs", grid, expected)
    if not per_config:
        raise ExperimentError(f"no finished run of this protocol in {out / 'runs'}")
    results = {depth: _depth_results(grid, per_config, int(depth), budget) for depth, budget in proto["budgets"].items()}
    selected = [c for r in results.values() for c in r["selected"].values()]
    initial = float(np.mean([c["loss"][0] for c in selected])) if selected else math.nan
    if levels is None:
        lowest = min((c["final"] for c in selected), default=initial)
        levels = [initial - fraction * (initial - lowest) for fraction in LEVEL_FRACTIONS] if selected else []
    table = _table(results, list(levels))
    table["protocol"], table["left_out"], table["initial_mean_loss"] = proto, left_out, initial
    _write_summary(out / "summary.h5", proto, results, table)
    from pprs_mpi.experiments.figures import fig3_png
    fig3_png(results, proto, out / "fig3.png")
    text = render(table)
    (out / "table.txt").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps(table, indent=1, default=_json_number))
    print(text)
    print(f"written: {out / 'summary.h5'}, {out / 'fig3.png'}, {out / 'table.txt'}, {out / 'table.json'}")
    return 0


def _read_runs(runs_dir: Path, grid: dict, expected: set[str]) -> tuple[dict, dict]:
    """name → {curves, diverged, runs} over the finished traces, and the runs left out (missing, unfinished, ...)."""
    per_config: dict[str, dict] = {}
    left_out: dict[str, list[str]] = {"missing": [], "unfinished": [], "unreadable": [], "foreign": []}
    present = {path.stem: path for path in sorted(runs_dir.glob("*.h5"))}
    for stem in sorted(set(present) | expected):
        if stem not in expected:
            left_out["foreign"].append(stem)
            continue
        if stem not in present:
            left_out["missing"].append(stem)
            continue
        try:
            trace = load(present[stem])
        except TraceError:
            left_out["unreadable"].append(stem)
            continue
        if trace.status not in FINISHED:
            left_out["unfinished"].append(f"{stem} ({trace.status})")
            continue
        entry = per_config.setdefault(stem.rpartition("_pair")[0], {"curves": [], "diverged": 0, "runs": 0})
        entry["curves"].append(curves.loss_curve(trace))
        entry["diverged"] += trace.status == "diverged"
        entry["runs"] += 1
    for kind, names in left_out.items():
        if names:
            print(f"fig3 collect: {len(names)} {kind} run(s), left out: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    return per_config, left_out


def _depth_results(grid: dict, per_config: dict, depth: int, budget: float) -> dict:
    """For one depth: every configuration's mean curve within the budget, and the best one per method."""
    every = {}
    for name, c in grid.items():  # grid order: PPRS by K, then GD, then AGD
        if name not in per_config:
            continue
        entry = per_config[name]
        iterations, loss = curves.mean_curve(entry["curves"])
        time, loss = curves.within(curves.retime(iterations, c["K"], depth), loss, budget)
        every[name] = {**c, "name": name, "time": time, "loss": loss, "iteration": iterations[:time.size],
                       "final": float(loss[-1]), "runs": entry["runs"], "diverged": entry["diverged"]}
    methods = list(dict.fromkeys(c["method"] for c in grid.values()))
    selected, all_diverged = {}, []
    for method in methods:
        mine = {name: r["final"] for name, r in every.items() if r["method"] == method}
        choice = curves.best(mine)
        if choice is not None:
            selected[method] = every[choice]
        elif mine:
            all_diverged.append(method)
    return {"budget": budget, "configs": every, "selected": selected, "all_diverged": all_diverged}


def _table(results: dict, levels: list[float]) -> dict:
    """Rows per depth and method: the selected configuration, its final loss, divergences, times to levels."""
    rows = []
    for depth, result in results.items():
        methods = dict.fromkeys(c["method"] for c in result["configs"].values())
        for method in methods:
            mine = [c for c in result["configs"].values() if c["method"] == method]
            chosen = result["selected"].get(method)
            row = {"depth": int(depth), "budget": result["budget"], "method": method,
                   "grid_runs": sum(c["runs"] for c in mine), "grid_diverged": sum(c["diverged"] for c in mine),
                   "configs_with_divergence": sum(c["diverged"] > 0 for c in mine), "configs": len(mine)}
            if chosen is None:
                row.update(selected=None, final_loss=math.inf, times=[None] * len(levels))
            else:
                row.update(selected=chosen["name"], lr=chosen["lr"], gamma=chosen["gamma"], K=chosen["K"],
                           mu=chosen["mu"], runs=chosen["runs"], final_loss=chosen["final"],
                           times=[curves.time_to_reach(chosen["time"], chosen["loss"], level) for level in levels])
            rows.append(row)
    return {"levels": levels, "rows": rows,
            "all_configs": [{"depth": int(depth), **{k: c[k] for k in ("name", "method", "lr", "gamma", "K", "mu",
                                                                        "runs", "diverged", "final")}}
                            for depth, result in results.items() for c in result["configs"].values()]}


def render(table: dict) -> str:
    """The table as text: one block per depth."""
    levels = table["levels"]
    head = ["method", "lr", "γ", "pairs", "final loss", "diverged (method's grid)",
            *[f"time to ≤ {level:.4g}" for level in levels]]
    lines = [f"Figure 3 protocol on '{table['protocol']['problem']}': mean over pairs of f(y_t); "
             f"time in pipeline units, 2(K+Δ−1) per iteration; mean initial loss {table['initial_mean_loss']:.4g}",
             "selection: per depth and method, the lr (and γ) with the lowest mean final loss within the budget; "
             "a diverged run counts as loss +inf"]
    for depth in dict.fromkeys(row["depth"] for row in table["rows"]):
        rows = [row for row in table["rows"] if row["depth"] == depth]
        body = []
        for row in rows:
            if row["selected"] is None:
                cells = [row["method"], "-", "-", "-", "all diverged"]
            else:
                cells = [row["method"], f"{row['lr']:.0e}", f"{row['gamma']:.0e}" if row["gamma"] else "-",
                         row["runs"], f"{row['final_loss']:.4g}"]
            cells.append(f"{row['grid_diverged']}/{row['grid_runs']} runs in "
                         f"{row['configs_with_divergence']}/{row['configs']} configs")
            cells += ["not reached" if t is None else f"{t:,.0f}" for t in row["times"]]
            body.append(cells)
        widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
        lines += ["", f"Δ = {depth} (budget {rows[0]['budget']:,.0f} time units)",
                  "  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)),
                  *["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in body]]
    missing = {kind: len(names) for kind, names in table["left_out"].items() if names}
    if missing:
        lines += ["", "left out: " + ", ".join(f"{n} {kind}" for kind, n in missing.items())]
    return "\n".join(lines)


def _write_summary(path: Path, proto: dict, results: dict, table: dict) -> None:
    """summary.h5: /depth_<Δ>/<method>/{pipeline_time, iteration, mean_loss} for the selected curves,
    /depth_<Δ>/all/<config>/... for every configuration, and the protocol and table as JSON attributes."""
    with h5py.File(path, "w") as f:
        f.attrs["protocol"] = json.dumps(proto, sort_keys=True)
        f.attrs["table"] = json.dumps(table, default=_json_number)
        for depth, result in results.items():
            group = f.create_group(f"depth_{depth}")
            group.attrs.update(depth=int(depth), budget=float(result["budget"]),
                               all_diverged=json.dumps(result["all_diverged"]))
            for prefix, entries in (("", result["selected"]), ("all/", result["configs"])):
                for key, c in entries.items():
                    g = group.create_group(prefix + key.replace(" ", "_").replace("=", ""))
                    g["pipeline_time"], g["iteration"], g["mean_loss"] = c["time"], c["iteration"], c["loss"]
                    g.attrs.update({k: c[k] for k in ("name", "method", "algo", "K", "lr", "gamma", "mu", "runs",
                                                      "diverged", "final")})


def _json_number(value):
    return float(value) if isinstance(value, (np.floating, np.integer)) else str(value)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pprs_mpi.experiments fig3", description=__doc__.splitlines()[0], allow_abbrev=False,
                      epilog="Other flags (e.g. --lam 300, --network PATH) go to every solve unchanged.")
    p.add_argument("--pairs", type=int, help=f"(image, target) pairs (default {PAPER.pairs}; --quick {QUICK.pairs})")
    p.add_argument("--quick", action="store_true", help="tiny grid on 2 pairs, a few minutes on a laptop")
    p.add_argument("--iters", type=int, help=f"iterations T of the largest K; sets every method's time budget "
                                             f"(default {PAPER.iters}; --quick {QUICK.iters})")
    p.add_argument("--lrs", type=_floats, help="comma-separated PPRS learning rates (default 1e-3,...,1e-7)")
    p.add_argument("--gammas", type=_floats, help="comma-separated PPRS smoothings γ (default 1e-3,...,1e-7)")
    p.add_argument("--Ks", type=_ints, help="comma-separated K (default 2,10,100)")
    p.add_argument("--baseline-lrs", type=_floats, help="comma-separated GD/AGD learning rates (default 1e-3,...,1e-7)")
    p.add_argument("--problem", default="adversarial", help="problem to attack (default adversarial)")
    p.add_argument("--out", default="fig3", help="output folder (default ./fig3)")
    p.add_argument("--shard", default="0/1", help="I/N: do only runs I, I+N, ... (Slurm job arrays)")
    p.add_argument("--collect-only", action="store_true", help="only build summary, PNG and table from OUT/runs")
    p.add_argument("--levels", type=_floats,
                   help="comma-separated loss levels of the table (default: where 50%%, 80%%, 95%% of the largest "
                        "decrease of the mean loss that any selected method achieves is reached)")
    return p


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str]) -> int:
    args, extra = parser().parse_known_args(argv)
    out = Path(args.out)
    if args.collect_only:
        return collect(out, args.levels)
    base = QUICK if args.quick else PAPER
    given = {k: getattr(args, k) for k in asdict(base) if getattr(args, k) is not None}
    grid = Grid(**{**asdict(base), **given})
    if grid.pairs < 1 or grid.iters < 1 or min(grid.Ks) < 1 or min(grid.lrs + grid.baseline_lrs) <= 0 or min(grid.gammas) < 0:
        raise ExperimentError("--pairs, --iters and K must be >= 1, learning rates > 0, γ >= 0")
    proto = protocol(grid, args.problem, extra)
    return run_all(runs(proto), out, proto, parse_shard(args.shard), "fig3", lambda: collect(out, args.levels))
