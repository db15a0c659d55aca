"""PNGs of the experiments (needs matplotlib: `pip install 'pprs_mpi[plot]'`), drawn without pyplot."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from pprs_mpi.experiments.fig3 import mu_text

BASELINE_STYLE = (("#c44e52", ":"), ("#dd8452", "-."))  # first and second baseline row
PPRS_COLOURS = ("#8da0cb", "#4c72b0", "#1b3a6b", "#55a868", "#2ca02c")


def fig3_png(results: dict, proto: dict, table: dict, path: Path) -> Path:
    """fig3_figure saved as a PNG."""
    fig3_figure(results, proto, table).savefig(path, dpi=100)
    return path


def fig3_figure(results: dict, proto: dict, table: dict) -> Figure:
    """Figure 3's style: mean loss over the report pairs against pipeline time, one panel per setting (depth,
    budget), the kept configuration of each method with its 95% bootstrap band over report pairs (percentiles of
    the resampled mean curves); PPRS μ = 0 solid, PPRS with momentum dashed. The bands include the pairs' spread
    of initial losses, so overlapping bands do not mean indistinguishable methods: the table's comparisons are
    paired."""
    import numpy as np
    columns = 2 if len(results) > 2 else len(results)
    rows = -(-len(results) // columns)
    fig = Figure(figsize=(6.5 * columns, 4.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    Ks = sorted({c["K"] for r in results.values() for c in r["selected"].values() if c["algo"] == "pprs"})
    baselines = list(dict.fromkeys(m for r in results.values() for m, c in r["selected"].items()
                                   if c["algo"] != "pprs"))
    for ax, result in zip(axes, results.values()):
        for method, c in result["selected"].items():
            if c["algo"] == "pprs":
                colour, style = PPRS_COLOURS[Ks.index(c["K"]) % len(PPRS_COLOURS)], "-" if c["mu"] == 0 else "--"
            else:
                colour, style = BASELINE_STYLE[baselines.index(method) % len(BASELINE_STYLE)]
            gamma = f", γ={c['gamma']:.2g}" if c["algo"] == "pprs" else ""
            mu = f", μ={mu_text(c['mu'])}" if c["mu"] else ""
            label = (f"{method}: K={c['K']}, T={c['iters']}" if c.get("preset")
                     else f"{method}: lr={c['lr']:.2g}{gamma}{mu}")
            ax.plot(c["time"], c["loss"], style, color=colour, linewidth=2, label=label)
            low, high = np.quantile(c["bootstrap"], [0.025, 0.975], axis=0)
            shown = np.isfinite(low) & np.isfinite(high)
            ax.fill_between(c["time"][shown], low[shown], high[shown], color=colour, alpha=0.12, linewidth=0)
        ax.set_xlim(0, result["budget"])
        ax.set_title(f"Δ = {result['depth']} (budget {result['budget']:,} units)")
        ax.set_xlabel(f"pipeline time (units; an iteration costs 2(K·m+Δ−1), m = {proto.get('examples', 1)})")
        ax.set_ylabel(f"mean loss over {table['pair_counts']['report']['attackable']} report pairs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(results):]:
        ax.set_visible(False)
    fig.suptitle(f"PPRS vs {' / '.join(baselines)} on '{proto['problem']}': configurations tuned on pairs "
                 f"{proto['tune_pairs'][0]}–{proto['tune_pairs'][-1]}, shown on held-out pairs "
                 f"{proto['report_pairs'][0]}–{proto['report_pairs'][-1]} (bands: 95% bootstrap over pairs)")
    return fig


def rates_png(result: dict, path: Path) -> Path:
    """A rates.json's measured E[f(y_T)] − f* and eq. (13)'s bound against T (log-log), one panel per problem and
    K rule, with each series' fitted power law over the T's it was fitted on (decay.py) and its exponent against
    the bound's."""
    rows, series, rule = result["rows"], result["series"], result["protocol"]["step_rule"]
    title = "Theorem 3's step rule" if rule == "theorem3" else f"Step rule wrong on purpose ({rule})"
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    k_rules = list(dict.fromkeys(r["K_rule"] for r in rows))
    dims = sorted({r["d"] for r in rows})
    colours = dict(zip(dims, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")))
    fitted = {(s["problem"], s["K_rule"], s["d"]): s for s in series}
    fig = Figure(figsize=(5.5 * len(k_rules), 4.2 * len(problems)), layout="constrained")
    axes = fig.subplots(len(problems), len(k_rules), squeeze=False)
    for i, problem in enumerate(problems):
        for j, rule in enumerate(k_rules):
            ax = axes[i][j]
            for d in dims:
                mine = sorted((r for r in rows if (r["problem"], r["K_rule"], r["d"]) == (problem, rule, d)),
                              key=lambda r: r["T"])
                if not mine:
                    continue
                T = [r["T"] for r in mine]
                s = fitted.get((problem, rule, d))
                label = f"d={d} measured"
                if s and s["measured_exponent"] is not None:
                    label += (f": p = {s['measured_exponent']:.2f} (bound {s['bound_exponent']:.2f})"
                              f"{'' if s['passes'] else ' FAIL'}")
                    window = [t for t in T if t in s["window"]]
                    ax.plot(window, [s["measured_constant"] * (t + 1) ** s["measured_exponent"] for t in window], ":",
                            color=colours[d], linewidth=2.5, alpha=0.6)
                elif s:
                    label += f": rate not tested{'' if s['passes'] else ' FAIL'}"
                ax.errorbar(T, [r["measured"] for r in mine], yerr=[r["stderr"] for r in mine], fmt="o-",
                            color=colours[d], label=label, capsize=3)
                ax.plot(T, [r["bound"] for r in mine], "--", color=colours[d], label=f"d={d} bound (13)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            Ts = sorted({r["T"] for r in rows})
            ax.set_xticks(Ts, [str(T) for T in Ts])
            ax.minorticks_off()
            ax.set_title(f"{problem}, K = {rule}")
            ax.set_xlabel("iterations T")
            ax.set_ylabel("E[f(y_T)] − f*")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}: measured error (mean ± s.e. over seeds) against eq. (13)\ndotted: the fitted "
                 "(T+1)^p over the T's where the bound is under f(y_0) − f*")
    fig.savefig(path, dpi=120)
    return path
