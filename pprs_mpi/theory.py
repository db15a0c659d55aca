"""The paper's complexity bounds and predicted times:
`python -m pprs_mpi.theory --L 1 --R 1 --d 100 --eps 0.01 --depth 20`.

Eqs. (9)-(12) and (14) are O(·)/Ω(·) statements; they are evaluated here with every hidden
constant set to 1, and labelled so. Eq. (13) is an explicit bound and is evaluated exactly with the
T and K of Theorem 3's preset. Times are in the paper's units: one forward or backward pass of one
node on one input is 1, so a PPRS iteration costs 2(K + Δ − 1) and a naive sequential extension
(NSE) of GD/AGD costs 2Δ per iteration.
"""

from __future__ import annotations

import argparse
import math
import sys

from pprs_mpi import optim
from pprs_mpi.schedule import ideal_makespan



def lower_smooth_convex(beta: float, R: float, eps: float, depth: int) -> float:
    """Eq. (9), constant 1: √(βR²/ε)·Δ."""
    return math.sqrt(beta * R**2 / eps) * depth


def lower_smooth_nonconvex(beta: float, D: float, eps: float, depth: int) -> float:
    """Eq. (10), constant 1: βD/ε²·Δ."""
    return beta * D / eps**2 * depth


def lower_nonsmooth_convex(L: float, R: float, eps: float, depth: int) -> float:
    """Eq. (11), constant 1: (RL/ε)² + (RL/ε)Δ."""
    a = R * L / eps
    return a**2 + a * depth


def upper_pprs_convex(L: float, R: float, d: int, eps: float, depth: int) -> float:
    """Eq. (12), constant 1: (RL/ε)² + (RL/ε)Δd^{1/4}."""
    a = R * L / eps
    return a**2 + a * depth * d**0.25


def upper_pprs_nonconvex(L: float, D: float, d: int, eps: float, r: float, depth: int) -> float:
    """Eq. (14), constant 1: DL/(rε²)·(L²/ε² + Δ)·√(d + log(L/ε))."""
    return D * L / (r * eps**2) * (L**2 / eps**2 + depth) * math.sqrt(d + math.log(L / eps))


def pprs_time(iters: int, K: int, depth: int) -> int:
    """T iterations of PPRS, each a GPipe fill-drain of K inputs through depth Δ: T·2(K + Δ − 1)."""
    return iters * ideal_makespan(K, depth)


def nse_time(iters: float, depth: int) -> float:
    """T iterations of a naive sequential extension, one input through depth Δ each: T·2Δ."""
    return iters * ideal_makespan(1, depth)


def evaluate(L: float, R: float, d: int, eps: float, depth: int, r: float, D: float, beta: float) -> dict:
    """Every bound, preset and predicted time for one setting, as a JSON-able dict."""
    _check(L=L, R=R, d=d, eps=eps, depth=depth, r=r, D=D, beta=beta)
    t3 = optim.theorem3(L, R, d, eps=eps)
    t4 = optim.theorem4(L, D, d, eps, r)
    subgradient_iters = (R * L / eps) ** 2  # subgradient method on an L-Lipschitz convex f: RL/√T ≤ ε
    agd_iters = math.sqrt(beta * R**2 / eps)  # constant 1, as in eq. (9)
    gd_iters = beta * D / eps**2  # constant 1, as in eq. (10)
    return {
        "inputs": {"L": L, "R": R, "d": d, "eps": eps, "depth": depth, "r": r, "D": D, "beta": beta},
        "bounds": {
            "eq9_smooth_convex_lower": lower_smooth_convex(beta, R, eps, depth),
            "eq10_smooth_nonconvex_lower": lower_smooth_nonconvex(beta, D, eps, depth),
            "eq11_nonsmooth_convex_lower": lower_nonsmooth_convex(L, R, eps, depth),
            "eq12_pprs_convex_upper": upper_pprs_convex(L, R, d, eps, depth),
            "eq13_pprs_error_bound": optim.theorem3_bound(L, R, d, t3.iters, t3.K),
            "eq14_pprs_nonconvex_upper": upper_pprs_nonconvex(L, D, d, eps, r, depth),
        },
        "presets": {"theorem3": _preset(t3), "theorem4": _preset(t4)},
        "times": {
            "pprs_theorem3": pprs_time(t3.iters, t3.K, depth),
            "pprs_theorem4": pprs_time(t4.iters, t4.K, depth),
            "nse_subgradient_nonsmooth_convex": nse_time(subgradient_iters, depth),
            "nse_agd_smooth_convex": nse_time(agd_iters, depth),
            "nse_gd_smooth_nonconvex": nse_time(gd_iters, depth),
        },
        "nse_iterations": {"subgradient_nonsmooth_convex": subgradient_iters, "agd_smooth_convex": agd_iters,
                           "gd_smooth_nonconvex": gd_iters},
    }


def _preset(p: optim.Preset) -> dict:
    return {"K": p.K, "gamma": p.gamma, "lr": p.lr, "mu": p.mu, "iters": p.iters, "source": p.source}


def _check(**values) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if values["d"] != int(values["d"]) or values["depth"] != int(values["depth"]):
        raise ValueError("d and depth must be integers")


def render(result: dict) -> str:
    """The text report: inputs, bounds (constant-1 ones labelled), presets, predicted times."""
    i, b, p, t = (result[k] for k in ("inputs", "bounds", "presets", "times"))
    c1, t3, t4 = "O/Ω, constant 1", p["theorem3"], p["theorem4"]
    bounds = [
        ("Thm 1 eq. (9)   smooth convex, lower", "√(βR²/ε)·Δ", b["eq9_smooth_convex_lower"], c1),
        ("Thm 1 eq. (10)  smooth non-convex, lower", "βD/ε²·Δ", b["eq10_smooth_nonconvex_lower"], c1),
        ("Thm 2 eq. (11)  non-smooth convex, lower", "(RL/ε)² + (RL/ε)Δ", b["eq11_nonsmooth_convex_lower"], c1),
        ("Thm 3 eq. (12)  PPRS convex, upper", "(RL/ε)² + (RL/ε)Δd^¼", b["eq12_pprs_convex_upper"], c1),
        ("Thm 3 eq. (13)  PPRS error at preset T, K", "3LRd^¼/(T+1) + LRd^-¼/(2K)", b["eq13_pprs_error_bound"],
         "exact; an error, not a time"),
        ("Thm 4 eq. (14)  PPRS non-convex, upper", "DL/(rε²)·(L²/ε² + Δ)·√(d + log(L/ε))",
         b["eq14_pprs_nonconvex_upper"], c1),
    ]
    times = [
        ("PPRS, Theorem 3 preset", f"T·2(K+Δ−1) = {t3['iters']}·{2 * (t3['K'] + i['depth'] - 1)}", t["pprs_theorem3"],
         "T, K of the preset"),
        ("PPRS, Theorem 4 preset", f"T·2(K+Δ−1) = {t4['iters']}·{2 * (t4['K'] + i['depth'] - 1)}", t["pprs_theorem4"],
         "T, K of the preset"),
        ("NSE subgradient GD, non-smooth convex", "(RL/ε)² iterations · 2Δ", t["nse_subgradient_nonsmooth_convex"],
         "iterations from RL/√T ≤ ε"),
        ("NSE AGD, smooth convex", "√(βR²/ε) iterations · 2Δ", t["nse_agd_smooth_convex"], "iterations: " + c1),
        ("NSE GD, smooth non-convex", "βD/ε² iterations · 2Δ", t["nse_gd_smooth_nonconvex"], "iterations: " + c1),
        ("lower bound, non-smooth convex", "eq. (11)", b["eq11_nonsmooth_convex_lower"], c1),
    ]
    lines = [f"inputs: L={i['L']:g} R={i['R']:g} d={i['d']} ε={i['eps']:g} Δ={i['depth']} r={i['r']:g} "
             f"D={i['D']:g} β={i['beta']:g}", "", "bounds (time units unless stated)", *_table(bounds),
             "", "recommended parameters"]
    for name, preset in p.items():
        lines.append(f"  {name} ({preset['source']}): K={preset['K']} γ={preset['gamma']:.6g} η={preset['lr']:.6g} "
                     f"μ={preset['mu']} T={preset['iters']}")
    lines += ["", "predicted times (time units)", *_table(times),
              f"  speed-up of PPRS (Theorem 3 preset) over NSE subgradient GD: "
              f"{t['nse_subgradient_nonsmooth_convex'] / t['pprs_theorem3']:.3g}x"]
    return "\n".join(lines)


def _table(rows: list[tuple[str, str, float, str]]) -> list[str]:
    """Aligned lines of (label, formula, value, note)."""
    w0, w1 = (max(len(row[k]) for row in rows) for k in (0, 1))
    return [f"  {label:<{w0}}  {formula:<{w1}}  {value:>13.6g}  [{note}]" for label, formula, value, note in rows]


def plot(args: argparse.Namespace, path: str) -> None:
    """Predicted times against Δ (log-log), one panel per setting."""
    import numpy as np
    from matplotlib.figure import Figure

    depths = np.unique(np.geomspace(1, 1000, 60).round().astype(int))
    rows = [evaluate(args.L, args.R, args.d, args.eps, int(D), args.r, args.D, args.beta) for D in depths]
    series = [
        ("non-smooth convex", [("PPRS, Theorem 3 preset", "times", "pprs_theorem3", "-"),
                               ("NSE subgradient GD", "times", "nse_subgradient_nonsmooth_convex", "-"),
                               ("eq. (12) upper, const 1", "bounds", "eq12_pprs_convex_upper", ":"),
                               ("eq. (11) lower, const 1", "bounds", "eq11_nonsmooth_convex_lower", "--")]),
        ("non-smooth non-convex", [("PPRS, Theorem 4 preset", "times", "pprs_theorem4", "-"),
                                   ("eq. (14) upper, const 1", "bounds", "eq14_pprs_nonconvex_upper", ":")]),
        ("smooth", [("NSE AGD, convex (const 1)", "times", "nse_agd_smooth_convex", "-"),
                    ("eq. (9) lower, convex, const 1", "bounds", "eq9_smooth_convex_lower", "--"),
                    ("NSE GD, non-convex (const 1)", "times", "nse_gd_smooth_nonconvex", "-"),
                    ("eq. (10) lower, non-convex, const 1", "bounds", "eq10_smooth_nonconvex_lower", "--")]),
    ]
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    for ax, (title, curves) in zip(fig.subplots(1, 3), series):
        for label, group, key, style in curves:
            ax.loglog(depths, [row[group][key] for row in rows], style, label=label, linewidth=1.8)
        ax.axvline(args.depth, color="grey", linewidth=0.8, alpha=0.6, label=f"Δ = {args.depth} (--depth)")
        ax.set_title(title)
        ax.set_xlabel("depth Δ")
        ax.set_ylabel("time (units)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"L={args.L:g} R={args.R:g} d={args.d} ε={args.eps:g} r={args.r:g} D={args.D:g} β={args.beta:g}")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":  # python -m pprs_mpi.theory: the command line in pprs_mpi.cli.theory
    from pprs_mpi.cli.theory import main
    sys.exit(main())
