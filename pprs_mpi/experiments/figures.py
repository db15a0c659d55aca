"""PNGs of the experiments (needs matplotlib: `pip install 'pprs_mpi[plot]'`), drawn without pyplot."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

BASELINE_STYLE = {"GD": ("#c44e52", ":"), "AGD": ("#dd8452", "-.")}
PPRS_COLOURS = ("#8da0cb", "#4c72b0", "#1b3a6b", "#55a868", "#2ca02c")


def fig3_png(results: dict, proto: dict, table: dict, path: Path) -> Path:
    """Figure 3's style: mean loss over the report pairs against pipeline time, one panel per depth, the kept
    configuration of each method; PPRS μ = 0 solid, PPRS with momentum dashed. No bands: the pairs' spread of
    initial losses would hide the differences, which the table gives paired, with intervals."""
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    Ks = sorted({c["K"] for r in results.values() for c in r["selected"].values() if c["algo"] == "pprs"})
    for ax, (depth, result) in zip(axes, results.items()):
        for method, c in result["selected"].items():
            if c["algo"] == "pprs":
                colour, style = PPRS_COLOURS[Ks.index(c["K"]) % len(PPRS_COLOURS)], "-" if c["mu"] == 0 else "--"
            else:
                colour, style = BASELINE_STYLE[method]
            gamma = f", γ={c['gamma']:.0e}" if c["algo"] == "pprs" else ""
            mu = f", μ={c['mu']:g}" if c["mu"] else ""
            ax.plot(c["time"], c["loss"], style, color=colour, linewidth=2,
                    label=f"{method}: lr={c['lr']:.0e}{gamma}{mu}")
        ax.set_xlim(0, result["budget"])
        ax.set_title(f"Δ = {depth} (budget {result['budget']:,} units)")
        ax.set_xlabel("pipeline time (units; an iteration costs 2(K+Δ−1))")
        ax.set_ylabel(f"mean loss (eq. 17) over {table['pair_counts']['report']['attackable']} report pairs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"PPRS vs GD / AGD on '{proto['problem']}': configurations tuned on pairs "
                 f"{proto['tune_pairs'][0]}–{proto['tune_pairs'][-1]}, shown on held-out pairs "
                 f"{proto['report_pairs'][0]}–{proto['report_pairs'][-1]}")
    fig.savefig(path, dpi=110)
    return path


def rates_png(rows: list[dict], path: Path) -> Path:
    """Measured E[f(y_T)] − f* and eq. (13)'s bound against T (log-log): one panel per problem and K rule."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    k_rules = list(dict.fromkeys(r["K_rule"] for r in rows))
    dims = sorted({r["d"] for r in rows})
    colours = dict(zip(dims, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")))
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
                ax.errorbar(T, [r["measured"] for r in mine], yerr=[r["stderr"] for r in mine], fmt="o-",
                            color=colours[d], label=f"d={d} measured", capsize=3)
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
            ax.legend(fontsize=8)
    fig.suptitle("Theorem 3: measured error (mean ± s.e. over seeds) against eq. (13)")
    fig.savefig(path, dpi=120)
    return path
