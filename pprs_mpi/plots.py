"""PNG plots of run traces for `python -m pprs_mpi.report --plot DIR` (needs `pip install 'pprs_mpi[plot]'`).

Figures are drawn on `matplotlib.figure.Figure` objects directly, without pyplot, so no GUI
backend or global state is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pprs_mpi.report import (BACKWARD, FORWARD, WAIT, depth, last_complete_iteration, n_microbatches, objective,
                             pipeline_records, setting)
from pprs_mpi.trace import Trace, TraceError

COLOURS = {FORWARD: "#4c72b0", BACKWARD: "#dd8452", WAIT: "#d9d9d9"}
LABELS = {FORWARD: "forward", BACKWARD: "backward", WAIT: "wait"}


def write_all(traces: list[Trace], directory, iteration: int | None = None) -> list[Path]:
    """Write every plot for these runs into `directory`; return the paths written."""
    shown = [gantt_iteration(trace, iteration) for trace in traces]  # bad --iteration fails before any drawing
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = _unique_names(traces)
    written = [plot_objective(traces, names, column, directory / f"f_vs_{column}.png")
               for column in ("pipeline_time", "wall_time")]
    for trace, name, it in zip(traces, names, shown):
        written.append(plot_smoothed_vs_eval(trace, name, directory / f"{name}_f_smoothed_vs_f_eval.png"))
        if it is not None:
            written.append(plot_gantt(trace, name, it, directory / f"{name}_gantt_iteration{it}.png"))
    return written


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


def plot_objective(traces: list[Trace], names: list[str], column: str, path: Path) -> Path:
    """The objective of every run against pipeline time or wall time, on one axes."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    sources, plotted = set(), []
    for trace, name in zip(traces, names):
        source, rows = objective(trace)
        sources.add(source)
        values = trace.columns[source][rows]
        ax.plot(trace.columns[column][rows], values, marker="." if rows.size < 50 else None,
                label=name + _simulated(trace))
        plotted.append(values)
    _log_scale_if_wide(ax, np.concatenate(plotted))
    ax.set_xlabel("pipeline time (units)" if column == "pipeline_time" else "wall time (s)")
    ax.set_ylabel(" / ".join(sorted(sources)))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def plot_smoothed_vs_eval(trace: Trace, name: str, path: Path) -> Path:
    """f_smoothed (mean of the K sample values at x_t) and f_eval = f(y_t) against the iteration."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    iteration, smoothed, evaluated = (trace.columns[c] for c in ("iteration", "f_smoothed", "f_eval"))
    ax.plot(iteration, smoothed, label="f_smoothed (mean of K samples)", color="#4c72b0")
    rows = np.isfinite(evaluated)
    ax.plot(iteration[rows], evaluated[rows], "o", markersize=3, label="f_eval = f(y_t)", color="#c44e52")
    _log_scale_if_wide(ax, np.concatenate([smoothed, evaluated[rows]]))
    ax.set_xlabel("iteration")
    ax.set_ylabel("f")
    ax.set_title(name + _simulated(trace))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def plot_gantt(trace: Trace, name: str, iteration: int, path: Path) -> Path:
    """Per-rank Gantt chart of one iteration of the timeline: forward, backward and wait bars, microbatches labelled."""
    records = pipeline_records(trace)
    records = records[records["iteration"] == iteration]
    ranks = np.unique(records["rank"])
    t0 = records["start"].min()
    span = records["end"].max() - t0
    unit, scale = _time_unit(span)
    fig = Figure(figsize=(10, 1.2 + 0.55 * ranks.size), layout="constrained")
    ax = fig.add_subplot()
    label_width = _label_width(fig, span)
    for rank in ranks:
        for phase in (FORWARD, BACKWARD, WAIT):
            mine = records[(records["rank"] == rank) & (records["phase"] == phase)]
            bars = np.column_stack([mine["start"] - t0, mine["end"] - mine["start"]]) / scale
            ax.broken_barh(bars, (rank - 0.4, 0.8), facecolors=COLOURS[phase],
                           edgecolors="white" if phase != WAIT else "none", linewidth=0.5)
    for record in records[records["phase"] != WAIT]:
        text = str(record["microbatch"])
        if record["end"] - record["start"] >= label_width * len(text):
            ax.text((record["start"] + record["end"] - 2 * t0) / (2 * scale), record["rank"], text,
                    ha="center", va="center", fontsize=8, color="white")
    ax.set_yticks(ranks, [f"rank {r}" for r in ranks])
    ax.set_ylim(ranks.max() + 0.6, ranks.min() - 0.6)  # rank 0 on top, as in the paper's Figure 2
    ax.set_xlim(0, span / scale)
    ax.set_xlabel(f"time since the iteration's first record ({unit})")
    ax.set_title(f"{name}: iteration {iteration}, {setting(trace, 'schedule') or 'pipeline'}, "
                 f"M={n_microbatches(trace)}, Δ={depth(trace)}{_simulated(trace)}")
    ax.legend(handles=[Patch(color=COLOURS[p], label=LABELS[p]) for p in (FORWARD, BACKWARD, WAIT)],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.savefig(path, dpi=120)
    return path


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


def _log_scale_if_wide(ax, values: np.ndarray) -> None:
    """Log y-axis when all values are positive and span more than a decade."""
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() > 10 * values.min():
        ax.set_yscale("log")


def _simulated(trace: Trace) -> str:
    simulated = setting(trace, "simulated_depth")
    return "" if simulated is None else f" (simulated Δ={simulated})"


def _unique_names(traces: list[Trace]) -> list[str]:
    """File stems as plot names, prefixed with the run's position where two runs share a stem."""
    stems = [Path(trace.path).stem for trace in traces]
    return stems if len(set(stems)) == len(stems) else [f"{i}-{stem}" for i, stem in enumerate(stems)]
