"""The pre-declared comparisons of a Figure 3-style table, every choice made on the tuning pairs only.

A table row is one method (PPRS K=k μ=0, PPRS K=k +momentum, a baseline) at one setting (depth Δ, budget B),
with its kept configuration's tuning score (`tune_reach`, the mean tuning curve's time to the protocol's loss
level, +inf under `--select final`; then `tune_final`, its mean final loss on the tuning pairs) and its
report pairs' values (`pair_finals`, final losses; under a level, `pair_times`, times to reach it). Choices
read the tuning score and nothing else:
  - the representative of each PPRS family (μ = 0, +momentum) is its row with the lowest tuning loss, which
    fixes K;
  - the best baseline is the baseline row with the lowest tuning loss
(a tie on the tuning score is broken by the lower tuning final loss; rows still tied are all candidates, and ties go
against the method under test: its comparison is made with every tied candidate on either side and the outcome
least favourable to it is the one reported, with the others named. No name order decides anything.)
Comparisons then read the report pairs:
  - main, one per depth, declared before any report run: PPRS μ = 0 (its representative) against the best
    baseline at the depth's longest budget, tested alone at α = 0.05 (sign test); in a run without μ = 0 rows
    (`finitesum`: §5's claim is about Theorem 3's accelerated PPRS), PPRS +momentum's representative instead;
  - everything else (every PPRS row against every baseline at every setting, +momentum against μ = 0)
    is exploratory, its sign-test p Holm-corrected over all exploratory comparisons of the table.
"""

from __future__ import annotations

import math

from pprs_mpi.experiments import stats

FAMILIES = ("μ=0", "+momentum")


def is_pprs(method: str) -> bool:
    return method.startswith("PPRS")


def family(method: str) -> str | None:
    """'μ=0' or '+momentum' for a PPRS row, None for a baseline."""
    return next((f for f in FAMILIES if is_pprs(method) and method.endswith(f)), None)


def settings(rows: list[dict]) -> list[tuple[int, int]]:
    """(depth, budget) of the table, in table order."""
    return list(dict.fromkeys((int(r["depth"]), int(r["budget"])) for r in rows))


def main_settings(rows: list[dict]) -> list[tuple[int, int]]:
    """Per depth, the setting with the longest budget: where the main comparison is made."""
    longest = {}
    for depth, budget in settings(rows):
        longest[depth] = max(budget, longest.get(depth, budget))
    return list(longest.items())


def kept(rows: list[dict], setting: tuple[int, int]) -> dict[str, dict]:
    """method → row of one setting, for rows that kept a configuration."""
    return {r["method"]: r for r in rows if (int(r["depth"]), int(r["budget"])) == setting and r.get("selected")}


def choices(rows: list[dict]) -> dict[tuple[int, int], dict[str, list[str]]]:
    """setting → {'PPRS μ=0': [...], 'PPRS +momentum': [...], 'baseline': [...]}: per role, the rows with the best
    tuning score (tune_reach, then tune_final), by tuning losses alone; more than one only on an exact tie."""
    found = {}
    for setting in settings(rows):
        mine, chosen = kept(rows, setting), {}
        groups = {f"PPRS {f}": [m for m in mine if family(m) == f] for f in FAMILIES}
        groups["baseline"] = [m for m in mine if not is_pprs(m)]
        for role, methods in groups.items():
            if methods:
                score = {m: (mine[m].get("tune_reach", math.inf), mine[m]["tune_final"]) for m in methods}
                best = min(score.values())
                chosen[role] = [m for m in methods if score[m] == best]
        found[setting] = chosen
    return found


OUTCOME_RANK = {"higher": 0, "no significant difference": 1, "lower": 2}  # from the tested method's worst to best


def against_the_method(found: list[dict]) -> dict:
    """Of comparisons of tied candidates (the tested method − its opponent), the one least favourable to the tested
    method: the worst outcome, then the largest median difference; the others' pairs are named in 'tied_with'."""
    worst = min(found, key=lambda c: (OUTCOME_RANK[stats.outcome(c, c["sign_p"])], -c["median"]))
    others = [(c["method"], c["against"]) for c in found if c is not worst]
    return {**worst, "tied_with": [f"{m} vs {a}" for m, a in others]}


def main_role(rows: list[dict]) -> str:
    """The PPRS family the main comparisons test: μ = 0 where the table has such rows, else +momentum."""
    return "PPRS μ=0" if any(family(r["method"]) == "μ=0" for r in rows) else "PPRS +momentum"


def comparisons(rows: list[dict], metric: str = "pair_finals") -> list[dict]:
    """Every comparison of the table on `metric` (the rows' per-pair values) with its statistics (stats.compare),
    'main' or exploratory, its p as tested (main: the sign test's own; exploratory: Holm-adjusted), its outcome.
    Where a role is tied on the tuning pairs, the main comparison (and +momentum against μ = 0) is the least
    favourable of those with every tied candidate (against_the_method)."""
    chosen, mains, tested = choices(rows), set(main_settings(rows)), main_role(rows)
    found = []
    for setting in settings(rows):
        mine, pick = kept(rows, setting), chosen[setting]
        main = None
        if setting in mains and tested in pick and "baseline" in pick:
            main = against_the_method([_compare(mine, m, b, setting, True, metric)
                                       for m in pick[tested] for b in pick["baseline"]])
            found.append(main)
        for method in (m for m in mine if is_pprs(m)):
            for baseline in (m for m in mine if not is_pprs(m)):
                if main is None or (method, baseline) != (main["method"], main["against"]):
                    found.append(_compare(mine, method, baseline, setting, False, metric))
        if "PPRS μ=0" in pick and "PPRS +momentum" in pick:
            found.append(against_the_method([_compare(mine, m, z, setting, False, metric)
                                             for m in pick["PPRS +momentum"] for z in pick["PPRS μ=0"]]))
    exploratory = [c for c in found if not c["main"]]
    for c, adjusted in zip(exploratory, stats.holm([c["sign_p"] for c in exploratory])):
        c["p"] = adjusted
    for c in found:
        c.setdefault("p", c["sign_p"])
        c["outcome"] = stats.outcome(c, c["p"])
    return found


def _compare(mine: dict, method: str, against: str, setting: tuple[int, int], main: bool, metric: str) -> dict:
    return {"depth": setting[0], "budget": setting[1], "method": method, "against": against, "main": main,
            "metric": metric, **stats.compare(mine[method][metric], mine[against][metric])}
