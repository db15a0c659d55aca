"""Theorem 3 as a function of the depth: time to ε against Δ for PPRS, GD, AGD and GPipe: `experiments depth`.

Eq. (12) says PPRS with Theorem 3's parameters reaches E[f] − f* ≤ ε in time O((RL/ε)² + (RL/ε)·Δ·d^{1/4}),
where the naive sequential extension (NSE) of subgradient descent needs O((RL/ε)²·Δ): the depth multiplies only
the second-order term. Here, on a planted convex problem (`lad` or `linf`, f* = 0, L and R known), for each d and
each ε = ε_rel·L·R:

  - PPRS runs Theorem 3's preset for that ε (`--preset theorem3 --eps ε`: K, γ, η, Nesterov μ_t and T), over
    `--seeds` noise seeds; T_ε is the first iteration at which the mean over seeds of f(y_t) − f* is ≤ ε;
  - GD (subgradient descent) over an lr grid and AGD over μ ∈ {0.9, 0.99, Nesterov} × the same grid; T_ε is the
    fewest iterations any configuration needs (the best step in hindsight, per ε: it favours the baselines).

The depth changes only the time accounting, never the iterates (the runs use one input per microbatch, so the
trace's own time at `--simulated-depth Δ` is exactly this re-timing; tests check it), so each configuration
runs once and its time to ε at depth Δ is T_ε × the time of one iteration:

  PPRS 2(K + Δ − 1);  GD, AGD (NSE, f as one input) 2Δ;
  read as a finite sum over the problem's m rows (eq. 16): GPipe (GD's iterations) 2(m + Δ − 1),
  PPRS 2(K·m + Δ − 1).

Every time is a line a + b·Δ. The theorem's shape is checked on those lines: the slope b (time per unit of depth)
against RL/ε and d, whose fitted exponents eq. (12) puts at 1 and 1/4 for PPRS and (13)-free NSE at 2 and 0, and
the whole PPRS surface against c₁(RL/ε)² + c₂(RL/ε)Δd^{1/4} fitted by least squares in relative error.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np

from pprs_mpi import optim, problems
from pprs_mpi.experiments.fig3 import per_decade
from pprs_mpi.experiments.inprocess import first_hit, fit_power, publish, run_study, study_parser, solve_curve
from pprs_mpi.experiments.runner import ExperimentError, OneLineParser

DEFAULTS = {"problem": "lad", "dims": [4, 16, 64], "eps": [0.1, 0.05, 0.02, 0.01],
            "depths": [1, 3, 10, 30, 100, 300, 1000, 3000, 10000], "seeds": 3, "graph_depth": 4,
            "lrs": list(per_decade(1.0, 1e-4, 2)), "agd_mus": [0.9, 0.99, "nesterov"], "max_iters": 20000}
QUICK = {**DEFAULTS, "dims": [4], "eps": [0.3, 0.1], "depths": [1, 10, 100], "seeds": 2, "lrs": [0.3, 0.1, 0.03],
         "agd_mus": [0.9, "nesterov"], "max_iters": 400}
METHODS = ("PPRS", "GD", "AGD", "GPipe", "GPipe+momentum", "PPRS (m rows)")


DESCRIBED = {"lad": "planted ‖Aθ − b‖₁, f* = 0, R = 1, m = 2d rows, L = √m",
             "linf": "planted ‖Aθ − b‖∞, f* = 0, R = 1, L = 1",
             "chain_nonsmooth": "Theorem 2's worst case, L = 1 on ‖θ‖ ≤ R = 1, f* = −R/(2(1+√d))"}
FINITE_SUMS = ("lad", "linf")  # sums (or maxima) over m = 2d rows: the GPipe reading applies to lad only
PROBLEMS = ("lad", "linf", "chain_nonsmooth")


def problem_args(proto: dict, d: int) -> dict:
    """The problem at dimension d: R = 1, problem seed 0, `graph_depth` nodes; the planted ones with m = 2d rows."""
    rows = {"rows": 2 * d} if proto["problem"] in FINITE_SUMS else {}
    return {"depth": proto["graph_depth"], "dim": d, **rows, "radius": 1.0, "problem_seed": 0}


def build(proto: dict, d: int):
    return problems.build(proto["problem"], **problem_args(proto, d))


def per_iteration(method: str, K: int, m: int, depth: int) -> int:
    """Pipeline time of one iteration of `method` at depth Δ (see the module docstring)."""
    inputs = {"PPRS": K, "GD": None, "AGD": None, "GPipe": m, "GPipe+momentum": m, "PPRS (m rows)": K * m}[method]
    return 2 * depth if inputs is None else 2 * (inputs + depth - 1)


def measure(proto: dict) -> dict:
    """Runs everything: per d, the baselines' best iterations to every ε and PPRS's preset runs per ε."""
    found, started = [], time.time()
    for d in proto["dims"]:
        planted = build(proto, d)
        L, R, f_star = planted.lipschitz, planted.radius, planted.f_star
        levels = [e * L * R for e in proto["eps"]]
        scale = R / L  # the lr grid is relative to R/L, the subgradient method's natural step
        baseline = {"GD": [], "AGD": []}
        iters = min(proto["max_iters"], math.ceil(4 / min(proto["eps"]) ** 2))
        for lr in proto["lrs"]:
            for algo, mus in (("gd", [0.0]), ("agd", proto["agd_mus"])):
                for mu in mus:
                    run = solve_curve(proto["problem"], problem_args=problem_args(proto, d), algo=algo,
                                      lr=lr * scale, mu=mu, iters=iters, seed=0)
                    errors = run["f"] - f_star
                    baseline[algo.upper()].append({"lr": lr * scale, "mu": mu,
                                                   "hits": [first_hit(errors, level) for level in levels]})
        for i, (eps, level) in enumerate(zip(proto["eps"], levels)):
            preset = optim.theorem3(L, R, d, eps=level)
            curves = [solve_curve(proto["problem"], problem_args=problem_args(proto, d), preset="theorem3",
                                  eps=level, seed=seed, microbatch_size=preset.K)["f"] - f_star
                      for seed in range(proto["seeds"])]
            hits = {"PPRS": first_hit(np.mean(curves, axis=0), level)}
            seeds = [first_hit(c, level) for c in curves]
            kept = {}
            for name, configs in baseline.items():
                reached = [c for c in configs if c["hits"][i] is not None]
                best = min(reached, key=lambda c: c["hits"][i]) if reached else None
                hits[name] = best["hits"][i] if best else None
                kept[name] = {"lr": best["lr"], "mu": best["mu"]} if best else None
            if proto["problem"] == "lad":
                hits["GPipe"], hits["PPRS (m rows)"] = hits["GD"], hits["PPRS"]
            found.append({"d": d, "eps_rel": eps, "eps": level, "L": L, "R": R, "m": 2 * d, "K": preset.K,
                          "T_preset": preset.iters, "gamma": preset.gamma, "lr": preset.lr, "iters": hits,
                          "pprs_seed_iters": seeds, "kept": kept, "baseline_iters_run": iters})
    return {"rows": found, "wall_s": time.time() - started}


def iterations(row: dict) -> dict:
    """method → iterations to ε of one (d, ε) row; on a finite sum, GPipe+momentum is AGD's iterations."""
    found = dict(row["iters"])
    if "GPipe" in found:
        found["GPipe+momentum"] = found["AGD"]
    return found


def lines(rows: list[dict], depths: list[int]) -> list[dict]:
    """Per row and method, time to ε against depth: {d, eps_rel, method, times, a, b} (None: not reached)."""
    found = []
    for row in rows:
        iters = iterations(row)
        for method in (m for m in METHODS if m in iters):
            T = iters[method]
            times = None if T is None else [T * per_iteration(method, row["K"], row["m"], D) for D in depths]
            slope, intercept = (None, None) if T is None else np.polyfit(depths, times, 1)
            found.append({"d": row["d"], "eps_rel": row["eps_rel"], "RL_over_eps": 1 / row["eps_rel"],
                          "method": method, "iters": T, "times": times,
                          "a": None if T is None else float(intercept), "b": None if T is None else float(slope)})
    return found


def exponents(found: list[dict]) -> list[dict]:
    """Fitted exponents of the slope b: in RL/ε per (method, d), and in d per (method, ε)."""
    out = []
    for method in METHODS:
        mine = [x for x in found if x["method"] == method and x["b"]]
        for d in sorted({x["d"] for x in mine}):
            pts = [x for x in mine if x["d"] == d]
            if len(pts) > 1:
                p, _ = fit_power([x["RL_over_eps"] for x in pts], [x["b"] for x in pts])
                out.append({"method": method, "in": "RL/ε", "at": f"d = {d}", "exponent": p})
        for eps in sorted({x["eps_rel"] for x in mine}, reverse=True):
            pts = [x for x in mine if x["eps_rel"] == eps]
            if len(pts) > 1:
                p, _ = fit_power([x["d"] for x in pts], [x["b"] for x in pts])
                out.append({"method": method, "in": "d", "at": f"ε = {eps:g}·LR", "exponent": p})
    return out


THEORY = {("PPRS", "RL/ε"): "1 (eq. 12)", ("PPRS", "d"): "1/4 (eq. 12)", ("GD", "RL/ε"): "2 (NSE)",
          ("GD", "d"): "0 (NSE)", ("AGD", "RL/ε"): "2 (NSE; non-smooth)", ("AGD", "d"): "0 (NSE)",
          ("GPipe", "RL/ε"): "2", ("GPipe", "d"): "0", ("GPipe+momentum", "RL/ε"): "2",
          ("GPipe+momentum", "d"): "0", ("PPRS (m rows)", "RL/ε"): "1 (eq. 16)",
          ("PPRS (m rows)", "d"): "1/4 (eq. 16)"}


def shape_fit(found: list[dict], depths: list[int]) -> dict:
    """PPRS's times over every (d, ε, Δ) against c₁(RL/ε)² + c₂(RL/ε)Δd^{1/4}: least squares on relative error
    (each point divided by its measured time); the constants and the largest relative deviation."""
    pts = [(x, D, t) for x in found if x["method"] == "PPRS" and x["times"] for D, t in zip(depths, x["times"])]
    if len(pts) < 2:
        return {}
    A = np.array([[x["RL_over_eps"] ** 2, x["RL_over_eps"] * D * x["d"] ** 0.25] for x, D, _ in pts])
    t = np.array([t for _, _, t in pts])
    c, *_ = np.linalg.lstsq(A / t[:, None], np.ones_like(t), rcond=None)
    model = A @ c
    deviation = model / t - 1
    return {"c1": float(c[0]), "c2": float(c[1]), "max_rel_dev": float(np.max(np.abs(deviation))),
            "median_rel_dev": float(np.median(np.abs(deviation))), "points": len(pts)}


def collect(out: Path, docs: Path | None) -> int:
    """depth.json → the table, exponents and fit (depth.txt), and, with docs, docs/depth.png and docs/depth.md."""
    data = json.loads((out / "depth.json").read_text())
    proto, rows = data["protocol"], data["rows"]
    found = lines(rows, proto["depths"])
    summary = {"lines": found, "exponents": exponents(found), "shape": shape_fit(found, proto["depths"])}
    text = render(proto, rows, summary, data.get("wall_s", 0.0), data.get("machine", ""))
    from pprs_mpi.experiments.figures_theory import depth_png
    return publish(text, out, docs, "depth", partial(depth_png, proto, found, summary["shape"]),
                   doc_name=f"depth_{proto['problem']}")


def render(proto: dict, rows: list[dict], summary: dict, wall_s: float, machine: str) -> str:
    depths = proto["depths"]
    shown = [D for D in depths if D in (1, 10, 100, 1000, 10000)] or depths
    head = "| d | ε/(LR) | K (preset) | T (preset) | " + " | ".join(
        f"{m}: iters | {m}: time at Δ = {', '.join(map(str, shown))}" for m in ("PPRS", "GD", "AGD", "GPipe")) + " |"
    lines_ = [
        f"# Theorem 3 as a function of the depth (`{proto['problem']}`)", "",
        f"_Generated by `python -m pprs_mpi.experiments depth --collect-only --out {proto['out']} --docs docs` from "
        f"`{proto['out']}/depth.json`. Run: `{proto['command']}`, {wall_s / 60:.1f} minutes in one process on "
        f"{machine or 'this machine'}._", "",
        f"`{proto['problem']}` ({DESCRIBED[proto['problem']]}), d ∈ {{{_csv(proto['dims'])}}}, "
        f"ε = ε_rel·LR with ε_rel ∈ {{{_csv(proto['eps'])}}}, Δ ∈ {{{_csv(depths)}}} (time accounting only; the "
        f"iterates do not depend on Δ). PPRS: Theorem 3's preset for each ε, {proto['seeds']} seeds, T_ε from the "
        "mean curve. GD: lr ∈ R/L × {" + _csv(proto["lrs"]) + "}; AGD: the same × μ ∈ {"
        + _csv(proto["agd_mus"]) + "}; each at its best configuration per ε, chosen on the same runs (hindsight, "
        "which favours them)." + (" GPipe is GD's iterations at 2(m + Δ − 1) per iteration (the rows read as "
                                  "examples; 'n/a' where the problem is no finite sum)." if proto["problem"] == "lad"
                                  else " GPipe: n/a (no finite sum)."),
        "", f"![time to ε against Δ](depth_{proto['problem']}.png)", "",
        "Iterations to ε and pipeline time to ε ('–': not reached within the preset's T for PPRS, "
        f"{rows[0]['baseline_iters_run'] if rows else 0:,} iterations for GD/AGD):", "",
        head.replace(" | ", " | ", 1), "|" + "---|" * (4 + 2 * 4)]
    for row in rows:
        cells = []
        for m in ("PPRS", "GD", "AGD", "GPipe"):
            if m not in row["iters"]:
                cells += ["n/a", "n/a"]
                continue
            T = row["iters"][m]
            times = "–" if T is None else ", ".join(f"{T * per_iteration(m, row['K'], row['m'], D):,}" for D in shown)
            cells += ["–" if T is None else f"{T:,}", times]
        lines_.append(f"| {row['d']} | {row['eps_rel']:g} | {row['K']} | {row['T_preset']:,} | " + " | ".join(cells)
                      + " |")
    lines_ += ["", "Fitted exponents of the slope b = ∂(time to ε)/∂Δ (log-log least squares):", "",
               "| method | in | at | fitted exponent | theory |", "|---|---|---|---|---|"]
    lines_ += [f"| {e['method']} | {e['in']} | {e['at']} | {e['exponent']:.2f} | "
               f"{THEORY.get((e['method'], e['in']), '')} |" for e in summary["exponents"]]
    shape = summary["shape"]
    if shape:
        lines_ += ["", f"PPRS's {shape['points']} times against eq. (12)'s shape c₁(RL/ε)² + c₂(RL/ε)Δd^{{1/4}} "
                   f"(least squares in relative error): c₁ = {shape['c1']:.3g}, c₂ = {shape['c2']:.3g}, relative "
                   f"deviation median {shape['median_rel_dev']:.2f}, largest {shape['max_rel_dev']:.2f}."]
    lines_ += ["", *reading(rows, depths, proto["problem"]), *finite_sum(rows)]
    return "\n".join(lines_)


def reading(rows: list[dict], depths: list[int], problem: str) -> list[str]:
    """What the numbers say, computed: which method is fastest at the largest depth, where PPRS's line crosses NSE
    GD's and GPipe's, and (on the worst-case chain) below which ε the chain stops being a worst case."""
    fastest = {}
    for row in rows:
        times = {m: T * per_iteration(m, row["K"], row["m"], depths[-1]) for m, T in iterations(row).items()
                 if T is not None and m in ("PPRS", "GD", "AGD")}
        if times:
            best = min(times, key=times.get)
            fastest[best] = fastest.get(best, 0) + 1
    out = [f"At the largest depth (Δ = {depths[-1]:,}), the fastest of PPRS, GD and AGD to ε: "
           + ", ".join(f"{m} in {n} of {len(rows)} (d, ε) rows" for m, n in sorted(fastest.items())) + ".", ""]
    if problem == "chain_nonsmooth":
        out += ["The chain forces Ω(k) sequential gradients only while ε < LR/(2(1 + √k)) (the span bound), with k = d "
                "here: " + ", ".join(f"d = {d}: {1 / (2 * (1 + math.sqrt(d))):.3g}·LR" for d in
                                     sorted({row["d"] for row in rows}))
                + ". The (RL/ε)² lower bound needs k ≈ (RL/2ε)² coordinates for each ε, far more than these d; "
                "below the threshold only the first k gradients are forced, so this is not the worst case at the "
                "smaller ε, and a tuned AGD can beat both.", ""]
    out += ["Crossover depth Δ* beyond which PPRS (Theorem 3's preset) reaches ε sooner than the best-tuned NSE GD "
           "(T_P·2(K + Δ − 1) = T_G·2Δ) and than GPipe in the finite-sum reading:", ""]
    for row in rows:
        P, G = row["iters"]["PPRS"], row["iters"]["GD"]
        if P is None or G is None:
            out.append(f"- d = {row['d']}, ε = {row['eps_rel']:g}·LR: PPRS {P} and GD {G} iterations (None: not "
                       "reached), no crossover to compute.")
            continue
        gd = "never (PPRS needs as many or more iterations)" if P >= G else f"{P * (row['K'] - 1) / (G - P):,.0f}"
        gp = ("" if "GPipe" not in row["iters"] else "; " + ("never" if P >= G else
              f"{max(0.0, (P * (row['K'] * row['m'] - 1) - G * (row['m'] - 1)) / (G - P)):,.0f}")
              + " against GPipe (PPRS with m rows)")
        out.append(f"- d = {row['d']}, ε = {row['eps_rel']:g}·LR: PPRS {P:,} iterations (K = {row['K']}), GD {G:,}: "
                   f"Δ* = {gd} against NSE GD{gp}.")
    return out


FINITE_SUM_DEPTHS = (1, 10, 100)  # Δ = m (m ≈ Δ), 10m and 100m (m ≪ Δ)


def finite_sum_ratios(rows: list[dict]) -> list[dict]:
    """§5 (eq. 16) on the finite-sum reading: per (d, ε) row, PPRS's time to ε (K·m inputs per iteration) over the
    faster GPipe's (GD or AGD, m inputs) at Δ = m, 10m, 100m (None where one never reached ε); < 1: PPRS sooner."""
    found = []
    for row in (row for row in rows if "GPipe" in row["iters"]):
        iters, ratios = iterations(row), []
        for D in (k * row["m"] for k in FINITE_SUM_DEPTHS):
            gpipe = [iters[g] * per_iteration(g, row["K"], row["m"], D) for g in ("GPipe", "GPipe+momentum")
                     if iters[g] is not None]
            pprs = iters["PPRS (m rows)"]
            ratios.append(None if pprs is None or not gpipe
                          else pprs * per_iteration("PPRS (m rows)", row["K"], row["m"], D) / min(gpipe))
        found.append({"d": row["d"], "m": row["m"], "eps_rel": row["eps_rel"], "ratios": ratios})
    return found


def finite_sum(rows: list[dict]) -> list[str]:
    """The §5 table of finite_sum_ratios."""
    found = finite_sum_ratios(rows)
    if not found:
        return []
    out = ["", "§5, eq. (16), on this convex finite sum (the m = 2d rows read as examples): time to ε of PPRS "
           "(Theorem 3's preset, K·m inputs per iteration) over that of the faster GPipe (GD or AGD, m inputs, best "
           "step in hindsight), at Δ = m (m ≈ Δ) and Δ = 10m, 100m (m ≪ Δ); < 1: PPRS reaches ε sooner.", "",
           "| d | m | ε/(LR) | Δ = m | Δ = 10m | Δ = 100m |", "|---|---|---|---|---|---|"]
    for x in found:
        out.append(f"| {x['d']} | {x['m']} | {x['eps_rel']:g} | "
                   + " | ".join("–" if v is None else f"{v:.3g}" for v in x["ratios"]) + " |")
    return out


def _csv(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in values)


def parser() -> OneLineParser:
    p = study_parser("depth", __doc__.splitlines()[0], "d = 4, two ε, three Δ", "depth.png and depth.md")
    p.add_argument("--problem", choices=PROBLEMS, help="convex problem with known f*, L, R (default lad)")
    p.add_argument("--d", dest="dims", type=_ints, help="comma-separated dimensions (default 4,16,64)")
    p.add_argument("--eps", type=_floats, help="comma-separated ε/(LR) (default 0.1,0.05,0.02,0.01)")
    p.add_argument("--depths", type=_ints, help="comma-separated Δ of the time accounting (default 1,3,...,10000)")
    p.add_argument("--seeds", type=int, help="PPRS noise seeds per (d, ε) (default 3)")
    p.add_argument("--max-iters", type=int, help="most GD/AGD iterations (default 20000; at most 4/ε_min² are run)")
    return p


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _check(proto: dict) -> None:
    if min(proto["dims"]) < 1 or min(proto["depths"]) < 1 or proto["seeds"] < 1 or proto["max_iters"] < 1:
        raise ExperimentError("--d, --depths, --seeds and --max-iters must be >= 1")
    if not all(0 < e < 1 for e in proto["eps"]):
        raise ExperimentError("--eps values are ε/(LR), each in (0, 1)")


def main(argv: list[str]) -> int:
    return run_study("depth", argv, parser().parse_args(argv), (DEFAULTS, QUICK),
                     ("problem", "dims", "eps", "depths", "seeds", "max_iters"), _check, measure, collect)
