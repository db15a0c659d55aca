"""The `rates` experiment's rate check: a series' fitted decay exponent in T against eq. (13)'s own.

That the mean error sits under eq. (13) at every T says little about the rate: on the planted problems the error
starts at a third of the bound or less, so a step rule that converged more slowly than Theorem 3 promises would stay
under it for a long while. This check also fits the decay. A series is one (problem, d, K rule) over the T's of the
protocol; its exponent p is the least-squares slope of log(mean error) against log(T + 1), and the bound's exponent
is fitted the same way over the same T's (eq. (13)'s K term makes it differ from −1).

The fit uses only the T's at which the bound is below the starting error f(y_0) − f*. Above it the bound promises
less than "no worse than the start", and any rule's error there is held near the start by the horizon, not by the
rule, so its decay tells the rules apart no better than chance. A series passes when the bound holds at every T and
p ≤ p_bound + Z·s.e., the standard error from a bootstrap over the seeds (each T's seeds resampled with replacement,
a fixed generator seed, so that the check is a function of the data). A series with fewer than two such T's is
judged on the bound alone and says so.
"""

from __future__ import annotations

import numpy as np

Z = 2.0  # tolerance in standard errors: a series fails when its exponent exceeds the bound's by more
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_POINTS = 2  # T's in the window needed to fit an exponent


def fit(Ts, values) -> tuple[np.ndarray, np.ndarray]:
    """(exponent p, constant c) of the least-squares line log v = log c + p log(T + 1); `values` is one series
    (one value per T) or a matrix with one series per column."""
    p, log_c = np.polyfit(np.log(np.asarray(Ts, dtype=float) + 1), np.log(np.asarray(values, dtype=float)), 1)
    return p, np.exp(log_c)


def bootstrap_se(Ts, errors: list, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float:
    """Standard deviation of the fitted exponent of the mean error when each T's seeds (`errors[i]`, the
    per-seed errors at Ts[i]) are resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = np.stack([np.asarray(e)[rng.integers(0, len(e), (resamples, len(e)))].mean(axis=1) for e in errors])
    return float(np.std(fit(Ts, means)[0], ddof=1))


def judge(rows: list[dict]) -> dict:
    """The verdict on one series: `rows` are its rows (T, errors per seed, measured = their mean, bound, holds,
    start = f(y_0) − f*)."""
    rows = sorted(rows, key=lambda r: r["T"])
    exceeded = [r["T"] for r in rows if not r["holds"]]
    window = [r for r in rows if r["bound"] < r["start"]]
    found = {"window": [r["T"] for r in window], "exceeded": exceeded, "measured_exponent": None,
             "measured_constant": None, "se": None, "bound_exponent": None, "tolerance": None, "slower": None}
    usable = all(np.all(np.isfinite(r["errors"])) and min(r["errors"]) > 0 for r in window)
    if len(window) >= MIN_POINTS and usable:
        Ts = [r["T"] for r in window]
        p, c = fit(Ts, [r["measured"] for r in window])
        se = bootstrap_se(Ts, [r["errors"] for r in window])
        bound = float(fit(Ts, [r["bound"] for r in window])[0])
        found.update(measured_exponent=float(p), measured_constant=float(c), se=se, bound_exponent=bound,
                     tolerance=Z * se, slower=bool(p > bound + Z * se))
    why = []
    if found["slower"]:
        why.append(f"decays slower than the bound ({found['measured_exponent']:.2f} > "
                   f"{found['bound_exponent']:.2f} + {found['tolerance']:.3f})")
    if exceeded:
        why.append(f"over the bound at T = {', '.join(map(str, exceeded))}")
    if found["slower"] is None:
        why.append(f"rate not tested: the bound is under f(y_0) − f* at fewer than {MIN_POINTS} T's" if usable
                   else "rate not tested: an error is not finite and positive")
    return {**found, "passes": not exceeded and not found["slower"], "why": "; ".join(why)}


def series_of(rows: list[dict]) -> list[dict]:
    """Every (problem, d, K rule) series of `rows` with its verdict, in the rows' order."""
    keys = list(dict.fromkeys((r["problem"], r["d"], r["K_rule"]) for r in rows))
    return [{"problem": p, "d": d, "K_rule": k,
             **judge([r for r in rows if (r["problem"], r["d"], r["K_rule"]) == (p, d, k)])} for p, d, k in keys]


HEAD = ["problem", "d", "K rule", "T's with bound < f(y_0)−f*", "exponent p ± s.e.", "bound's p", "p − bound's p",
        "verdict"]


def cells(series: dict) -> list[str]:
    """A series' row of the table HEAD names (the rates text and docs/reproduction.md)."""
    fitted = series["measured_exponent"] is not None
    return [series["problem"], str(series["d"]), series["K_rule"], ",".join(map(str, series["window"])) or "–",
            f"{series['measured_exponent']:.2f} ± {series['se']:.3f}" if fitted else "–",
            f"{series['bound_exponent']:.2f}" if fitted else "–",
            f"{series['measured_exponent'] - series['bound_exponent']:+.2f}" if fitted else "–",
            ("pass" if series["passes"] else "FAIL") + (f" ({series['why']})" if series["why"] else "")]


def exponent_span(series: list[dict], key: str = "measured_exponent") -> str:
    """'a to b' (or 'a' where they agree to 2 decimals) over the series whose rate was tested ('–' if none)."""
    values = [s[key] for s in series if s["measured_exponent"] is not None]
    if not values:
        return "–"
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low} to {high}"


def slower_over_every_T(rows: list[dict]) -> list[dict]:
    """The series whose exponent fitted over every T (no window, no tolerance) exceeds the bound's fitted alike:
    what the check would say without its window, stated beside it."""
    found = []
    for key in dict.fromkeys((r["problem"], r["d"], r["K_rule"]) for r in rows):
        mine = sorted((r for r in rows if (r["problem"], r["d"], r["K_rule"]) == key), key=lambda r: r["T"])
        Ts, measured = [r["T"] for r in mine], [r["measured"] for r in mine]
        if len(mine) < MIN_POINTS or not np.all(np.isfinite(measured)):
            continue
        p, bound = fit(Ts, measured)[0], fit(Ts, [r["bound"] for r in mine])[0]
        if p > bound:
            found.append({"problem": key[0], "d": key[1], "K_rule": key[2], "exponent": float(p),
                          "bound_exponent": float(bound),
                          "outside": [r["T"] for r in mine if r["bound"] >= r["start"]]})
    return found
