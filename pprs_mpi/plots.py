"""PNG plots of run traces for `python -m pprs_mpi.report --plot DIR` (needs `pip install 'pprs_mpi[plot]'`).

Axes are labelled in words with units; legends name the settings that differ between runs (the
title holds those they share) and each run's layout; with f* known the curves are f − f*.
Figures are drawn on `matplotlib.figure.Figure` objects directly, without pyplot, so no GUI
backend or global state is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pprs_mpi.analysis import (ALGORITHM_KEYS, BACKWARD, FORWARD, WAIT, every_text, f_star, last_complete_iteration,
                               layout_text, objective, pipeline_records, settings_text, short_number, summarize,
                               varying)
from pprs_mpi.trace import Trace, TraceError

COLOURS = {FORWARD: "#4c72b0", BACKWARD: "#dd8452", WAIT: "#e3e3e3"}
LABELS = {FORWARD: "forward", BACKWARD: "backward", WAIT: "wait (for a message)"}
X_LABELS = {"pipeline_time": "pipeline time (units of one forward of one node on one microbatch)",
            "wall_time": "wall time (s)", "iteration": "iteration"}
MIN_BAR = 0.003  # narrowest drawn Gantt bar, as a fraction of the iteration's span (about 3 pixels)


def write_all(traces: list[Trace], directory, iteration: int | None = None) -> list[Path]:
    """Write every plot for these runs into `directory`; return the paths written."""
    shown = [gantt_iteration(trace, iteration) for trace in traces]  # bad --iteration fails before any drawing
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = _unique_names(traces)
    summaries = [summarize(trace, targets=[]) for trace in traces]
    figures = {f"f_vs_{column}.png": plot_objective(traces, summaries, names, column)
               for column in ("pipeline_time", "wall_time")}
    for trace, summary, name, it in zip(traces, summaries, names, shown):
        figures[f"{name}_f_smoothed_vs_f_eval.png"] = plot_smoothed_vs_eval(trace, summary, name)
        if it is not None:
            figures[f"{name}_gantt_iteration{it}.png"] = plot_gantt(trace, summary, name, it)
    for filename, fig in figures.items():
        fig.savefig(directory / filename, dpi=120)
    return [directory / filename for filename in figures]


def gantt_iteration(trace: Trace, iteration: int | None) -> int | None:
    """The iteration to draw: `iteration` if given, else the last complete one; None without a timeline."""
    records = pipeline_records(trace)
    if records is None:
        return None
    if iteration is None:
        return last_complete_iteration(records)
    if iteration not in records["iteration"]:
        raise TraceError(f"{trace.path}: the timeline has no records for iteration {iteration}")
    return iteration


def plot_objective(traces: list[Trace], summaries: list[dict], names: list[str], column: str) -> Figure:
    """The objective of every run against pipeline time or wall time, on one axes."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    differ = varying(summaries)
    optimum = _common_f_star(traces)
    plotted = []
    for trace, summary, name in zip(traces, summaries, names):
        source, rows = objective(trace)
        values = trace.columns[source][rows] - (optimum or 0.0)
        label = f"{_plain(name)}: {settings_text(summary, differ)}" if differ else _plain(name)
        if column == "pipeline_time":
            label += f" ({layout_text(summary)}{_simulated(summary)})"
        ax.plot(trace.columns[column][rows], values, marker="." if rows.size < 50 else None, label=label)
        plotted.append(values)
    log = _log_scale_if_wide(ax, np.concatenate(plotted))
    _draw_f_star(ax, optimum, log)
    sources = sorted({summary["f_source"] for summary in summaries})
    ax.set_xlabel(X_LABELS[column])
    ax.set_ylabel(_with_f_star(" or ".join(_objective_label(source, optimum) for source in sources), optimum, log))
    ax.set_title(_title(summaries, [key for key in ALGORITHM_KEYS if key not in differ]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_smoothed_vs_eval(trace: Trace, summary: dict, name: str) -> Figure:
    """f_smoothed (mean of the K sample values at x_t) with its 95% band, f(y_t) and f at the averaged
    iterate against the iteration; below, the γ_t and η_t the iterations used."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax, below = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    optimum = f_star(trace)
    iteration, smoothed, evaluated, averaged, low, high = (
        trace.columns[c] - (0.0 if c == "iteration" else optimum or 0.0)
        for c in ("iteration", "f_smoothed", "f_eval", "f_avg", "f_low", "f_high"))
    minus = "" if optimum is None else " - f^*"
    ax.plot(iteration, smoothed, label=rf"mean over the K samples of $f(x_t + \gamma_t X_k){minus}$", color="#4c72b0")
    band = np.isfinite(low)
    if band.any():
        ax.fill_between(iteration[band], low[band], high[band], color="#4c72b0", alpha=0.2, linewidth=0,
                        label=r"95% interval of $f^{\gamma_t}(x_t)$" + minus.replace("f^*", "$f^*$"))
    rows = np.isfinite(evaluated)
    ax.plot(iteration[rows], evaluated[rows], "o", markersize=3, color="#c44e52",
            label=rf"$f(y_t){minus}$, {every_text(summary['eval_every'])} and at the end")
    shown = [smoothed, evaluated[rows]]
    if np.isfinite(averaged).any():
        mean_rows = np.isfinite(averaged)
        ax.plot(iteration[mean_rows], averaged[mean_rows], "s", markersize=3, color="#55a868",
                label=rf"$f(\bar y_t){minus}$, the {summary['average']} average")
        shown.append(averaged[mean_rows])
    _plot_schedules(below, trace)
    log = _log_scale_if_wide(ax, np.concatenate(shown))
    _draw_f_star(ax, optimum, log)
    below.set_xlabel(X_LABELS["iteration"])
    ax.set_ylabel(_with_f_star(f"objective $f{minus}$", optimum, log))
    ax.set_title(f"{_plain(name)}: {_title([summary], ALGORITHM_KEYS)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_schedules(ax, trace: Trace) -> None:
    """γ_t and η_t against the iteration (log scale when positive), from the trace's columns."""
    iteration = trace.columns["iteration"]
    for column, label, colour in (("gamma", r"smoothing $\gamma_t$", "#8172b3"), ("step_size", r"step $\eta_t$",
                                                                                   "#937860")):
        values = trace.columns[column]
        rows = np.isfinite(values)
        if rows.any():
            ax.plot(iteration[rows], values[rows], label=label, color=colour)
    positive = [trace.columns[c][np.isfinite(trace.columns[c])] for c in ("gamma", "step_size")]
    if all(v.size and (v > 0).all() for v in positive):
        ax.set_yscale("log")
    ax.set_ylabel("parameter")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def plot_gantt(trace: Trace, summary: dict, name: str, iteration: int) -> Figure:
    """Gantt chart of one iteration, one row per stage (serial engine) or rank (MPI engine) whose records the
    trace holds (a sample of a large job's, said in the title): forward, backward and wait bars, microbatches
    labelled where they fit, every bar at least MIN_BAR wide."""
    records = pipeline_records(trace)
    records = records[records["iteration"] == iteration]
    ranks = np.unique(records["rank"])
    position = np.searchsorted(ranks, records["rank"])  # sampled ranks drawn one row apart
    rows = np.arange(ranks.size)
    t0 = records["start"].min()
    span = records["end"].max() - t0
    unit, scale = _time_unit(span)
    fig = Figure(figsize=(11, 1.4 + 0.55 * rows.size), layout="constrained")
    ax = fig.add_subplot()
    label_width = _label_width(fig, span)
    widened = False
    for phase in (WAIT, FORWARD, BACKWARD):  # actions drawn over the waits
        for row in rows:
            mine = records[(position == row) & (records["phase"] == phase)]
            durations = mine["end"] - mine["start"]
            widened |= phase != WAIT and bool((durations < MIN_BAR * span).any())
            drawn = np.maximum(durations, MIN_BAR * span) if phase != WAIT else durations
            bars = np.column_stack([mine["start"] - t0, drawn]) / scale
            ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=COLOURS[phase], edgecolors="none", linewidth=0)
    numbered, acting = 0, records["phase"] != WAIT
    actions = records[acting]
    for record, row in zip(actions, position[acting]):
        text = str(record["microbatch"])
        if record["end"] - record["start"] >= label_width * len(text):
            numbered += 1
            ax.text((record["start"] + record["end"] - 2 * t0) / (2 * scale), row, text,
                    ha="center", va="center", fontsize=8, color="white")
    word = "stage" if summary["engine"] == "serial" else "rank"
    nodes = summary["stage_nodes"]
    ax.set_yticks(rows, [f"{word} {r}" + (f" ({nodes[r]} node{'s' * (nodes[r] > 1)})" if r < len(nodes) else "")
                         for r in ranks])
    ax.set_ylim(rows.max() + 0.6, rows.min() - 0.6)  # stage 0 on top, as in the paper's Figure 2
    ax.set_xlim(0, span / scale)
    shortest = f"; actions shorter than {MIN_BAR * span / scale:.2g} {unit} drawn that wide" if widened else ""
    ax.set_xlabel(f"time since the iteration's first record ({unit}){shortest}")
    ax.set_title(f"{_plain(name)}: iteration {iteration}, {summary['schedule'] or 'pipeline'}, "
                 f"M={short_number(summary['n_microbatches'])} microbatches{_numbered(numbered, len(actions))}, "
                 f"Δ={short_number(summary['depth'])}, {layout_text(summary)}{_simulated(summary)}"
                 + (f"; {ranks.size} of {summary['stages']} {word}s sampled" if ranks.size < (summary["stages"] or 0)
                    else ""))
    handles = [Patch(facecolor=COLOURS[p], label=LABELS[p]) for p in (FORWARD, BACKWARD, WAIT)]
    handles.append(Patch(facecolor="white", edgecolor="#999999", label="not recorded\n(messages, bookkeeping)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return fig


def _numbered(numbered: int, actions: int) -> str:
    """What the title says of the microbatch numbers: on every bar, on the wide enough ones, or none."""
    if not numbered:
        return ""
    if numbered == actions:
        return " (numbered on the bars)"
    return f" (numbered on the {numbered} of {actions} bars wide enough)"


def _objective_label(source: str, optimum: float | None) -> str:
    minus = "" if optimum is None else " - f^*"
    return f"$f(y_t){minus}$" if source == "f_eval" else rf"mean of $f(x_t + \gamma X_k){minus}$ over K samples"


def _draw_f_star(ax, optimum: float | None, log: bool) -> None:
    """The f* reference on a linear axis: a dashed line at f − f* = 0 (a log axis cannot reach 0)."""
    if optimum is not None and not log:
        ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label=f"$f^*$ = {short_number(optimum)}")


def _with_f_star(label: str, optimum: float | None, log: bool) -> str:
    """The y label, saying what f* is and that it lies at −∞ on a log axis."""
    if optimum is None:
        return label
    return f"{label}   ($f^*$ = {short_number(optimum)}{', log scale' if log else ''})"


def _common_f_star(traces: list[Trace]) -> float | None:
    """f* when every run knows the same one (then all curves can show f − f*), else None."""
    values = {f_star(trace) for trace in traces}
    return values.pop() if len(values) == 1 else None


def _title(summaries: list[dict], keys) -> str:
    """The problem and the settings every run shares."""
    problems = sorted({_plain(_short(str(s["problem"]))) for s in summaries})
    shared = settings_text(summaries[0], keys)
    return ", ".join(problems) + (f" — {shared}" if shared else "")


def _short(problem: str) -> str:
    """A builder reference without its directories (`mine.py:build`): a long path would run off the title."""
    where, colon, function = problem.rpartition(":")
    return f"{Path(where).name}{colon}{function}" if colon and "/" in where else problem


def _plain(text: str) -> str:
    """Text from a trace (a problem's name, a file's stem) shown as it is: a `$` would start matplotlib's
    mathtext, and an unbalanced or unparsable one makes drawing fail."""
    return text.replace("$", r"\$")


def _label_width(fig: Figure, span: float) -> float:
    """Seconds of bar per label character at 8 pt on an axes about 80% of the figure wide."""
    points_per_char = 6.0
    axes_points = 0.8 * fig.get_figwidth() * 72
    return span * points_per_char / axes_points


def _time_unit(seconds: float) -> tuple[str, float]:
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= 2 * scale:
            return unit, scale
    return "µs", 1e-6


def _log_scale_if_wide(ax, values: np.ndarray) -> bool:
    """Log y-axis when all values are positive and span more than a decade; True if it set one."""
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() > 10 * values.min():
        ax.set_yscale("log")
        return True
    return False


def _simulated(summary: dict) -> str:
    simulated = summary["simulated_depth"]
    return "" if simulated is None else f", simulated Δ={simulated}"


def _unique_names(traces: list[Trace]) -> list[str]:
    """File stems as plot names, prefixed with the run's position where two runs share a stem."""
    stems = [Path(trace.path).stem for trace in traces]
    return stems if len(set(stems)) == len(stems) else [f"{i}-{stem}" for i, stem in enumerate(stems)]
