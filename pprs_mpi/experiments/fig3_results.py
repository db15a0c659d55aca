"""Figure 3's results from a run folder: the selection on the tuning pairs, and the table, figure and summary
of the kept configurations on the held-out report pairs, with bootstrap intervals over pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from pprs_mpi.experiments import curves
from pprs_mpi.experiments.fig3 import attackable, configs, span
from pprs_mpi.experiments.runner import FINISHED, ExperimentError, NotReady, read_protocol
from pprs_mpi.trace import TraceError, load

LEVEL_FRACTIONS = (0.5, 0.8, 0.95)  # default table levels: these fractions of the largest decrease of any kept curve
RESAMPLES = 1000  # bootstrap resamples of the report pairs


def read_curves(runs_dir: Path, name: str, pairs: list[int]) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """(iteration grid, pairs × points losses, diverged runs, runs not finished) of one configuration."""
    found, diverged, unfinished = [], 0, []
    for pair in pairs:
        stem = f"{name}_pair{pair:03d}"
        try:
            trace = load(runs_dir / f"{stem}.h5")
        except TraceError:
            unfinished.append(stem)
            continue
        if trace.status not in FINISHED:
            unfinished.append(f"{stem} ({trace.status})")
            continue
        found.append(curves.loss_curve(trace))
        diverged += trace.status == "diverged"
    if unfinished or not found:
        return np.empty(0), np.empty((0, 0)), diverged, unfinished or [name]
    return *curves.curve_matrix(found), diverged, []


def within_budget(config: dict, grid: np.ndarray, losses: np.ndarray, depth: int, budget: float):
    """(pipeline times, losses[:, points]) of the part of a configuration's curves within a depth's budget."""
    time = curves.retime(grid, config["K"], depth)
    keep = time <= budget
    return time[keep], losses[:, keep]


def selection(proto: dict, verdicts: dict, runs_dir: Path) -> dict[str, dict[str, str]]:
    """depth → method → the configuration kept on the tuning pairs by the protocol's rule. Raises NotReady when a
    tuning run is not finished (another shard's, or one that failed)."""
    return _tuning(proto, verdicts, runs_dir)["kept"]


def _tuning(proto: dict, verdicts: dict, runs_dir: Path) -> dict:
    """The selection and, per depth and configuration, its tuning score, final loss and divergences."""
    grid, pairs = configs(proto), attackable(proto["tune_pairs"], verdicts)
    if not pairs:
        raise ExperimentError("no tuning pair can be attacked (see pairs.json): choose other --tune-pairs")
    read, missing = {}, []
    for name in grid:
        iterations, losses, diverged, unfinished = read_curves(runs_dir, name, pairs)
        missing += unfinished
        read[name] = (iterations, losses, diverged)
    if missing:
        raise NotReady(f"{len(missing)} tuning run(s) not finished yet (e.g. {missing[0]}): run the same command "
                       "again once every shard's tuning is done")
    kept, scores = {}, {}
    for depth, budget in proto["budgets"].items():
        scored = {}
        for name, c in grid.items():
            iterations, losses, diverged = read[name]
            time, losses = within_budget(c, iterations, losses, int(depth), budget)
            mean = losses.mean(axis=0)
            reach = math.inf if proto["select"] == "final" else (
                curves.time_to_reach(time, mean, float(proto["select"])) or math.inf)
            scored[name] = {"final": float(mean[-1]), "reach": reach, "diverged": diverged}
        for method in dict.fromkeys(c["method"] for c in grid.values()):
            mine = {n: s for n, s in scored.items() if grid[n]["method"] == method and math.isfinite(s["final"])}
            if mine:
                kept.setdefault(depth, {})[method] = min(mine, key=lambda n: (mine[n]["reach"], mine[n]["final"]))
        scores[depth] = scored
    return {"kept": kept, "scores": scores, "pairs": pairs}


def collect(out: Path, levels: tuple[float, ...] | None = None) -> int:
    """Builds OUT/summary.h5, OUT/fig3.png and OUT/table.{txt,json} from a finished run folder."""
    proto = read_protocol(out)
    verdicts = _verdicts(out, proto)
    try:
        tuning = _tuning(proto, verdicts, out / "runs")
    except NotReady as why:
        raise ExperimentError(f"cannot collect: {why}") from None
    grid, pairs = configs(proto), attackable(proto["report_pairs"], verdicts)
    if not pairs:
        raise ExperimentError("no report pair can be attacked (see pairs.json): choose other --report-pairs")
    results = {depth: _report(proto, grid, tuning, depth, out / "runs", pairs) for depth in proto["budgets"]}
    table = _table(proto, grid, tuning, results, verdicts, levels)
    _write_summary(out / "summary.h5", proto, results, table)
    from pprs_mpi.experiments.figures import fig3_png
    fig3_png(results, proto, table, out / "fig3.png")
    text = render(table)
    (out / "table.txt").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps(table, indent=1, default=_json_number))
    print(text)
    print(f"written: {out / 'summary.h5'}, {out / 'fig3.png'}, {out / 'table.txt'}, {out / 'table.json'}")
    return 0


def _verdicts(out: Path, proto: dict) -> dict[int, dict]:
    """The screening of the run (OUT/pairs.json), or every pair attackable where the problem has none."""
    pairs = sorted(set(proto["tune_pairs"]) | set(proto["report_pairs"]))
    if "lam" not in proto:
        return {pair: {"verdict": "attackable"} for pair in pairs}
    try:
        known = {int(p): v for p, v in json.loads((out / "pairs.json").read_text()).items()}
        return {pair: known[pair] for pair in pairs}
    except (OSError, ValueError, KeyError) as err:
        raise ExperimentError(f"{out / 'pairs.json'} is missing or incomplete ({err}): "
                              "run the experiment first") from None


def _report(proto: dict, grid: dict, tuning: dict, depth: str, runs_dir: Path, pairs: list[int]) -> dict:
    """For one depth: each kept configuration's report curves within the budget."""
    budget, shown = proto["budgets"][depth], {}
    for method, name in tuning["kept"].get(depth, {}).items():
        iterations, losses, diverged, unfinished = read_curves(runs_dir, name, pairs)
        if unfinished:
            raise ExperimentError(f"cannot collect: {len(unfinished)} report run(s) not finished "
                                  f"(e.g. {unfinished[0]}): run the same command again")
        time, losses = within_budget(grid[name], iterations, losses, int(depth), budget)
        shown[method] = {**grid[name], "name": name, "time": time, "losses": losses, "loss": losses.mean(axis=0),
                         "iteration": iterations[:time.size], "diverged": diverged,
                         "bootstrap": curves.bootstrap_means(losses, RESAMPLES)}
    return {"budget": budget, "selected": shown}


def _table(proto, grid, tuning, results, verdicts, levels) -> dict:
    """Rows per depth and method (kept configuration, its report statistics), PPRS-against-baseline wins per pair."""
    kept_curves = [c for r in results.values() for c in r["selected"].values()]
    initial = float(np.mean([c["loss"][0] for c in kept_curves])) if kept_curves else math.nan
    if levels is None:
        lowest = min((float(c["loss"][-1]) for c in kept_curves), default=initial)
        levels = [initial - f * (initial - lowest) for f in LEVEL_FRACTIONS]
    rows, wins = [], []
    for depth, result in results.items():
        scored = tuning["scores"][depth]
        for method in dict.fromkeys(c["method"] for c in grid.values()):
            mine = [n for n, c in grid.items() if c["method"] == method]
            row = {"depth": int(depth), "budget": result["budget"], "method": method, "configs": len(mine),
                   "tune_diverged": sum(scored[n]["diverged"] for n in mine),
                   "tune_runs": len(mine) * len(tuning["pairs"])}
            c = result["selected"].get(method)
            if c is None:
                rows.append({**row, "selected": None})
                continue
            finals = c["losses"][:, -1]
            row.update(selected=c["name"], lr=c["lr"], gamma=c["gamma"], K=c["K"], mu=c["mu"], edge=_edges(proto, c),
                       tune_final=scored[c["name"]]["final"], pairs=int(finals.size), report_diverged=c["diverged"],
                       final_loss=float(c["loss"][-1]), final_ci=curves.interval(c["bootstrap"][:, -1]),
                       points=int(c["time"].size),
                       times=[curves.time_to_reach(c["time"], c["loss"], level) for level in levels],
                       times_ci=[curves.interval(curves.first_times(c["time"], c["bootstrap"], c["loss"][0] - level))
                                 for level in levels], pair_finals=finals.tolist())
            rows.append(row)
        for method, c in result["selected"].items():
            for against in ("GD", "AGD"):
                if c["algo"] == "pprs" and against in result["selected"]:
                    other = result["selected"][against]["losses"][:, -1]
                    wins.append({"depth": int(depth), "method": method, "against": against,
                                 **curves.paired(c["losses"][:, -1], other)})
    counts = {kind: {v: sum(verdicts[p]["verdict"] == v for p in proto[f"{kind}_pairs"])
                     for v in ("attackable", "stationary", "target reached")} for kind in ("tune", "report")}
    return {"protocol": proto, "levels": list(levels), "initial_mean_loss": initial, "rows": rows, "wins": wins,
            "pair_counts": counts, "tune_scores": {d: {n: s["final"] for n, s in sc.items()}
                                                   for d, sc in tuning["scores"].items()}}


def _edges(proto: dict, c: dict) -> list[str]:
    """The grid edges a kept configuration sits on (a wider grid might find better): e.g. ['lr min']."""
    found = [f"lr {side}" for side, value in (("min", min(proto["lrs"])), ("max", max(proto["lrs"])))
             if c["lr"] == value and len(proto["lrs"]) > 1]
    if c["algo"] == "pprs" and len(proto["gammas"]) > 1:
        found += [f"γ {side}" for side, value in (("min", min(proto["gammas"])), ("max", max(proto["gammas"])))
                  if c["gamma"] == value]
    return found


def render(table: dict) -> str:
    """The table as text: one block per depth, then the per-pair comparison."""
    proto, levels = table["protocol"], table["levels"]
    counts = table["pair_counts"]
    head = ["method", "lr", "γ", "μ", "final loss [95% CI]", *[f"time to ≤ {level:.4g} [95% CI]" for level in levels],
            "diverged (tune grid)", "grid edge"]
    lines = [f"Figure 3 protocol on '{proto['problem']}'" + (f" (λ = {proto['lam']:g})" if "lam" in proto else "")
             + f": mean over the {counts['report']['attackable']} attackable REPORT pairs "
             f"{span(proto['report_pairs'])} of f(y_t); configurations chosen on the tuning pairs "
             f"{span(proto['tune_pairs'])} ({counts['tune']['attackable']} attackable)",
             f"unattackable pairs (not run): tuning {_unattackable(counts['tune'])}; "
             f"report {_unattackable(counts['report'])}",
             "selection: " + ("lowest mean final loss on the tuning pairs within the budget"
                              if proto["select"] == "final"
                              else f"fastest mean tuning curve to reach loss {proto['select']}")
             + "; a diverged run counts as loss +inf. Time: pipeline units, 2(K+Δ−1) per iteration. "
             f"Mean initial loss {table['initial_mean_loss']:.4g}; "
             f"intervals: bootstrap over pairs ({RESAMPLES} resamples; "
             "for times, each resample's level is the same decrease from its own initial loss)"]
    for depth in dict.fromkeys(row["depth"] for row in table["rows"]):
        rows = [row for row in table["rows"] if row["depth"] == depth]
        body = []
        for row in rows:
            if row["selected"] is None:
                body.append([row["method"], "-", "-", "-", "every configuration diverged", *["-"] * len(levels),
                             f"{row['tune_diverged']}/{row['tune_runs']}", ""])
                continue
            body.append([row["method"], f"{row['lr']:.0e}", f"{row['gamma']:.0e}" if row["gamma"] else "-",
                         f"{row['mu']:g}",
                         f"{row['final_loss']:.4g} [{row['final_ci'][0]:.4g}, {row['final_ci'][1]:.4g}]",
                         *[_time_cell(t, ci) for t, ci in zip(row["times"], row["times_ci"])],
                         f"{row['tune_diverged']}/{row['tune_runs']}", ", ".join(row["edge"])])
        widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
        lines += ["", f"Δ = {depth} (budget {rows[0]['budget']:,} time units)",
                  "  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)),
                  *["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in body]]
    if table["wins"]:
        lines += ["", "each PPRS row against GD and AGD on the same report pairs (final loss, same budget; "
                      "difference PPRS − baseline with its 95% bootstrap interval):"]
        for depth in dict.fromkeys(w["depth"] for w in table["wins"]):
            lines += [f"  Δ = {depth}: {w['method']} vs {w['against']}: lower on {100 * w['fraction']:.0f}% of pairs, "
                      f"mean difference {w['difference']:+.3g} "
                      f"[{w['difference_ci'][0]:+.3g}, {w['difference_ci'][1]:+.3g}]"
                      for w in table["wins"] if w["depth"] == depth]
    return "\n".join(lines)


def _time_cell(time, ci) -> str:
    if time is None:
        return "not reached"
    high = "not reached" if math.isinf(ci[1]) else f"{ci[1]:,.0f}"
    return f"{time:,.0f} [{ci[0]:,.0f}, {high}]"


def _unattackable(counts: dict) -> str:
    return f"{counts['stationary']} stationary, {counts['target reached']} target already reached"


def _write_summary(path: Path, proto: dict, results: dict, table: dict) -> None:
    """summary.h5: /depth_<Δ>/<method>/{pipeline_time, iteration, mean_loss, pair_loss} for the kept configurations
    on the report pairs, and the protocol and table as JSON attributes."""
    with h5py.File(path, "w") as f:
        f.attrs["protocol"] = json.dumps(proto, sort_keys=True)
        f.attrs["table"] = json.dumps(table, default=_json_number)
        for depth, result in results.items():
            group = f.create_group(f"depth_{depth}")
            group.attrs.update(depth=int(depth), budget=float(result["budget"]))
            for method, c in result["selected"].items():
                g = group.create_group(method.replace(" ", "_").replace("=", ""))
                g["pipeline_time"], g["iteration"], g["mean_loss"], g["pair_loss"] = (
                    c["time"], c["iteration"], c["loss"], c["losses"])
                g.attrs.update({k: c[k] for k in ("name", "method", "algo", "K", "lr", "gamma", "mu", "diverged")})


def _json_number(value):
    return float(value) if isinstance(value, (np.floating, np.integer)) else str(value)
