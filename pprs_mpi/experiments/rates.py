"""Theorem 3 in practice: eq. (13)'s bound against the measured E[f(y_T)] − f* on convex problems with known f*.

Each (problem, d, T, K rule) runs PPRS with `--preset theorem3 --iters T` (γ, η, μ and, for the
rule 'preset', K = ⌈(T+1)/√d⌉ from the preset; a number overrides K) over `--seeds` noise seeds,
on the planted problems `lad` and `linf` (f* = 0, L and R known) with m = 2d rows. The measured
error is the mean over seeds of f(y_T) − f*; a row "holds" when that mean is ≤ the bound
3LRd^{1/4}/(T+1) + LRd^{-1/4}/(2K). Each (problem, d, K rule) series is also judged on its rate
(decay.py): its error must fall at least as fast in T as the bound (fitted exponents). `--step-rule wrong-small-step`
runs a step rule that is wrong on purpose, to show that the rate check catches it: Theorem 3's η
divided by √((T+1)/(T₀+1)), T₀ the smallest T (the two rules agree there), given to each solve as
`--lr` over the preset's; γ, μ and K stay the preset's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from pprs_mpi import optim, problems
from pprs_mpi.experiments import curves, decay
from pprs_mpi.experiments.runner import (FINISHED, ExperimentError, OneLineParser, Run, cost, parse_shard,
                                         solve_options, read_protocol, run_all)
from pprs_mpi.trace import TraceError, load

DEFAULTS = {"problems": ["lad", "linf"], "dims": [4, 16, 64], "Ts": [10, 30, 100, 300], "K_rules": ["preset", "1"],
            "seeds": 5, "step_rule": "theorem3"}
STEP_RULES = ("theorem3", "wrong-small-step")


def build(problem: str, d: int):
    """The planted problem of a row: dimension d, 2d rows, R = 1, problem seed 0."""
    return problems.build(problem, depth=8, dim=d, rows=2 * d, radius=1.0, problem_seed=0)


def rows_of(proto: dict) -> list[dict]:
    """One row per (problem, d, T, K rule), with the K it runs and the problem's L, R and f*."""
    found = []
    for problem in proto["problems"]:
        for d in proto["dims"]:
            planted = build(problem, d)
            for T in proto["Ts"]:
                for rule in proto["K_rules"]:
                    K = (optim.theorem3(planted.lipschitz, planted.radius, d, iters=T).K if rule == "preset"
                         else int(rule))
                    found.append({"problem": problem, "d": d, "T": T, "K_rule": rule, "K": K, "L": planted.lipschitz,
                                  "R": planted.radius, "f_star": planted.f_star,
                                  "name": f"{problem}_d{d}_T{T}_K{rule}"})
    return found


def step_size(proto: dict, row: dict) -> dict:
    """The solve options of the protocol's step rule for a row: none for Theorem 3's (the preset's η), and for
    'wrong-small-step' the preset's η divided by √((T+1)/(T₀+1)), T₀ the protocol's smallest T."""
    if proto["step_rule"] == "theorem3":
        return {}
    lr = optim.theorem3(row["L"], row["R"], row["d"], iters=row["T"]).lr
    return {"lr": lr * math.sqrt((min(proto["Ts"]) + 1) / (row["T"] + 1))}


def runs(proto: dict) -> list[Run]:
    found = []
    for row in rows_of(proto):
        for seed in range(proto["seeds"]):
            options = {**solve_options(proto["extra_args"]), "problem": row["problem"], "dim": row["d"],
                       "rows": 2 * row["d"], "preset": "theorem3", "iters": row["T"], "seed": seed,
                       "eval_every": row["T"], "microbatch_size": row["K"],
                       **({} if row["K_rule"] == "preset" else {"K": row["K"]}), **step_size(proto, row)}
            found.append(Run(f"{row['name']}_seed{seed}", options, cost(row["T"], row["K"])))
    return found


def collect(out: Path) -> int:
    """Builds OUT/rates.{txt,json,png} from the traces present."""
    proto = read_protocol(out)
    rows, left_out = [], []
    for row in rows_of(proto):
        errors, starts = [], []
        for seed in range(proto["seeds"]):
            path = out / "runs" / f"{row['name']}_seed{seed}.h5"
            try:
                trace = load(path)
            except TraceError:
                left_out.append(path.stem)
                continue
            if trace.status not in FINISHED:
                left_out.append(f"{path.stem} ({trace.status})")
                continue
            if int(trace.config["K"]) != row["K"]:
                raise ExperimentError(f"{path}: ran with K={trace.config['K']}, the protocol says K={row['K']}")
            curve = curves.loss_curve(trace)[1] - row["f_star"]
            errors.append(float(curve[-1]))  # +inf if the run diverged
            starts.append(float(curve[0]))
        if not errors:
            continue
        measured = float(np.mean(errors))
        bound = optim.theorem3_bound(row["L"], row["R"], row["d"], row["T"], row["K"])
        rows.append({**{k: v for k, v in row.items() if k != "name"}, "seeds": len(errors), "measured": measured,
                     "stderr": float(np.std(errors, ddof=1) / math.sqrt(len(errors))) if len(errors) > 1 else 0.0,
                     "max": float(np.max(errors)), "bound": bound, "holds": bool(measured <= bound),
                     "ratio": measured / bound, "start": float(np.mean(starts)), "errors": errors})
    if not rows:
        raise ExperimentError(f"no finished run of this protocol in {out / 'runs'}")
    series = decay.series_of(rows)
    sessions = json.loads((out / "sessions.json").read_text()) if (out / "sessions.json").exists() else []
    text = render(rows, series, left_out, proto)
    (out / "rates.txt").write_text(text + "\n")
    result = {"protocol": proto, "rows": rows, "series": series, "left_out": left_out, "sessions": sessions}
    (out / "rates.json").write_text(json.dumps(result, indent=1))
    from pprs_mpi.experiments.figures import rates_png
    rates_png(result, out / "rates.png")
    print(text)
    print(f"written: {out / 'rates.txt'}, {out / 'rates.json'}, {out / 'rates.png'}")
    return 0


def rule_text(proto: dict) -> str:
    """What the protocol's step rule is, in words."""
    if proto["step_rule"] == "theorem3":
        return "Theorem 3 preset (γ, η, μ = Nesterov; K from the preset or fixed)"
    return (f"step rule WRONG ON PURPOSE ({proto['step_rule']}): Theorem 3's η divided by "
            f"√((T+1)/{min(proto['Ts']) + 1}); γ, μ = Nesterov and K from the preset or fixed")


def render(rows: list[dict], series: list[dict], left_out: list[str], proto: dict) -> str:
    head = ["problem", "d", "T", "K", "L", "seeds", "f(y_0)−f*", "mean f(y_T)−f*", "± s.e.", "max", "bound (13)",
            "ratio", "holds"]
    body = [[r["problem"], r["d"], r["T"], f"{r['K']} ({r['K_rule']})", f"{r['L']:.3g}", r["seeds"],
             f"{r['start']:.4g}", f"{r['measured']:.4g}", f"{r['stderr']:.2g}", f"{r['max']:.4g}", f"{r['bound']:.4g}",
             f"{r['ratio']:.3f}", "yes" if r["holds"] else "NO"] for r in rows]
    held, passed = sum(r["holds"] for r in rows), sum(s["passes"] for s in series)
    lines = [f"{rule_text(proto)}, R = 1, f* = 0; holds = mean over seeds ≤ eq. (13)", *_table(head, body),
             f"the bound holds in {held} of {len(rows)} rows", "",
             f"rate check (decay.py): exponent p of mean error ∝ (T+1)^p fitted over the T's where the bound is under "
             f"f(y_0) − f*, against the bound's exponent over the same T's; a series passes when the bound holds at "
             f"every T and p ≤ p_bound + {decay.Z:g} s.e. (bootstrap over seeds)",
             *_table(decay.HEAD, [decay.cells(s) for s in series]),
             f"the rate check passes {passed} of {len(series)} series"]
    if left_out:
        lines.append(f"left out {len(left_out)} runs (missing or unfinished): {', '.join(left_out[:5])}"
                     f"{' ...' if len(left_out) > 5 else ''}")
    return "\n".join(lines)


def _table(head: list[str], body: list[list]) -> list[str]:
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _k_rules(text: str) -> list[str]:
    rules = text.split(",")
    bad = [rule for rule in rules if rule != "preset" and not (rule.isdigit() and int(rule) >= 1)]
    if bad:
        raise argparse.ArgumentTypeError(f"a K rule is 'preset' or an integer >= 1, got '{bad[0]}'")
    return rules


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m pprs_mpi.experiments rates", description=__doc__.splitlines()[0],
                      allow_abbrev=False, epilog="Other flags (e.g. --depth 8) go to every solve unchanged.")
    p.add_argument("--out", default="rates", help="output folder (default ./rates)")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"],
                   help=f"noise seeds per row (default {DEFAULTS['seeds']})")
    p.add_argument("--problems", type=lambda text: text.split(","), default=DEFAULTS["problems"],
                   help="comma-separated (default lad,linf)")
    p.add_argument("--d", dest="dims", type=_ints, default=DEFAULTS["dims"],
                   help="comma-separated dimensions (default 4,16,64)")
    p.add_argument("--T", dest="Ts", type=_ints, default=DEFAULTS["Ts"],
                   help="comma-separated iterations (default 10,30,100,300)")
    p.add_argument("--K", dest="K_rules", type=_k_rules, default=DEFAULTS["K_rules"],
                   help="comma-separated K rules: 'preset' (⌈(T+1)/√d⌉) or a number (default preset,1)")
    p.add_argument("--step-rule", choices=STEP_RULES, default=DEFAULTS["step_rule"],
                   help="theorem3 (default: the preset's η) or wrong-small-step, WRONG ON PURPOSE to show that the "
                        "rate check catches it: the preset's η divided by √((T+1)/(T₀+1)), T₀ the smallest --T")
    p.add_argument("--shard", default="0/1", help="I/N: do only runs I, I+N, ... (Slurm job arrays)")
    p.add_argument("--collect-only", action="store_true", help="only build the table and plot from OUT/runs")
    return p


def main(argv: list[str]) -> int:
    args, extra = parser().parse_known_args(argv)
    out = Path(args.out)
    if args.collect_only:
        return collect(out)
    if args.seeds < 1 or min(args.dims) < 1 or min(args.Ts) < 1:
        raise ExperimentError("--seeds, --d and --T must be >= 1")
    unknown = sorted(set(args.problems) - {"lad", "linf", "branch"})
    if unknown:
        raise ExperimentError("rates needs a planted problem with known f*, L and R (lad, linf, branch), "
                              f"got '{unknown[0]}'")
    if args.step_rule != "theorem3" and "lr" in solve_options(extra):
        raise ExperimentError(f"--step-rule {args.step_rule} sets each solve's --lr itself: drop --lr")
    proto = {"experiment": "rates", **{k: getattr(args, k) for k in ("problems", "dims", "Ts", "K_rules", "seeds",
                                                                      "step_rule")},
             "extra_args": extra}
    return run_all([("runs", lambda: runs(proto))], out, proto, parse_shard(args.shard), "rates", lambda: collect(out),
                   "python -m pprs_mpi.experiments rates " + " ".join(argv))
