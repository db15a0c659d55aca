"""PNGs of the theorem experiments (depth, lowerbounds, nonconvex), drawn without pyplot (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

COLOURS = {"PPRS": "#4c72b0", "PPRS (m rows)": "#8da0cb", "GD": "#c44e52", "AGD": "#dd8452", "GPipe": "#55a868",
           "GPipe+momentum": "#2ca02c"}


def depth_png(proto: dict, lines: list[dict], shape: dict, path: Path) -> Path:
    """Left: time to the smallest ε against Δ for every method at the middle d, with eq. (12)'s fitted shape.
    Right: the slope b = ∂time/∂Δ against RL/ε per method and d (log-log), with reference slopes 1 and 2."""
    depths = proto["depths"]
    dims, eps = sorted({x["d"] for x in lines}), min(x["eps_rel"] for x in lines)
    d = dims[len(dims) // 2]
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for x in (x for x in lines if x["d"] == d and x["eps_rel"] == eps and x["times"]):
        left.loglog(depths, x["times"], "o-", color=COLOURS[x["method"]], label=f"{x['method']} ({x['iters']:,} it.)")
    if shape:
        a = 1 / eps
        left.loglog(depths, [shape["c1"] * a * a + shape["c2"] * a * D * d ** 0.25 for D in depths], "k--",
                    label="eq. (12) shape, fitted c₁, c₂")
    left.set_title(f"time to ε = {eps:g}·LR, d = {d}")
    left.set_xlabel("depth Δ")
    left.set_ylabel("pipeline time to ε (units)")
    markers = dict(zip(dims, "os^vD"))
    for method in dict.fromkeys(x["method"] for x in lines):
        for dd in dims:
            pts = sorted((x for x in lines if x["method"] == method and x["d"] == dd and x["b"]),
                         key=lambda x: x["RL_over_eps"])
            if pts:
                right.loglog([x["RL_over_eps"] for x in pts], [x["b"] for x in pts], "-" + markers[dd],
                             color=COLOURS[method], label=f"{method}, d = {dd}" if dd == dims[0] else None)
    xs = sorted({x["RL_over_eps"] for x in lines})
    for power, style in ((1, ":"), (2, "-.")):
        ref = [x for x in lines if x["method"] == "GD" and x["b"]]
        if ref:
            base = min(r["b"] for r in ref)
            right.loglog(xs, [base * (v / xs[0]) ** power for v in xs], "k" + style, label=f"∝ (RL/ε)^{power}")
    right.set_title("slope ∂time/∂Δ = 2·T_ε (markers: d)")
    right.set_xlabel("RL/ε")
    right.set_ylabel("time per unit of depth")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def lowerbounds_png(rows: list[dict], path: Path) -> Path:
    """One panel per (function, depth): every method's mean f − f* against pipeline time (log y), and the span
    bound as a black step."""
    import numpy as np
    panels = list(dict.fromkeys((r["function"], r["depth"]) for r in rows))
    columns = min(2, len(panels))
    fig = Figure(figsize=(6.5 * columns, 4.4 * (-(-len(panels) // columns))), layout="constrained")
    axes = fig.subplots(-(-len(panels) // columns), columns, squeeze=False).ravel()
    styles = {"GD": ("#c44e52", "-"), "AGD (Nesterov)": ("#dd8452", "-"), "AGD (μ = 0.99)": ("#937860", ":"),
              "PPRS μ = 0": ("#1b3a6b", "-"), "PPRS (Nesterov)": ("#4c72b0", "--"),
              "PPRS (Theorem 3 preset)": ("#55a868", "-.")}
    for ax, (function, depth) in zip(axes, panels):
        mine = [r for r in rows if (r["function"], r["depth"]) == (function, depth)]
        for r in mine:
            colour, style = styles.get(r["method"], ("grey", "-"))
            error = np.maximum(np.asarray(r["error"], dtype=float), 1e-12)
            ax.plot(r["time"], error, style, color=colour, label=r["method"], linewidth=1.5)
        longest = max(mine, key=lambda r: r["time"][-1])
        bound = np.asarray(longest["bound"], dtype=float)
        live = bound > 0
        ax.step(np.asarray(longest["time"])[live], bound[live], "k", where="post", linewidth=2,
                label="span bound (GD, AGD)")
        ax.set_yscale("log")
        ax.set_title(f"{function}, Δ = {depth}")
        ax.set_xlabel("pipeline time (units)")
        ax.set_ylabel("mean f − f*")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.savefig(path, dpi=100)
    return path
