"""Figure 3's results from a run folder (fig3 or erm): the table, figure and summary.h5 of the configurations
kept on the tuning pairs (tuning.py), measured on the held-out report pairs with bootstrap intervals over pairs,
and the choices and comparisons of verdict.py. summary.h5 alone rebuilds the table and figure (read_summary)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from pprs_mpi.experiments import curves, verdict
from pprs_mpi.experiments.fig3 import attackable, mu_text, setting_key, settings, span
from pprs_mpi.experiments.runner import ExperimentError, NotReady, read_protocol
from pprs_mpi.experiments.tuning import edges, read_curves, tuned, within_budget

LEVEL_FRACTIONS = (0.5, 0.8, 0.95)  # default table levels: these fractions of the largest decrease of any kept curve
RESAMPLES = 1000  # bootstrap resamples of the report pairs


def selection(proto: dict, verdicts: dict, runs_dir: Path) -> dict[str, dict[str, str]]:
    """setting key → method → the configuration kept on the tuning pairs by the protocol's rule (after the grid's
    growth). Raises NotReady when a tuning run is not finished (another shard's, or one that failed)."""
    return tuned(proto, verdicts, runs_dir)["kept"]


def collect(out: Path, levels: tuple[float, ...] | None = None) -> int:
    """Builds OUT/summary.h5, OUT/fig3.png and OUT/table.{txt,json} from a finished run folder."""
    proto = read_protocol(out)
    verdicts = _verdicts(out, proto)
    try:
        tuning = tuned(proto, verdicts, out / "runs")
    except NotReady as why:
        raise ExperimentError(f"cannot collect: {why}") from None
    pairs = attackable(proto["report_pairs"], verdicts)
    if not pairs:
        raise ExperimentError("no report pair can be attacked (see pairs.json): choose other --report-pairs")
    results = {setting_key(*s): _report(proto, tuning, s, out / "runs", pairs) for s in settings(proto)}
    table = _table(proto, tuning, results, verdicts, levels)
    write_summary(out / "summary.h5", proto, results, table)
    return write_outputs(out, proto, results, table)


def write_outputs(out: Path, proto: dict, results: dict, table: dict) -> int:
    """OUT/fig3.png and OUT/table.{txt,json} from the results (a run's, or read back from summary.h5)."""
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


def _report(proto: dict, tuning: dict, setting: tuple[int, int], runs_dir: Path, pairs: list[int]) -> dict:
    """For one setting: each kept configuration's report curves within the budget."""
    (depth, budget), grid, shown = setting, tuning["grid"], {}
    for method, name in tuning["kept"].get(setting_key(*setting), {}).items():
        iterations, losses, diverged, unfinished = read_curves(runs_dir, name, pairs)
        if unfinished:
            raise ExperimentError(f"cannot collect: {len(unfinished)} report run(s) not finished "
                                  f"(e.g. {unfinished[0]}): run the same command again")
        time, losses = within_budget(grid[name], iterations, losses, depth, budget)
        shown[method] = _shown({**grid[name], "name": name, "diverged": diverged, "edge": edges(grid, grid[name])},
                               time, iterations[:time.size], losses)
    return {"depth": depth, "budget": budget, "selected": shown}


def _shown(config: dict, time: np.ndarray, iteration: np.ndarray, losses: np.ndarray) -> dict:
    """A kept configuration's report curves with their mean and bootstrap means (for the table's intervals and the
    figure's bands)."""
    return {**config, "time": time, "iteration": iteration, "losses": losses, "loss": losses.mean(axis=0),
            "bootstrap": curves.bootstrap_means(losses, RESAMPLES)}


def _table(proto, tuning, results, verdicts, levels) -> dict:
    """Rows per setting and method (kept configuration, its tuning loss, its report statistics), the choices made
    on tuning losses and the comparisons on the report pairs (verdict.py)."""
    kept_curves = [c for r in results.values() for c in r["selected"].values()]
    initial = float(np.mean([c["loss"][0] for c in kept_curves])) if kept_curves else math.nan
    if levels is None:
        lowest = min((float(c["loss"][-1]) for c in kept_curves), default=initial)
        levels = [initial - f * (initial - lowest) for f in LEVEL_FRACTIONS]
    grid, rows = tuning["grid"], []
    for key, result in results.items():
        scored = tuning["scores"][key]
        for method in dict.fromkeys(c["method"] for c in grid.values()):
            mine = [n for n, c in grid.items() if c["method"] == method and n in scored]
            row = {"depth": result["depth"], "budget": result["budget"], "method": method, "configs": len(mine),
                   "tune_diverged": sum(scored[n]["diverged"] for n in mine),
                   "tune_runs": len(mine) * len(tuning["pairs"])}
            c = result["selected"].get(method)
            if c is None:
                rows.append({**row, "selected": None})
                continue
            finals = c["losses"][:, -1]
            row.update(selected=c["name"], lr=c["lr"], gamma=c["gamma"], K=c["K"], mu=c["mu"], edge=c["edge"],
                       tune_final=scored[c["name"]]["final"], tune_reach=scored[c["name"]]["reach"],
                       pairs=int(finals.size), report_diverged=c["diverged"],
                       final_loss=float(c["loss"][-1]), final_ci=curves.interval(c["bootstrap"][:, -1]),
                       points=int(c["time"].size), **level_times(c, levels), pair_finals=finals.tolist(),
                       pair_times=[math.inf if proto["select"] == "final" else
                                   curves.time_to_reach(c["time"], pair, float(proto["select"])) or math.inf
                                   for pair in c["losses"]])
            rows.append(row)
    counts = {kind: {v: sum(verdicts[p]["verdict"] == v for p in proto[f"{kind}_pairs"])
                     for v in ("attackable", "stationary", "target reached")} for kind in ("tune", "report")}
    choices = [{"depth": d, "budget": b, **chosen} for (d, b), chosen in verdict.choices(rows).items()]
    return {"protocol": proto, "levels": list(levels), "initial_mean_loss": initial, "rows": rows,
            "choices": choices, "comparisons": verdict.comparisons(rows, metric_of(proto)), "pair_counts": counts,
            "tuning_rounds": tuning["rounds"], "extensions": tuning["extensions"],
            "tune_scores": {key: {n: s["final"] for n, s in sc.items()} for key, sc in tuning["scores"].items()}}


def level_times(c: dict, levels) -> dict:
    """A kept configuration's report times to each loss level: {'times': mean curve's, 'times_ci': bootstrap
    interval, each resample's level the same decrease from its own initial loss}."""
    return {"times": [curves.time_to_reach(c["time"], c["loss"], level) for level in levels],
            "times_ci": [curves.interval(curves.first_times(c["time"], c["bootstrap"], c["loss"][0] - level))
                         for level in levels]}


def metric_of(proto: dict) -> str:
    """What comparisons compare per pair: final losses, or (under `--select LEVEL`) times to reach the level."""
    return "pair_finals" if proto["select"] == "final" else "pair_times"


def metric_text(proto: dict) -> str:
    return ("final loss" if proto["select"] == "final"
            else f"time to reach loss ≤ {float(proto['select']):g} (+inf if never: a tie when both never do)")


def render(table: dict) -> str:
    """The table as text: one block per depth, then the per-pair comparison."""
    proto, levels = table["protocol"], table["levels"]
    counts = table["pair_counts"]
    head = ["method", "lr", "γ", "μ", "tuning loss", "final loss [95% CI]",
            *[f"time to ≤ {level:.4g} [95% CI]" for level in levels], "diverged (tune grid)", "grid edge"]
    lines = [f"Figure 3 protocol on '{proto['problem']}'" + (f" (λ = {proto['lam']:g})" if "lam" in proto else "")
             + f": mean over the {counts['report']['attackable']} attackable REPORT pairs "
             f"{span(proto['report_pairs'])} of f(y_t); configurations chosen on the tuning pairs "
             f"{span(proto['tune_pairs'])} ({counts['tune']['attackable']} attackable)",
             f"unattackable pairs (not run): tuning {_unattackable(counts['tune'])}; "
             f"report {_unattackable(counts['report'])}",
             "selection: " + ("lowest mean final loss on the tuning pairs within the budget"
                              if proto["select"] == "final"
                              else f"fastest mean tuning curve to reach loss {proto['select']}")
             + "; a diverged run counts as loss +inf. Time: pipeline units, 2(K·m+Δ−1) per iteration "
             f"(m = {proto['examples']} example(s)). "
             f"Mean initial loss {table['initial_mean_loss']:.4g}; "
             f"intervals: bootstrap over pairs ({RESAMPLES} resamples; "
             "for times, each resample's level is the same decrease from its own initial loss)"]
    for depth, budget in verdict.settings(table["rows"]):
        rows = [row for row in table["rows"] if (row["depth"], row["budget"]) == (depth, budget)]
        body = []
        for row in rows:
            if row["selected"] is None:
                body.append([row["method"], "-", "-", "-", "-", "every configuration diverged", *["-"] * len(levels),
                             f"{row['tune_diverged']}/{row['tune_runs']}", ""])
                continue
            body.append([row["method"], *parameter_cells(row), f"{row['tune_final']:.4g}",
                         f"{row['final_loss']:.4g} [{row['final_ci'][0]:.4g}, {row['final_ci'][1]:.4g}]",
                         *[_time_cell(t, ci) for t, ci in zip(row["times"], row["times_ci"])],
                         f"{row['tune_diverged']}/{row['tune_runs']}", ", ".join(row["edge"])])
        widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
        lines += ["", f"Δ = {depth}, budget {budget:,} time units",
                  "  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)),
                  *["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in body]]
    if table.get("comparisons"):
        lines += ["", f"comparisons on the report pairs ({metric_text(proto)}, PPRS − baseline; representatives "
                      "chosen on tuning scores; main: one per depth, tested alone; exploratory: Holm-corrected sign "
                      "tests):"]
        lines += ["  " + comparison_text(c) for c in table["comparisons"]]
    return "\n".join(lines)


def parameter_cells(row: dict) -> list[str]:
    """lr, γ and μ of a kept row as shown ('-' for a baseline's γ; Theorem 3's preset row: 'Thm 3, T = …',
    its γ and η being the theorem's for each pair's own R)."""
    if not math.isfinite(row["lr"]):
        return [f"Thm 3, K = {row['K']}", "Thm 3", mu_text(row["mu"])]
    return [f"{row['lr']:.2g}", f"{row['gamma']:.2g}" if row["gamma"] else "-", mu_text(row["mu"])]


def mean_text(c: dict) -> str:
    if c["mean"] is None:
        return "undefined (infinite differences)"
    return f"{c['mean']:+.3g} [{c['mean_ci'][0]:+.3g}, {c['mean_ci'][1]:+.3g}]"


def comparison_text(c: dict) -> str:
    """One comparison in a line: its statistics and outcome."""
    wilcoxon = "" if c["wilcoxon_p"] is None else f", Wilcoxon p {c['wilcoxon_p']:.2g}"
    return (f"Δ = {c['depth']}, B = {c['budget']:,}, {'MAIN' if c['main'] else 'exploratory'}: {c['method']} vs "
            f"{c['against']}: {c['outcome']} (median {c['median']:+.3g}, mean {mean_text(c)}, lower on "
            f"{c['lower']}/{c['pairs']} pairs, tied on {c['tied']}, "
            f"sign-test p {c['sign_p']:.2g}" + ("" if c["main"] else f", Holm {c['p']:.2g}") + wilcoxon + ")")


def _time_cell(time, ci) -> str:
    if time is None:
        return "not reached"
    high = "not reached" if math.isinf(ci[1]) else f"{ci[1]:,.0f}"
    return f"{time:,.0f} [{ci[0]:,.0f}, {high}]"


def _unattackable(counts: dict) -> str:
    return f"{counts['stationary']} stationary, {counts['target reached']} target already reached"


def write_summary(path: Path, proto: dict, results: dict, table: dict) -> None:
    """summary.h5 (gzip): /<Δ>_<budget>/<method>/{pipeline_time, iteration, mean_loss, pair_loss} for the kept
    configurations on the report pairs, and the protocol and table as JSON attributes: with `read_summary`,
    everything the table, the figure and docs/reproduction.md need, in well under a few MB."""
    with h5py.File(path, "w") as f:
        f.attrs["protocol"] = json.dumps(proto, sort_keys=True)
        f.attrs["table"] = json.dumps(table, default=_json_number)
        for key, result in results.items():
            group = f.create_group(key.replace(":", "_"))
            group.attrs.update(depth=int(result["depth"]), budget=int(result["budget"]))
            for method, c in result["selected"].items():
                g = group.create_group(method.replace(" ", "_").replace("=", ""))
                for name, values in (("pipeline_time", c["time"]), ("iteration", c["iteration"]),
                                     ("mean_loss", c["loss"]), ("pair_loss", c["losses"])):
                    g.create_dataset(name, data=values, compression="gzip", compression_opts=9, shuffle=True)
                g.attrs["config"] = json.dumps({k: v for k, v in c.items() if k not in CURVES}, default=_json_number)


CURVES = ("time", "iteration", "losses", "loss", "bootstrap")


def read_summary(path: Path) -> tuple[dict, dict, dict]:
    """(protocol, table, results) back from summary.h5, the bootstrap recomputed (same seed: same bands)."""
    try:
        with h5py.File(path, "r") as f:
            proto, table = json.loads(f.attrs["protocol"]), json.loads(f.attrs["table"])
            results = {}
            for group in f.values():
                depth, budget = int(group.attrs["depth"]), int(group.attrs["budget"])
                shown = {}
                for g in group.values():
                    c = json.loads(g.attrs["config"])
                    shown[c["method"]] = _shown(c, g["pipeline_time"][()], g["iteration"][()], g["pair_loss"][()])
                order = [r["method"] for r in table["rows"] if (r["depth"], r["budget"]) == (depth, budget)]
                results[setting_key(depth, budget)] = {"depth": depth, "budget": budget,
                                                       "selected": {m: shown[m] for m in order if m in shown}}
    except (OSError, KeyError, ValueError) as err:
        raise ExperimentError(f"cannot read {path} ({err}): run the experiment (or `--collect-only`) first") from None
    order = [setting_key(*s) for s in settings(proto)]
    return proto, table, {key: results[key] for key in order if key in results}


def _json_number(value):
    return float(value) if isinstance(value, (np.floating, np.integer)) else str(value)
