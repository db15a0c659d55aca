"""Theorem 3 in practice: eq. (13)'s bound against the measured E[f(y_T)] − f* on convex problems with known f*.

Each (problem, d, T, K rule) runs PPRS with `--preset theorem3 --iters T` (γ, η, μ and, for the
rule 'preset', K = ⌈(T+1)/√d⌉ from the preset; a number overrides K) over `--seeds` noise seeds,
on the planted problems `lad` and `linf` (f* = 0, L and R known) with m = 2d rows. The measured
error is the mean over seeds of f(y_T) − f*; a row "holds" when that mean is ≤ the bound
3LRd^{1/4}/(T+1) + LRd^{-1/4}/(2K).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from pprs_mpi import optim, problems
from pprs_mpi.experiments import curves
from pprs_mpi.experiments.runner import (FINISHED, ExperimentError, OneLineParser, Run, cost, parse_shard,
                                         solve_options, read_protocol, run_all)
from pprs_mpi.trace import TraceError, load

DEFAULTS = {"problems": ["lad", "linf"], "dims": [4, 16, 64], "Ts": [10, 30, 100, 300], "K_rules": ["preset", "1"],
            "seeds": 5}


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


def runs(proto: dict) -> list[Run]:
    found = []
    for row in rows_of(proto):
        for seed in range(proto["seeds"]):
            options = {**solve_options(proto["extra_args"]), "problem": row["problem"], "dim": row["d"],
                       "rows": 2 * row["d"], "preset": "theorem3", "iters": row["T"], "seed": seed,
                       "eval_every": row["T"], "microbatch_size": row["K"],
                       **({} if row["K_rule"] == "preset" else {"K": row["K"]})}
            found.append(Run(f"{row['name']}_seed{seed}", options, cost(row["T"], row["K"])))
    return found


def collect(out: Path) -> int:
    """Builds OUT/rates.{txt,json,png} from the traces present."""
    proto = read_protocol(out)
    rows, left_out = [], []
    for row in rows_of(proto):
        errors = []
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
            errors.append(curves.loss_curve(trace)[1][-1] - row["f_star"])  # +inf if the run diverged
        if not errors:
            continue
        errors = np.array(errors)
        measured = float(np.mean(errors))
        bound = optim.theorem3_bound(row["L"], row["R"], row["d"], row["T"], row["K"])
        rows.append({**{k: v for k, v in row.items() if k != "name"}, "seeds": len(errors), "measured": measured,
                     "stderr": float(np.std(errors, ddof=1) / math.sqrt(len(errors))) if len(errors) > 1 else 0.0,
                     "max": float(np.max(errors)), "bound": bound, "holds": bool(measured <= bound),
                     "ratio": measured / bound})
    if not rows:
        raise ExperimentError(f"no finished run of this protocol in {out / 'runs'}")
    text = render(rows, left_out)
    (out / "rates.txt").write_text(text + "\n")
    (out / "rates.json").write_text(json.dumps({"protocol": proto, "rows": rows, "left_out": left_out}, indent=1))
    from pprs_mpi.experiments.figures import rates_png
    rates_png(rows, out / "rates.png")
    print(text)
    print(f"written: {out / 'rates.txt'}, {out / 'rates.json'}, {out / 'rates.png'}")
    return 0


def render(rows: list[dict], left_out: list[str]) -> str:
    head = ["problem", "d", "T", "K", "L", "seeds", "mean f(y_T)−f*", "± s.e.", "max", "bound (13)", "ratio", "holds"]
    body = [[r["problem"], r["d"], r["T"], f"{r['K']} ({r['K_rule']})", f"{r['L']:.3g}", r["seeds"],
             f"{r['measured']:.4g}", f"{r['stderr']:.2g}", f"{r['max']:.4g}", f"{r['bound']:.4g}", f"{r['ratio']:.3f}",
             "yes" if r["holds"] else "NO"] for r in rows]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    held = sum(r["holds"] for r in rows)
    lines = ["Theorem 3 preset (γ, η, μ = Nesterov; K from the preset or fixed), R = 1, f* = 0; "
             "holds = mean over seeds ≤ eq. (13)",
             "  ".join(str(h).ljust(w) for h, w in zip(head, widths)),
             *["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in body],
             f"the bound holds in {held} of {len(rows)} rows"]
    if left_out:
        lines.append(f"left out {len(left_out)} runs (missing or unfinished): {', '.join(left_out[:5])}"
                     f"{' ...' if len(left_out) > 5 else ''}")
    return "\n".join(lines)


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
    proto = {"experiment": "rates", **{k: getattr(args, k) for k in ("problems", "dims", "Ts", "K_rules", "seeds")},
             "extra_args": extra}
    return run_all([("runs", lambda: runs(proto))], out, proto, parse_shard(args.shard), "rates", lambda: collect(out))
