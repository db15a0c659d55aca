"""Rows added to a finished Figure 3-style run at report time: a second run of the same problem, λ, budgets and
report pairs that tuned other rows only (`fig3 --no-baselines --pprs-mus 0.9,0.99` into another --out: the momentum
rows), merged into the first run's table so that every comparison is made on the same report pairs.

Nothing of the first run changes: its rows, levels and initial loss stay; the added rows' times to the levels are
computed again at the first run's levels, their tuning stays their own run's (on its own tuning pairs, with its own
grid growth, recorded as table['added']). Choices and comparisons are then derived from the merged rows by verdict.py,
as for any table, so the main comparisons (PPRS μ = 0 against the best baseline) are the same and the exploratory ones,
with their Holm correction, include the added rows.
"""

from __future__ import annotations

from pprs_mpi.experiments import verdict
from pprs_mpi.experiments.fig3_results import level_times, metric_of
from pprs_mpi.experiments.runner import ExperimentError

MUST_MATCH = ("experiment", "problem", "lam", "budgets", "examples", "select", "eval_points")


def combine(base: tuple[dict, dict, dict], added: tuple[dict, dict, dict]) -> tuple[dict, dict, dict]:
    """(protocol, table, results) of `base` with the rows of `added` (each as fig3_results.read_summary gives
    them). Refused unless both ran the same experiment on the same attackable report pairs and the added rows are
    new rows."""
    (proto, table, results), (more_proto, more_table, more_results) = base, added
    differ = [key for key in MUST_MATCH if proto.get(key) != more_proto.get(key)]
    if differ:
        raise ExperimentError(f"the added rows' run differs from the main run in {', '.join(differ)}: "
                              "they cannot share a table")
    if (table["pair_counts"]["report"] != more_table["pair_counts"]["report"]
            or proto["report_pairs"] != more_proto["report_pairs"]):
        raise ExperimentError("the added rows' run has other report pairs than the main run: every comparison "
                              "must be on the same pairs")
    shared = {r["method"] for r in table["rows"]} & {r["method"] for r in more_table["rows"]}
    if shared:
        raise ExperimentError(f"the added run repeats rows of the main run ({', '.join(sorted(shared))})")
    levels = table["levels"]
    merged_results = {}
    for key, result in results.items():
        extra = {m: {**c, **level_times(c, levels)}
                 for m, c in more_results.get(key, {"selected": {}})["selected"].items()}
        merged_results[key] = {**result, "selected": {m: result["selected"].get(m) or extra[m]
                                                      for m in _ordered({**result["selected"], **extra})}}
    rows = []
    for setting in verdict.settings(table["rows"]):
        mine = [r for r in table["rows"] + [_at_levels(r, merged_results) for r in more_table["rows"]]
                if (int(r["depth"]), int(r["budget"])) == setting]
        by_method = {r["method"]: r for r in mine}
        rows += [by_method[m] for m in _ordered(by_method)]
    merged = {**table, "rows": rows,
              "tune_scores": {key: {**scores, **more_table.get("tune_scores", {}).get(key, {})}
                              for key, scores in table.get("tune_scores", {}).items()},
              "added": {"protocol": more_proto, "pair_counts": more_table["pair_counts"],
                        "tuning_rounds": more_table.get("tuning_rounds", 0),
                        "extensions": more_table.get("extensions", {}),
                        "methods": list(dict.fromkeys(r["method"] for r in more_table["rows"]))}}
    merged["choices"] = [{"depth": d, "budget": b, **chosen} for (d, b), chosen in verdict.choices(rows).items()]
    merged["comparisons"] = verdict.comparisons(rows, metric_of(proto))
    return proto, merged, merged_results


def _at_levels(row: dict, results: dict) -> dict:
    """An added row with its times to the main run's levels (from its report curves)."""
    if not row.get("selected"):
        return row
    c = results[f"{row['depth']}:{row['budget']}"]["selected"][row["method"]]
    return {**row, "times": c["times"], "times_ci": c["times_ci"]}


def _ordered(methods) -> list[str]:
    """Table order: PPRS rows by K, μ = 0 before +momentum, then the baselines in their given order."""
    def key(method: str):
        if not verdict.is_pprs(method):
            return (1, 0, 0)
        return (0, int(method.split()[1].removeprefix("K=")), verdict.FAMILIES.index(verdict.family(method)))
    return sorted(methods, key=key)
