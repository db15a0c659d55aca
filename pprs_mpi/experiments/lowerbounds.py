"""Theorems 1 and 2: the worst-case chains split across Δ nodes, every method against the lower bound:
`experiments lowerbounds`.

On `chain_smooth` (Theorem 1, β = 1) and `chain_nonsmooth` (Theorem 2, L = 1, R = 1), with k coordinates, as real
graphs of depth Δ (problems/worstcase.py), the package's methods run for the same pipeline-time budget:

  GD and AGD (Nesterov μ_t, and μ = 0.99) — naive sequential extensions, 2Δ per iteration;
  PPRS μ = 0 and PPRS with Nesterov μ_t, K copies pipelined, 2(K + Δ − 1) per iteration;
  on chain_nonsmooth PPRS with Theorem 3's whole preset for the budget's iterations.

Step sizes are the textbook ones, not tuned: 1/β on the smooth chain; on the non-smooth one R/(L√(T+1)) for GD
and AGD (the subgradient method's constant step for T iterations) and Theorem 3's γ and η for PPRS, with
PPRS μ = 0 and the +Nesterov row sharing the preset's γ, η and K. Times are the traces' own (the engine's
accounting at depth Δ). Each curve, the mean over `--seeds` noise seeds (GD and AGD are deterministic), is set
against the exact span bound of its function at ⌊time/(2Δ)⌋ completed gradients (worstcase.span_bound): GD and
AGD (span methods) must stay on or above it; PPRS is outside its model (noise leaves the span), and the ratio of
its error to the bound says how close it comes.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np

from pprs_mpi import optim, problems
from pprs_mpi.experiments.inprocess import publish, run_study, study_parser, solve_curve
from pprs_mpi.experiments.runner import ExperimentError, OneLineParser
from pprs_mpi.problems.worstcase import span_bound

DEFAULTS = {"functions": ["chain_smooth", "chain_nonsmooth"], "dim": 64, "depths": [5, 20], "K": 10,
            "gamma_smooth": 0.01, "budget_gradients": 4, "seeds": 3}
QUICK = {**DEFAULTS, "dim": 8, "depths": [4], "K": 4, "budget_gradients": 2, "seeds": 2}
SPAN_METHODS = ("GD", "AGD (Nesterov)", "AGD (μ = 0.99)")


def methods(function: str, problem, iters_gd: int, iters_pprs: int, proto: dict) -> dict[str, dict]:
    """name → solve options of every method on one function (see the module docstring for the steps)."""
    if function == "chain_smooth":
        lr, pprs = 1.0, {"K": proto["K"], "gamma": proto["gamma_smooth"], "lr": 1.0}
    else:
        lr = problem.radius / (problem.lipschitz * math.sqrt(iters_gd + 1))
        preset = optim.theorem3(problem.lipschitz, problem.radius, problem.graph.dim, iters=iters_pprs)
        pprs = {"K": proto["K"], "gamma": preset.gamma, "lr": preset.lr}
    found = {"GD": {"algo": "gd", "lr": lr}, "AGD (Nesterov)": {"algo": "agd", "lr": lr, "mu": "nesterov"},
             "AGD (μ = 0.99)": {"algo": "agd", "lr": lr, "mu": 0.99},
             "PPRS μ = 0": {"algo": "pprs", "mu": 0.0, **pprs},
             "PPRS (Nesterov)": {"algo": "pprs", "mu": "nesterov", **pprs}}
    if function == "chain_nonsmooth":
        found["PPRS (Theorem 3 preset)"] = {"algo": "pprs", "preset": "theorem3"}
    return found


def preset_iters(problem, depth: int, budget: int) -> int:
    """The most iterations T whose Theorem 3 preset (K = ⌈(T+1)/√d⌉) fits the budget: T·2(K + Δ − 1) ≤ budget."""
    T = 1
    while (T + 1) * 2 * (optim.theorem3(problem.lipschitz, problem.radius, problem.graph.dim, iters=T + 1).K
                         + depth - 1) <= budget:
        T += 1
    return T


def measure(proto: dict) -> dict:
    rows, started = [], time.time()
    for function in proto["functions"]:
        for depth in proto["depths"]:
            args = {"depth": depth, "dim": proto["dim"], "radius": 1.0, "problem_seed": 0}
            problem = problems.build(function, **args)
            budget = proto["budget_gradients"] * proto["dim"] * 2 * depth  # that many chain lengths of GD steps
            iters_gd, iters_pprs = budget // (2 * depth), budget // (2 * (proto["K"] + depth - 1))
            for name, options in methods(function, problem, iters_gd, iters_pprs, proto).items():
                stochastic = options["algo"] == "pprs"
                iters = (preset_iters(problem, depth, budget) if "preset" in options
                         else iters_pprs if stochastic else iters_gd)
                runs = [solve_curve(function, problem_args=args, iters=iters, seed=seed, microbatch_size=1,
                                    **options) for seed in range(proto["seeds"] if stochastic else 1)]
                error = np.mean([r["f"] for r in runs], axis=0) - problem.f_star
                time_ = runs[0]["pipeline_time"]
                bound = span_bound(function, proto["dim"], 1.0, np.floor(time_ / (2 * depth)))
                rows.append({"function": function, "depth": depth, "method": name, "iters": iters, "options": options,
                             "time": time_.tolist(), "error": error.tolist(), "bound": bound.tolist(),
                             "statuses": sorted({r["status"] for r in runs}), "seeds": len(runs), "budget": budget,
                             "f_star": problem.f_star})
    return {"rows": rows, "wall_s": time.time() - started}


def judged(row: dict) -> dict:
    """Whether the curve respects the span bound (error ≥ bound − 1e-12 wherever the bound is positive), the
    smallest ratio error/bound there after the start (at t = 0 both are f(0) − f* on the smooth chain), and the
    first time the curve is below the bound (None if never)."""
    error, bound, time_ = (np.asarray(row[k], dtype=float) for k in ("error", "bound", "time"))
    live = (bound > 0) & (time_ > 0)
    below = live & (error < bound - 1e-12)
    return {"respects": not below.any(), "min_ratio": float(np.min(error[live] / bound[live])) if live.any() else None,
            "first_below": float(time_[below][0]) if below.any() else None, "final_error": float(error[-1]),
            "bound_ends": float(time_[live][-1]) if live.any() else 0.0}


def collect(out: Path, docs: Path | None) -> int:
    data = json.loads((out / "lowerbounds.json").read_text())
    from pprs_mpi.experiments.figures_theory import lowerbounds_png
    return publish(render(data), out, docs, "lowerbounds", partial(lowerbounds_png, data["rows"]))
    return 0


def render(data: dict) -> str:
    proto, rows = data["protocol"], data["rows"]
    lines = ["# Theorems 1 and 2: the worst-case chains split across Δ nodes, against the lower bound", "",
             f"_Generated by `python -m pprs_mpi.experiments lowerbounds --collect-only --out {proto['out']} --docs "
             f"docs` from `{proto['out']}/lowerbounds.json`. Run: `{proto['command']}`, {data['wall_s'] / 60:.1f} "
             f"minutes in one process on {data.get('machine', 'this machine')}._", "",
             f"k = {proto['dim']} coordinates, graph depth Δ ∈ {{{', '.join(map(str, proto['depths']))}}} (real "
             f"graphs: Δ − 3 rotations, then the function), budget {proto['budget_gradients']}·k gradients of GD "
             f"(= {proto['budget_gradients']}·k·2Δ pipeline units) for every method, PPRS K = {proto['K']}, "
             f"{proto['seeds']} seeds for PPRS. The bound is the function's exact span bound after ⌊time/(2Δ)⌋ "
             "gradients (positive until k gradients, i.e. time 2kΔ); it binds span methods (GD, AGD) only.", "",
             "![error against pipeline time, with the span bound](lowerbounds.png)", "",
             "| function | Δ | method | iterations | final f − f* | on or above the bound | smallest error/bound "
             "| first time below |", "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for row in rows:
        j = judged(row)
        verdicts.append((row, j))
        ratio = "–" if j["min_ratio"] is None else f"{j['min_ratio']:.3g}"
        below = "–" if j["first_below"] is None else f"{j['first_below']:,.0f}"
        lines.append(f"| {row['function']} | {row['depth']} | {row['method']} | {row['iters']:,} | "
                     f"{j['final_error']:.4g} | {'yes' if j['respects'] else '**no**'} | {ratio} | {below} |")
    span = [(r, j) for r, j in verdicts if r["method"] in SPAN_METHODS]
    pprs = [(r, j) for r, j in verdicts if r["method"] not in SPAN_METHODS]
    lines += ["", f"- Span methods (GD, AGD): {sum(j['respects'] for _, j in span)} of {len(span)} curves stay on or "
              "above the bound, as the theorems require" + ("." if all(j["respects"] for _, j in span) else
                                                          ": a curve below it means a bug or a wrong bound."),
              f"- PPRS: {sum(not j['respects'] for _, j in pprs)} of {len(pprs)} curves go below the span bound "
              "somewhere (its Gaussian samples are not in the span of past passes, so the paper's model of a "
              "pipeline procedure does not cover it); smallest error/bound ratios: "
              + "; ".join(f"{r['function']} Δ = {r['depth']} {r['method']} {j['min_ratio']:.3g}"
                          for r, j in pprs if j["min_ratio"] is not None) + "."]
    return "\n".join(lines)


def parser() -> OneLineParser:
    p = study_parser("lowerbounds", __doc__.splitlines()[0], "k = 8, Δ = 4", "lowerbounds.png and lowerbounds.md")
    p.add_argument("--dim", type=int, help="chain length k (default 64)")
    p.add_argument("--depths", type=lambda t: [int(v) for v in t.split(",")], help="graph depths (default 5,20)")
    p.add_argument("--seeds", type=int, help="PPRS noise seeds (default 3)")
    return p


def _check(proto: dict) -> None:
    if proto["dim"] < 1 or proto["seeds"] < 1 or min(proto["depths"]) < 3:
        raise ExperimentError("--dim and --seeds must be >= 1 and every depth >= 3 (rotations, then 3 nodes)")


def main(argv: list[str]) -> int:
    return run_study("lowerbounds", argv, parser().parse_args(argv), (DEFAULTS, QUICK), ("dim", "depths", "seeds"),
                     _check, measure, collect)
