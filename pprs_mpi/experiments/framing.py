"""What docs/reproduction.md may and may not claim: the scope of each verdict and the deviations from the paper.

Every sentence is computed from the committed sources (the runs' tables, the earlier λ = 300 table, rates.json) or
is a fact of the protocol's history stated once here (when λ = 6.25 was introduced, what the paper ran). It exists
so that a reader meets the limits of the runs before their numbers: §5's verdict reads from the faithful `finitesum`
run (a convex finite sum with Theorem 3's accelerated PPRS) where one is given, the `erm` run is not in the regime of
the §5 claim, λ = 6.25 was introduced after λ = 300 had failed, Figure 3's main comparisons test μ = 0 only (momentum
rows, where a run has them, are judged by the same rule as exploratory), ties go against the method under test, and
what the eq. (13) check's fitted rates can and cannot tell apart.
"""

from __future__ import annotations

import math


from pprs_mpi.experiments import stats, verdict
from pprs_mpi.experiments.document import scale_lines
from pprs_mpi.experiments.fig3 import span
from pprs_mpi.schedule import ideal_makespan

# When and why λ = 6.25 appeared (git history; stated, not computed).
LAM_HISTORY = ("λ = 6.25 (the paper's 300 scaled by this network's d = 64 over CIFAR-10's 3,072) was introduced on "
               "2026-12-04 (commit 2c4d1d8, issue #23's audit) after the first run at the paper's λ = 300 "
               "(2026-11-24, commit 0c38934) had failed to support the paper; the scaling's rationale (the l∞ "
               "term's weight relative to the margin, whose gradient's l1 norm grows with d) was written before the "
               "λ = 6.25 run, but the choice was made knowing the λ = 300 outcome. Neither λ is the primary one: "
               "the two runs are weighed alike below.")


def reading_lines(fig3: dict, lam300: dict | None, erm: dict | None, earlier: dict | None,
                  rates: dict | None, finite_sum: dict | None = None, rates_wrong: dict | None = None,
                  faithful: dict | None = None) -> list[str]:
    """'How to read this document': the scope of every verdict, computed from the tables; `faithful`: the
    `finitesum` run's table, from which §5's verdict reads."""
    lines = ["## How to read this document", ""]
    mains = [c for t in (fig3, lam300) if t for c in t["comparisons"] if c["main"]]
    supported = sum(c["outcome"] == "lower" for c in mains)
    lines.append(f"- **Figure 3, both λ weighed alike.** {LAM_HISTORY} Of the {len(mains)} main comparisons of the "
                 f"two runs, {supported} supports the paper's \"PPRS significantly outperforms both GD and AGD\" "
                 "(" + "; ".join(f"λ = {t['protocol'].get('lam', 0):g}, Δ = {c['depth']}: {c['outcome']}"
                                  for t in (fig3, lam300) if t for c in t["comparisons"] if c["main"]) + ").")
    if lam300:
        lines.append("- " + _lam300_reached(lam300))
    lines.append("- " + _mu_scope(fig3, lam300, earlier))
    lines.append("- **Ties go against the method under test.** A tie on the tuning score (equal tuning score and "
                 "equal tuning final loss) keeps every tied row as a candidate; the comparison is made with each, "
                 "and the outcome least favourable to PPRS is the verdict (verdict.against_the_method). No "
                 "alphabetical order decides anything. " + _ties_text([t for t in (fig3, lam300, erm) if t]))
    if faithful:
        lines.append("- " + _faithful_text(faithful))
    if erm:
        lines.append("- " + _erm_scope(erm) + (" §5's verdict reads from the faithful run above." if faithful
                                                else ""))
    if finite_sum:
        lines.append("- " + _finite_sum_text(finite_sum) + (" It is superseded by the faithful run above for §5's "
                                                            "verdict." if faithful else ""))
    if rates:
        lines.append("- " + _rates_scope(rates, rates_wrong))
    return lines


def _lam300_reached(table: dict) -> str:
    """How far the λ = 300 runs got: final losses at each depth's longest budget against the initial loss."""
    p = table["protocol"]
    longest = dict(verdict.main_settings(table["rows"]))
    finals = [r["final_loss"] for r in table["rows"] if r["selected"] and longest.get(r["depth"]) == r["budget"]]
    stability = sum(r["tune_diverged"] for r in table["rows"] if verdict.family(r["method"]) == "μ=0")
    return (f"**λ = {p.get('lam', 300):g} stopped far from convergence.** At each depth's longest budget the kept "
            f"rows' mean report losses are {min(finals):.3g}–{max(finals):.3g}, from a mean initial loss of "
            f"{table['initial_mean_loss']:.3g}, with budgets " + ", ".join(f"Δ = {d}: {b:,}" for d, b in p["budgets"])
            + " units (the command's defaults are twice as long): the verdicts at λ = 300 compare unfinished "
            f"runs. No PPRS μ = 0 tuning run diverged at any K ({stability} in all, in both runs), so the paper's "
            "\"increasing the number of samples increases the stability\" (K = 2 diverging at lr 1e-3 where "
            "K = 10 does not) is **not reproduced**: the data cannot show it either way.")


def momentum_against_baseline(table: dict) -> list[tuple[dict, dict]]:
    """Per depth's longest budget, (the tuning-chosen PPRS +momentum row against the tuning-chosen best baseline,
    ties against PPRS; the main comparison of the same setting): the rule of a main comparison applied to the
    momentum rows, exploratory (not pre-declared). Comparisons are the table's own where it has them (their p
    Holm-corrected over its exploratory set), else computed from its rows."""
    found = table.get("comparisons") or verdict.comparisons(table["rows"])
    chosen, pairs = verdict.choices(table["rows"]), []
    for depth, budget in verdict.main_settings(table["rows"]):
        pick = chosen[(depth, budget)]
        if "PPRS +momentum" not in pick or "baseline" not in pick:
            continue
        c = verdict.against_the_method([x for x in found if (x["depth"], x["budget"]) == (depth, budget)
                                        and x["method"] in pick["PPRS +momentum"] and x["against"] in pick["baseline"]])
        zero = next((x for x in found if x["main"] and x["depth"] == depth), None)
        if zero:
            pairs.append((c, zero))
    return pairs


def momentum_text(c: dict, zero: dict, holm: bool = True) -> str:
    """One momentum comparison in words: its sign test alone (as a main comparison would be judged) and, where the
    table Holm-corrects it, the corrected p; then μ = 0's main outcome at the same setting."""
    return (f"Δ = {c['depth']}: {c['method']} vs {c['against']} **{stats.outcome(c, c['sign_p'])}** (lower on "
            f"{c['lower']}/{c['pairs']} pairs, median {c['median']:+.3g}, sign test p = {c['sign_p']:.2g}"
            + (f", Holm p = {c['p']:.2g}" if holm else "") + f"), where μ = 0 ({zero['method']}) was "
            f"{zero['outcome']} (lower on {zero['lower']}/{zero['pairs']})")


def _mu_scope(fig3: dict, lam300: dict | None, earlier: dict | None) -> str:
    runs = [t for t in (fig3, lam300) if t]
    mus = sorted({mu for t in runs for p in (t["protocol"], t.get("added", {}).get("protocol", {}))
                  for mu in p.get("pprs_mus", ())})
    current = [(t, momentum_against_baseline(t)) for t in runs]
    text = ("**The main comparisons test μ = 0 only**, the paper's own choice (§6: \"we do not accelerate the "
            "method and thus always choose μ = 0\"; μ = 0.99 \"did not improve the results\"). The current Figure 3 "
            f"runs tune PPRS with μ ∈ {{{', '.join(f'{m:g}' for m in mus)}}}.")
    if any(found for _, found in current):
        text += (" Their tuning-chosen PPRS +momentum against their tuning-chosen best baseline, by the rule of a "
                 "main comparison but exploratory (the momentum rows were added after the main comparisons were "
                 "declared and judged; each run's protocol says on which tuning pairs): " + "; ".join(
                     f"λ = {t['protocol'].get('lam', 0):g}, " + momentum_text(c, zero)
                     for t, found in current for c, zero in found) + ".")
    else:
        text += " \"PPRS loses to (or ties) AGD\" below is about μ = 0 only."
    if earlier is None:
        return text
    p = earlier["protocol"]
    return text + (" The earlier λ = 300 run (commit 0c38934, "
                   f"{earlier['pair_counts']['tune']['attackable']} attackable tuning pairs, the old grid, budgets "
                   + ", ".join(f"Δ = {d}: {b:,}" for d, b in p["budgets"].items()) + ") had momentum rows too, "
                   "judged by the same rule: " + "; ".join(momentum_text(c, zero, holm=False)
                                                          for c, zero in momentum_against_baseline(
                                                              {"rows": earlier["rows"]}))
                   + "." + ("" if any(found for _, found in current) else
                            " The momentum rows were not rerun under the current protocol, so whether PPRS with "
                            "momentum beats AGD there is open."))


def _ties_text(tables: list[dict]) -> str:
    found = [(t["protocol"]["experiment"], c) for t in tables for c in t["comparisons"]
             if c["main"] and c.get("tied_with")]
    if not found:
        return "No main comparison of these runs had a tie."
    return "Ties in these runs: " + "; ".join(
        f"{name} Δ = {c['depth']}: {c['method']} vs {c['against']} ({c['outcome']}) kept over "
        f"{', '.join(c['tied_with'])}"
        for name, c in found) + "."


def _erm_scope(table: dict) -> str:
    """Why the ERM run does not test the §5 claim, with GD's iterations to the level from the table."""
    p = table["protocol"]
    m, level = p["examples"], float(p["select"])
    iters = [f"Δ = {r['depth']}: {r['tune_reach'] / ideal_makespan(m, r['depth']):.0f}" for r in table["rows"]
             if r["selected"] and r["method"] == p["baselines"]["gd"] and (r["depth"], r["budget"])
             in verdict.main_settings(table["rows"]) and math.isfinite(r["tune_reach"])]
    return ("**§5 (ERM): not tested in the claim's regime.** The claim (eq. 16) is about a convex finite sum, with "
            "Theorem 3's accelerated PPRS, where m ≪ Δ and d ≪ (RL/ε)⁴ make the depth term dominate. The `erm` run's "
            "objective is non-convex (two layers with a ReLU), its hinge loss on "
            f"m = {m} shots reaches exactly 0, its main PPRS arm is μ = 0 (not accelerated), and GPipe (GD) fits "
            f"the shots to loss ≤ {level:g} in " + ", ".join(iters) + " iterations (mean tuning curve), so the "
            "regime where the paper says PPRS wins is never reached. Its verdicts below are reported as measured "
            "but read \"not tested in the claim's regime\", not \"not supported\".")


def _faithful_text(table: dict) -> str:
    """§5's verdict from the `finitesum` run: its main comparisons, one per depth, as supported / not supported /
    no significant difference."""
    from pprs_mpi.experiments.fig3 import PRESET
    from pprs_mpi.experiments.fig3_results import mean_text
    from pprs_mpi.experiments.finitesum_document import mains, verdict_text
    found = mains(table)
    deep = max(c["depth"] for c in found)
    p = table["protocol"]
    return ("**§5 (ERM), faithful run: " + "; ".join(
        f"Δ = {c['depth']} (m ≪ Δ, the claim): {verdict_text(c)}" if c["depth"] == deep else
        f"Δ = {c['depth']} (m ≈ Δ, no claim): PPRS {c['outcome']}" for c in found)
        + f".** The `finitesum` run is a convex finite sum (a linear probe on frozen features, hinge + ℓ1, f* > 0 "
        f"known), m = {p['examples']}, d = {p['dim']}, with Theorem 3's accelerated PPRS (its μ_t; K, γ, η tuned) "
        "against GPipe (GD, AGD) tuned on the same tuning pairs and reported on held-out pairs, in the paper's time "
        "units; at Δ = " + str(deep) + " " + ", ".join(
            f"{c['method']} vs {c['against']}: {c['outcome']} (lower on {c['lower']}/{c['pairs']} pairs, sign test "
            f"p = {c['sign_p']:.2g}; median difference {c['median']:+.2g}, mean {mean_text(c)}"
            + ("" if c["wilcoxon_p"] is None else f", Wilcoxon p = {c['wilcoxon_p']:.2g}") + ")"
            for c in found if c["depth"] == deep)
        + ": read the size of the difference in its section before the word. Theorem 3's own parameters (untuned, "
        "exploratory): " + "; ".join(f"Δ = {c['depth']} vs {c['against']}: {c['outcome']} (lower on {c['lower']}/"
                                     f"{c['pairs']})" for c in table["comparisons"] if c["method"] == PRESET)
        + ". It is one small problem (see its section for the scale, machine and wall time).")


def _finite_sum_text(result: dict) -> str:
    """§5 on a convex finite sum (experiments depth on lad, the rows as examples): PPRS over GPipe's time to ε."""
    found = result["ratios"]
    ratios = [v for x in found for v in x["ratios"] if v is not None]
    deep = [x["ratios"][-1] for x in found if x["ratios"][-1] is not None]
    return ("**§5 on a convex finite sum** (`depth_lad.md`: least absolute deviations over m = 2d rows read as "
            f"examples, d ≤ {max(x['d'] for x in found)}, ε down to {min(x['eps_rel'] for x in found):g}·LR, so "
            "m ≪ Δ and d ≪ (RL/ε)⁴ hold at the largest Δ): PPRS with Theorem 3's accelerated parameters needs "
            f"{min(ratios):.3g}–{max(ratios):,.0f} times GPipe's time to ε over Δ = m, 10m, 100m "
            f"({min(deep):.3g}–{max(deep):.3g} at Δ = 100m): the claim is **not supported** on this problem. It "
            "is small, untuned for PPRS and tuned in hindsight for GPipe (no held-out split), and the problem is "
            f"sharp (GD's iterations grow like (RL/ε)^{result['gd_exponent']:.2f}, not the worst case's (RL/ε)²); see "
            "that document.")


def _rates_scope(result: dict, wrong: dict | None) -> str:
    """What the eq. (13) check tells: the bound's margin, the fitted exponents (decay.py) against the bound's, and
    whether the rule wrong on purpose fails."""
    from pprs_mpi.experiments.decay import exponent_span
    preset = [s for s in result["series"] if s["K_rule"] == "preset"]
    fixed = [s for s in result["series"] if s["K_rule"] != "preset"]
    text = ("**The eq. (13) check tests the rate.** Under the bound alone (every row at most "
            f"{max(r['ratio'] for r in result['rows']):.2f} of it) a slower step rule would pass, so each series' "
            "decay exponent is fitted against the bound's. With Theorem 3's rule the check passes "
            f"{sum(s['passes'] for s in result['series'])} of {len(result['series'])} series: with the preset K the "
            f"errors fall like (T+1)^p, p = {exponent_span(preset)}, against the bound's "
            f"{exponent_span(preset, 'bound_exponent')}; with K fixed, p = {exponent_span(fixed)} against "
            f"{exponent_span(fixed, 'bound_exponent')}.")
    if wrong is None:
        return text + " No run of a rule wrong on purpose is given, so the check is not shown to fail."
    caught = [s for s in wrong["series"] if s["K_rule"] == "preset" and not s["passes"]]
    slower = [s for s in caught if s["slower"]]
    missed_by_level = [s for s in slower if not s["exceeded"]]
    fixed_wrong = [s for s in wrong["series"] if s["K_rule"] != "preset"]
    untested = [s for s in result["series"] + wrong["series"] if s["measured_exponent"] is None]
    return text + (f" With η too small by √((T+1)/{min(wrong['protocol']['Ts']) + 1}) (wrong on purpose) it fails "
                   f"{sum(not s['passes'] for s in wrong['series'])} of {len(wrong['series'])} series: {len(caught)} "
                   f"of the {sum(s['K_rule'] == 'preset' for s in wrong['series'])} with the preset K, "
                   f"{len(slower)} of them on the rate (p = {exponent_span(slower)} against the bound's "
                   f"{exponent_span(slower, 'bound_exponent')}; under the bound at every T, so missed by the bound "
                   f"alone: {', '.join(_series_name(s) for s in missed_by_level) or 'none'}). With K "
                   "fixed it passes "
                   f"{sum(s['passes'] for s in fixed_wrong)} of {len(fixed_wrong)}: there the bound's own exponent is "
                   f"only {exponent_span(fixed_wrong, 'bound_exponent')} over these T's (its K term dominates) and "
                   f"the wrong rule's exponents (p = {exponent_span(fixed_wrong)}) are not significantly above it, so "
                   "with a fixed K eq. (13) cannot tell this rule from Theorem 3's. "
                   f"{len(untested)} series (both rules) have too few T's with the bound under f(y_0) − f* "
                   "to test a rate and are judged on the bound alone.")


def _series_name(series: dict) -> str:
    return f"{series['problem']} d = {series['d']}"


def deviations_lines(fig3: dict, lam300: dict | None, erm: dict | None, rates: dict | None,
                     faithful: dict | None = None) -> list[str]:
    """The table of deviations from the paper (§5, §6), computed from the protocols where they vary."""
    def grid(t):
        p = t["protocol"]
        return (f"PPRS lr {{{_list(p['lrs'])}}}, γ {{{_list(p['gammas'])}}} (+ growth); GD/AGD lr "
                f"{{{_list(p['baseline_lrs'])}}}")

    runs = [t for t in (fig3, lam300) if t]
    rows = [("Data set and network", "CIFAR-10, a pretrained AlexNet", "8×8 digits (scikit-learn), the shipped "
             "small CNN (its held-out split)"),
            ("d (input dimension)", "3,072", "64"),
            ("λ", "300", " and ".join(f"{t['protocol'].get('lam', 0):g}" for t in runs)
             + " (6.25 = 300·64/3,072, introduced after λ = 300 failed)"),
            ("Pairs", "100 (image, target) pairs, no tuning/report split stated",
             "; ".join(f"λ = {t['protocol'].get('lam', 0):g}: tuning {span(t['protocol']['tune_pairs'])} "
                       f"({t['pair_counts']['tune']['attackable']} attackable), report "
                       f"{span(t['protocol']['report_pairs'])} ({t['pair_counts']['report']['attackable']})"
                       for t in runs)),
            ("Grids", "lr and γ ∈ {1e-3, ..., 1e-7}, best lr per method",
             "; ".join(f"λ = {t['protocol'].get('lam', 0):g}: {grid(t)}" for t in runs)),
            ("K", "2, 10, 100", "; ".join(_list(t["protocol"]["Ks"]) for t in runs)),
            ("PPRS μ rows", "μ = 0 shown; μ = 0.99 tried, \"did not improve\"", _mu_rows(runs)),
            ("AGD μ", "0.99", "; ".join(_list(t["protocol"]["agd_mus"]) for t in runs)),
            ("Budgets (pipeline units)", "not stated (loss against epochs)",
             "; ".join(f"λ = {t['protocol'].get('lam', 0):g}: " + ", ".join(f"Δ = {d}: {b:,}"
                                                                            for d, b in t["protocol"]["budgets"])
                       for t in runs)),
            *[(f"Run smaller than the command's defaults (λ = {t['protocol'].get('lam', 0):g})", "–",
               scale_lines(t["protocol"])[0].removeprefix("- Scale: ")) for t in runs],
            *[(f"Momentum rows' run smaller than the command's defaults (λ = {t['protocol'].get('lam', 0):g})", "–",
               scale_lines(t["added"]["protocol"])[0].removeprefix("- Scale: ")) for t in runs if t.get("added")]]
    if faithful:
        p = faithful["protocol"]
        rows += [("§5 finite sum (faithful run)", "convex ERM (eq. 15–16), accelerated PPRS (Theorem 3), m ≪ Δ; no "
                  "experiment", f"`finitesum`: convex `probe` (linear probe on frozen digits-CNN features, hinge + "
                  f"ℓ1), d = {p['dim']}, m = {p['examples']}, Δ = " + ", ".join(
                      sorted({str(d) for d, _ in p["budgets"]}, key=int)) + " (simulated); PPRS with Theorem 3's "
                  "μ_t, K, γ, η tuned (the theorem's own constants: an exploratory row)"),
                 ("Run smaller than the command's defaults (finitesum)", "–",
                  scale_lines(p)[0].removeprefix("- Scale: "))]
    if erm:
        p = erm["protocol"]
        rows += [("§5 finite sum" + (" (earlier run, not faithful)" if faithful else ""),
                  "convex ERM (eq. 15–16), accelerated PPRS (Theorem 3), m ≪ Δ; no experiment",
                  f"non-convex `fewshot` head (ReLU), m = {p['examples']}, PPRS μ ∈ {{{_list(p['pprs_mus'])}}}, "
                  "Δ = " + ", ".join(sorted({str(d) for d, _ in p["budgets"]}, key=int)) + " (simulated)"),
                 ("Run smaller than the command's defaults (erm)", "–",
                  scale_lines(p)[0].removeprefix("- Scale: "))]
    if rates:
        p = rates["protocol"]
        rows.append(("eq. (13) check", "–", f"planted {', '.join(p['problems'])}, d ≤ {max(p['dims'])}, "
                     f"T ≤ {max(p['Ts'])}, {p['seeds']} seeds"))
    return ["## Deviations from the paper", "", "| | paper | here |", "|---|---|---|",
            *[f"| {a} | {b} | {c} |" for a, b, c in rows]]


def _mu_rows(runs: list[dict]) -> str:
    """Which PPRS momenta each current run has, and on which tuning pairs the rows added to it were tuned."""
    parts = []
    for t in runs:
        p, added = t["protocol"], t.get("added")
        text = f"λ = {p.get('lam', 0):g}: μ ∈ {{{_list(p['pprs_mus'])}}}"
        if added:
            q = added["protocol"]
            text += (f", + μ ∈ {{{_list(q['pprs_mus'])}}} added by a second run (tuning pairs {span(q['tune_pairs'])}, "
                     f"{added['pair_counts']['tune']['attackable']} attackable, against the main run's "
                     f"{t['pair_counts']['tune']['attackable']}; the same report pairs)")
        parts.append(text)
    return "; ".join(parts) + "; the earlier λ = 300 run (8 tuning pairs) had μ > 0 rows too"


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values)
