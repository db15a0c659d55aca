"""The sections of docs/reproduction.md that describe one Figure 3-style table (fig3 or erm): verdict, protocol,
results, the paper's statements, cost. Every sentence is computed from the table; choices come from verdict.py
(tuning losses only) and every claim about a difference from its sign test.
"""

from __future__ import annotations

from pprs_mpi.experiments import verdict
from pprs_mpi.experiments.fig3 import PRESET, mu_text, span
from pprs_mpi.experiments.fig3_results import comparison_text, mean_text, metric_text, parameter_cells

PAPER_LRS = {"PPRS K=2 μ=0": 1e-4, "PPRS K=10 μ=0": 1e-3, "PPRS K=100 μ=0": 1e-3, "GD": 1e-5, "AGD": 1e-7}  # §6


TESTED = "the paper's PPRS (μ = 0; K the one with the best tuning score)"  # the main comparisons' PPRS row


def verdict_lines(table: dict, what: str, tested: str = TESTED) -> list[str]:
    """The main comparisons (one per depth) in words, then the exploratory ones as a list; `tested`: which PPRS row
    they test, in words."""
    found = table["comparisons"]
    lines = [f"The main comparison of {what}, one per depth and declared before any report run: {tested} "
             "against the best baseline (best tuning score), at the "
             "depth's longest budget, on the held-out report pairs, paired (same pair, same budget), on the "
             f"{metric_text(table['protocol'])}, by an exact two-sided sign test at α = 0.05 (a tie on the tuning "
             "score goes to the lower tuning final loss; rows still tied are all compared and the outcome least "
             "favourable to PPRS is the verdict). Every choice is made on "
             "the tuning pairs alone; report pairs enter only the statistics. 'lower'/'higher' means the test "
             "rejects, in the direction of the median difference.", ""]
    for c in (c for c in found if c["main"]):
        lines.append(f"- **Δ = {c['depth']} (budget {c['budget']:,}): {c['method']} vs {c['against']}: "
                     f"{c['outcome']}.** Median difference {c['median']:+.3g}, PPRS lower on {c['lower']} of "
                     f"{c['pairs']} pairs (higher on {c['higher']}, tied on {c['tied']}), sign test p = "
                     f"{c['sign_p']:.2g}" + ("" if c["wilcoxon_p"] is None else f", Wilcoxon p = {c['wilcoxon_p']:.2g}")
                     + f"; mean difference {mean_text(c)} (95% bootstrap)"
                     + (f"; tied on the tuning pairs with {', '.join(c['tied_with'])}, less unfavourable to PPRS"
                        if c.get("tied_with") else "") + ".")
    within_pprs = any(c["against"].startswith("PPRS") for c in found if not c["main"])  # +momentum vs μ = 0
    lines += ["", "Exploratory (every other PPRS row against every baseline, at every budget"
                  + (", and +momentum against μ = 0" if within_pprs else "")
                  + "; sign-test p Holm-corrected over all of them; not a verdict):", ""]
    lines += [f"- {comparison_text(c)}" for c in found if not c["main"]]
    return lines


def protocol_lines(table: dict, sessions: list[dict], problem_text: str, added_sessions: list[dict] = ()) -> list[str]:
    """The protocol of a table's run, then of the run of rows added to it at report time (combined.py), if any."""
    p, counts = table["protocol"], table["pair_counts"]
    commands = list(dict.fromkeys(s["command"] for s in sessions if s.get("command")))
    grown = ", ".join(f"{method}: +{', '.join(f'{axis} {_list(v)}' for axis, v in ext.items())}"
                      for method, ext in table.get("extensions", {}).items()) or "none"
    sizes = {r["method"]: r["configs"] for r in table["rows"]}
    return [f"- Problem: {problem_text}" + (f", λ = {p['lam']:g}" if "lam" in p else "") + ".",
            f"- Pairs: tuning {span(p['tune_pairs'])} ({counts['tune']['attackable']} attackable), report "
            f"{span(p['report_pairs'])} ({counts['report']['attackable']} attackable). The two sets never mix.",
            f"- Grid: PPRS lr ∈ {{{_list(p['lrs'])}}}, γ ∈ {{{_list(p['gammas'])}}}, K ∈ {{{_list(p['Ks'])}}}, "
            f"μ ∈ {{{_list(p['pprs_mus'])}}}; baselines lr ∈ {{{_list(p['baseline_lrs'])}}}, "
            f"{p['baselines']['gd']} μ = 0, {p['baselines']['agd']} μ ∈ {{{_list(p['agd_mus'])}}}. Grown past edges "
            f"(up to {p['extend_rounds']} rounds; {table.get('tuning_rounds', 0)} done): {grown}. Configurations per "
            "row: " + ", ".join(f"{m} {n}" for m, n in sizes.items()) + ".",
            "- Selection: per setting and row, " + ("the lowest mean final loss over the tuning pairs within the "
                                                     "budget" if p["select"] == "final" else
                                                     f"the fastest mean tuning curve to loss {p['select']}")
            + "; a diverged run counts as +inf, so a configuration with a divergence is never kept.",
            f"- Time: an iteration costs 2(K·m + Δ − 1) pipeline units, m = {p['examples']} (baselines: K = 1); "
            "budgets " + ", ".join(f"Δ = {d}: {b:,}" for d, b in p["budgets"])
            + " units, the same for every method. Each configuration runs once per pair and is re-timed for every "
              f"setting; f(y_t) is evaluated at ≥ {p['eval_points']} points within every budget.",
            "- Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands),
            *scale_lines(p), *_added_lines(table, added_sessions)]


def _added_lines(table: dict, sessions: list[dict]) -> list[str]:
    """The run of the rows added at report time: its tuning pairs and grid (its report pairs, budgets and λ are
    the main run's, combined.py checks it)."""
    added = table.get("added")
    if not added:
        return []
    p, counts = added["protocol"], added["pair_counts"]
    grown = ", ".join(f"{method}: +{', '.join(f'{axis} {_list(v)}' for axis, v in ext.items())}"
                      for method, ext in added["extensions"].items()) or "none"
    commands = list(dict.fromkeys(s["command"] for s in sessions if s.get("command")))
    return [f"- Rows added by a second run ({', '.join(added['methods'])}), combined with this one at report time "
            "on the same report pairs, budgets and λ: tuned alike (same selection rule and growth) on their own "
            f"tuning pairs {span(p['tune_pairs'])} ({counts['tune']['attackable']} attackable), over PPRS lr ∈ "
            f"{{{_list(p['lrs'])}}}, γ ∈ {{{_list(p['gammas'])}}}, K ∈ {{{_list(p['Ks'])}}}, μ ∈ "
            f"{{{_list(p['pprs_mus'])}}}, grown past edges (up to {p['extend_rounds']} rounds; "
            f"{added['tuning_rounds']} done): {grown}. Their times to the loss levels are at this run's levels. "
            "Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands) + "."
            + "".join(f" Note on a session: {s['note']}." for s in sessions if s.get("note")),
            "  " + scale_lines(p)[0].removeprefix("- ")]


def scale_lines(p: dict) -> list[str]:
    """Where the run's grid differs from its command's defaults (fig3.DEFAULT or erm.DEFAULT): a smaller sweep
    than the command would run says so."""
    from dataclasses import asdict

    from pprs_mpi.experiments import erm, fig3, finitesum
    default = asdict({"erm": erm.DEFAULT, "finitesum": finitesum.DEFAULT}.get(p["experiment"], fig3.DEFAULT))
    differ = [key for key, value in default.items() if key in p
              and json_like(p[key]) != json_like(value)]
    if not differ:
        return ["- Scale: the command's defaults."]
    return ["- Scale: differs from the command's defaults in " + "; ".join(
        f"{key} (default {_shown(default[key])})" for key in differ) + "."]


def json_like(value):
    """Tuples as lists, numbers as floats: a protocol read back from JSON compares equal to the Grid it came from."""
    if isinstance(value, (list, tuple)):
        return [json_like(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _shown(value) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return ", ".join(f"Δ = {d}: {b:,}" for d, b in value)
    if isinstance(value, (list, tuple)):
        return span(value) if all(isinstance(v, int) for v in value) and len(value) > 3 else _list(value)
    return str(value)


def results_lines(table: dict, figure: str, table_file: str) -> list[str]:
    levels = table["levels"]
    lines = [f"![mean report loss against pipeline time]({figure})", "",
             "Mean loss over the report pairs against pipeline time, the kept configuration of each row, with 95% "
             "bootstrap bands over report pairs (they include the pairs' spread of starting losses; the paired "
             f"comparisons above do not). Full table: [{table_file}]({table_file}).", ""]
    head = ["Δ", "budget", "row", "lr", "γ", "μ", "tuning loss", "final loss [95% CI]",
            *[f"time to ≤ {v:.4g}" for v in levels], "grid edge"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        if not row["selected"]:
            lines.append(f"| {row['depth']} | {row['budget']:,} | {row['method']} | every configuration diverged |"
                         + " |" * (len(head) - 4))
            continue
        times = ["–" if t is None else f"{t:,.0f}" for t in row["times"]]
        lr, gamma, mu = parameter_cells(row)
        gamma = "–" if gamma == "-" else gamma
        lines.append(f"| {row['depth']} | {row['budget']:,} | {row['method']} | {lr} | {gamma} "
                     f"| {mu} | {row['tune_final']:.4g} | {row['final_loss']:.4g} "
                     f"[{row['final_ci'][0]:.4g}, {row['final_ci'][1]:.4g}] | "
                     + " | ".join(times) + f" | {', '.join(row['edge']) or '–'} |")
    return lines + ["", "'–': not reached within the budget. 'grid edge': the kept value is the largest or smallest "
                        "its method's grid reached, even after growth."]


def paper_lines(table: dict) -> list[str]:
    """The paper's §6 statements against this table: the first from the main comparisons only."""
    lines = []
    for c in (c for c in table["comparisons"] if c["main"]):
        lines.append(f"- \"PPRS significantly outperforms both GD and AGD\" (μ = 0), Δ = {c['depth']}: tested as "
                     f"{c['method']} against the best baseline, {c['against']}: "
                     + ("**matches**" if c["outcome"] == "lower" else "**not supported**")
                     + f" ({c['outcome']}, sign test p = {c['sign_p']:.2g}).")
    for c in (c for c in table["comparisons"] if c["method"].endswith("+momentum") and c["against"].endswith("μ=0")):
        lines.append(f"- \"The accelerated version did not improve the results\", Δ = {c['depth']}, budget "
                     f"{c['budget']:,} (exploratory): {c['method']} against {c['against']}: {c['outcome']} "
                     f"(Holm p = {c['p']:.2g}, lower on {c['lower']}/{c['pairs']} pairs).")
    stability = {r["method"]: (r["tune_diverged"], r["tune_runs"]) for r in table["rows"]
                 if verdict.family(r["method"]) == "μ=0"}
    if stability:
        lines.append("- \"Increasing the number of samples increases the stability\": diverged tuning runs per K "
                     "(μ = 0, whole grid): " + ", ".join(f"{m.split()[1]} {d}/{n}" for m, (d, n) in stability.items())
                     + ".")
    kept = [f"{r['method']} at Δ = {r['depth']}, B = {r['budget']:,}: {r['lr']:.2g}" for r in table["rows"]
            if r["selected"] and r["method"] in PAPER_LRS]
    if kept:
        lines.append("- Kept learning rates (paper: " + ", ".join(f"{m} {lr:.0e}" for m, lr in PAPER_LRS.items())
                     + "): " + "; ".join(kept) + ".")
    return lines


def cost_lines(table: dict, sessions: list[dict], added_sessions: list[dict] = ()) -> list[str]:
    """Runs, wall time and machine of a table's run, then of the run of its added rows (combined.py) if any."""
    if not sessions:
        return ["No session record (sessions.json) for this run."]
    added = table.get("added", {}).get("methods", [])
    own = _runs([r for r in table["rows"] if r["method"] not in added], table["pair_counts"])
    lines = [f"{own}. " + _sessions_text(sessions)]
    if added and added_sessions:
        mine = _runs([r for r in table["rows"] if r["method"] in added], table["added"]["pair_counts"])
        lines.append(f"The added rows ({', '.join(added)}): {mine}. " + _sessions_text(added_sessions))
    return lines


def _runs(rows: list[dict], counts: dict) -> str:
    """'N tuning runs and M report runs (k kept configurations)' of some rows of a table."""
    first = verdict.settings(rows)[0]
    tune = sum(r["tune_runs"] for r in rows if (r["depth"], r["budget"]) == first and r["method"] != PRESET)
    presets = {r["selected"] for r in rows if r["method"] == PRESET}  # one configuration per setting (or shared)
    tune += len(presets) * counts["tune"]["attackable"]
    kept = {r["selected"] for r in rows if r["selected"]}
    return (f"{tune:,} tuning runs and {len(kept) * counts['report']['attackable']:,} report runs ({len(kept)} kept "
            "configurations)")


def _sessions_text(sessions: list[dict]) -> str:
    last = sessions[-1]
    return (f"Wall time {sum(s['wall_s'] for s in sessions) / 60:.1f} minutes in {len(sessions)} session(s), on "
            f"{last['ranks']} MPI rank(s) of a machine with nproc = {last['nproc']} ({last['cpu']}), shared with other "
            f"jobs, so times are indicative. Finished {last['finished']}.")


def _list(values) -> str:
    return ", ".join(mu_text(v) for v in values)
