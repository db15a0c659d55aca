"""The numbers read from run traces, and their one-line descriptions, shared by the text report and
the plots (this module neither prints nor draws).

The objective is f_eval (f(y_t), evaluated every `eval_every` iterations) where the trace has any,
else f_smoothed (mean of the K sample values); every summary says which. Timeline figures cover
the gradient pipeline only: the records of evaluation passes (microbatch M) are left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pprs_mpi.engines.timeline import MEMORY_KEYS, PHASES, SUMMARY_KEYS
from pprs_mpi.layout import DECLARED_RULE, Candidate, Layout
from pprs_mpi.trace import Trace, abandoned

FORWARD, BACKWARD, WAIT = (PHASES.index(p) for p in ("forward", "backward", "wait"))
DEFAULT_GAP_FRACTIONS = (1e-1, 1e-2, 1e-3)
ALGORITHM_KEYS = ("algo", "K", "gamma", "lr", "mu")


def setting(trace: Trace, key: str):
    """A run setting: the root attribute if the writer stored one, else the configuration's value."""
    return trace.attrs[key] if key in trace.attrs else trace.config.get(key)


def f_star(trace: Trace) -> float | None:
    """The known optimal value f*: the writer's root attribute `f_star` (NaN or absent when unknown)."""
    value = trace.attrs.get("f_star")
    return float(value) if value is not None and math.isfinite(float(value)) else None


def objective(trace: Trace) -> tuple[str, np.ndarray]:
    """(column name, row indices) of the objective: the rows where f_eval was computed, else all rows."""
    evaluated = np.flatnonzero(np.isfinite(trace.columns["f_eval"]))
    if evaluated.size:
        return "f_eval", evaluated
    return "f_smoothed", np.arange(trace.n_rows)


def target_basis(traces: list[Trace]) -> tuple[float, float] | None:
    """(highest first f, lowest best f) over the runs: what the default targets are taken between;
    None when no run went below its first value."""
    starts, bests = [], []
    for trace in traces:
        name, rows = objective(trace)
        values = trace.columns[name][rows]
        values = values[np.isfinite(values)]
        if values.size:
            starts.append(float(values[0]))
            bests.append(float(values.min()))
    if not starts or max(starts) <= min(bests):
        return None
    return max(starts), min(bests)


def default_targets(traces: list[Trace]) -> list[float]:
    """Targets common to all runs: the lowest best f plus 10%, 1% and 0.1% of the gap between the
    highest first f and that best (none when no run improved on its start)."""
    basis = target_basis(traces)
    if basis is None:
        return []
    first, best = basis
    return [best + fraction * (first - best) for fraction in DEFAULT_GAP_FRACTIONS]


def time_to_targets(trace: Trace, targets: list[float]) -> list[dict]:
    """For each target, the first row whose objective is <= target: its iteration, pipeline and wall time."""
    name, rows = objective(trace)
    values = trace.columns[name][rows]
    reached = []
    for target in targets:
        hits = np.flatnonzero(values <= target)
        at = {column: None for column in ("iteration", "pipeline_time", "wall_time")}
        if hits.size:
            at = {column: trace.columns[column][rows[hits[0]]].item() for column in at}
        reached.append({"target": target, **at})
    return reached


def n_microbatches(trace: Trace) -> int | None:
    """M: the writer's attribute, else ceil(K / microbatch_size) from the configuration."""
    M = setting(trace, "n_microbatches")
    if M is None and trace.config.get("K") is not None:
        b = trace.config.get("microbatch_size")
        M = -(-int(trace.config["K"]) // (b if isinstance(b, int) else 1))
    return None if M is None else int(M)


def depth(trace: Trace) -> int | None:
    """Δ: the writer's attribute, else the stored graph's."""
    value = setting(trace, "depth")
    if value is None and trace.graph is not None:
        value = trace.graph["depth"]
    return None if value is None else int(value)


def makespan(trace: Trace) -> int | None:
    """Pipeline time units per iteration: the writer's attribute, else 2(M + Δ − 1) (one node per stage)."""
    value = setting(trace, "makespan")
    M, delta = n_microbatches(trace), depth(trace)
    if value is None and M is not None and delta is not None:
        value = 2 * (M + delta - 1)
    return None if value is None else int(value)


def stage_nodes(trace: Trace) -> list[int]:
    """Number of graph nodes on each stage (empty for a trace without its graph)."""
    if trace.graph is None:
        return []
    return np.bincount(np.asarray(trace.graph["stage_of"], dtype=int)).tolist()


def layout(trace: Trace) -> dict:
    """How the graph was laid out: engine, stages, nodes per stage, and the pipeline time units each
    iteration counts (the makespan), next to 2(M + Δ − 1), the makespan with one node per stage."""
    nodes = stage_nodes(trace)
    stages = setting(trace, "stages")
    M, delta = n_microbatches(trace), depth(trace)
    chosen = layout_choice(trace)
    return {"engine": setting(trace, "engine"), "stages": int(stages) if stages is not None else len(nodes) or None,
            "stage_nodes": nodes, "makespan": makespan(trace),
            "one_node_per_stage_makespan": None if M is None or delta is None else 2 * (M + delta - 1),
            "microbatch_choice": None if chosen is None else chosen.describe(),
            "predicted_iteration_time": None if chosen is None else chosen.predicted_s,
            # the fixed machine model weighed a pipeline's candidates: timing this machine's nodes could change them
            "declared_model_on_ranks": chosen is not None and chosen.one_process_s is not None
            and chosen.rule.startswith(DECLARED_RULE)}


def layout_choice(trace: Trace) -> Layout | None:
    """How the run's microbatch size (and grouping, schedule) was chosen, from the writer's record; None for
    traces written before the choice was recorded or whose record is not readable."""
    try:
        record = json.loads(trace.attrs["layout_choice"])
        candidates = tuple(Candidate(int(c["microbatch_size"]), int(c["n_microbatches"]), float(c["predicted_s"]),
                                     schedule=str(c.get("schedule", "")))  # absent before the planner chose it
                           for c in record["candidates"])
        one_process = record.get("one_process_s")  # absent before the planner compared one process
        return Layout(int(record["microbatch_size"]), str(record["rule"]), candidates, schedule=record.get("schedule"),
                      one_process_s=None if one_process is None else float(one_process))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        return None


def pipeline_records(trace: Trace) -> np.ndarray | None:
    """Timeline records of the gradient pipeline (evaluation passes, microbatch >= M, left out)."""
    M = n_microbatches(trace)
    if trace.timeline is None or not trace.timeline.size:
        return None
    return trace.timeline if M is None else trace.timeline[trace.timeline["microbatch"] < M]


def iteration_spans(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, seconds from the first start to the last end of each iteration's records)."""
    iterations, inverse = np.unique(records["iteration"], return_inverse=True)
    first = np.full(iterations.size, np.inf)
    last = np.full(iterations.size, -np.inf)
    np.minimum.at(first, inverse, records["start"])
    np.maximum.at(last, inverse, records["end"])
    return iterations, last - first


def complete_iterations(records: np.ndarray) -> np.ndarray:
    """Iterations with as many backward records as the fullest one (a run stopped mid-iteration has fewer)."""
    backward = records[records["phase"] == BACKWARD]
    if not backward.size:
        return np.unique(records["iteration"])
    iterations, counts = np.unique(backward["iteration"], return_counts=True)
    return iterations[counts == counts.max()]


def last_complete_iteration(records: np.ndarray) -> int:
    return int(complete_iterations(records).max())


def rank_fractions(records: np.ndarray) -> list[dict]:
    """Per rank, the fractions of its time computing (forward + backward) and waiting.

    A rank's time is the sum over iterations of its own span (first start to last end), so the
    gaps between iterations (the optimizer step, the trace) do not count as waiting.
    """
    fractions = []
    for rank in np.unique(records["rank"]):
        mine = records[records["rank"] == rank]
        span = iteration_spans(mine)[1].sum()
        duration = mine["end"] - mine["start"]
        busy = duration[np.isin(mine["phase"], (FORWARD, BACKWARD))].sum()
        waiting = duration[mine["phase"] == WAIT].sum()
        fractions.append({"rank": int(rank), "compute": _ratio(busy, span), "wait": _ratio(waiting, span)})
    return fractions


def summary_fractions(summaries: list[dict]) -> list[dict]:
    """Per rank, the fractions of its span computing and waiting, from its summary (`SUMMARY_KEYS`): what
    `rank_fractions` gives from the records, for every rank, sampled for its records or not."""
    return [{"rank": rank, "compute": _ratio(s["compute_seconds"], s["span_seconds"]),
             "wait": _ratio(s["wait_seconds"], s["span_seconds"])} for rank, s in enumerate(summaries)]


def rank_summaries(trace: Trace) -> list[dict]:
    """Per rank, its summary of the sampled gradient passes (empty for traces without one, or a malformed one)."""
    columns = [trace.attrs.get(f"rank_{key}") for key in SUMMARY_KEYS]
    if any(column is None for column in columns):
        return []
    try:
        columns = [np.atleast_1d(np.asarray(column, dtype=np.float64)) for column in columns]
    except (TypeError, ValueError):
        return []
    if len({column.shape for column in columns}) != 1 or columns[0].ndim != 1:
        return []
    return [dict(zip(SUMMARY_KEYS, map(float, values))) for values in zip(*columns)]


def timeline_ranks(trace: Trace) -> list[int] | None:
    """The ranks whose detailed records the timeline holds (None: every rank, a trace from before sampling)."""
    ranks = trace.attrs.get("timeline_ranks")
    try:
        return None if ranks is None else [int(r) for r in np.atleast_1d(ranks)]
    except (TypeError, ValueError):
        return None


def rank_memory(trace: Trace) -> list[dict]:
    """Per rank, the most (node, microbatch) inputs it kept at once for a backward, the bytes of its MPI
    message buffers and the most bytes of its pending sends (empty for traces without these figures)."""
    columns = [trace.attrs.get(f"rank_{key}") for key in MEMORY_KEYS]
    if any(column is None for column in columns):
        return []
    return [{"rank": rank, **{key: int(value) for key, value in zip(MEMORY_KEYS, values)}}
            for rank, values in enumerate(zip(*map(np.atleast_1d, columns)))]


def efficiency(trace: Trace, records: np.ndarray | None) -> dict:
    """Ideal makespan × measured unit cost, over the measured time of an iteration.

    The unit cost is the mean forward/backward action of every rank, from the ranks' summaries (the mean
    of the records in traces without them; the mean, not the median: units slowed by contention count in
    the total). The iteration's span comes from the sampled ranks' records, which include the first and
    the last rank. 'pipeline' measures an iteration by its timeline span (bubbles
    and communication) over complete iterations, 'end_to_end' by the wall time per iteration of the
    rows (optimizer, evaluations and trace included).
    """
    span = makespan(trace)
    unit = iteration_time = None
    summaries = rank_summaries(trace)
    actions = sum(s["actions"] for s in summaries)
    if actions:  # every rank's actions, sampled for its records or not
        unit = sum(s["compute_seconds"] for s in summaries) / actions
    if records is not None:
        compute = records[np.isin(records["phase"], (FORWARD, BACKWARD))]
        if not actions and compute.size:
            unit = float(np.mean(compute["end"] - compute["start"]))
        complete = records[np.isin(records["iteration"], complete_iterations(records))]
        iteration_time = float(iteration_spans(complete)[1].mean())
    wall = _wall_per_iteration(trace)
    ideal = None if span is None or unit is None else span * unit
    return {"n_microbatches": n_microbatches(trace), "makespan": span, "unit_cost": unit,
            "iteration_time": iteration_time, "pipeline_efficiency": _ratio(ideal, iteration_time),
            "wall_per_iteration": wall, "end_to_end_efficiency": _ratio(ideal, wall)}


def summarize(trace: Trace, targets: list[float] | None = None) -> dict:
    """Everything the report prints about one run, as plain Python values (None where unknown).

    `f_final` is the objective at the last evaluated row and `f_best` its lowest value (at
    `best_iteration`); with f* known, `gap_final` and `gap_best` are the same minus f*.
    """
    if targets is None:
        targets = default_targets([trace])
    name, rows = objective(trace)
    values = trace.columns[name][rows]
    finite = np.isfinite(values)
    best = int(rows[np.flatnonzero(finite)[np.argmin(values[finite])]]) if finite.any() else None
    last = trace.n_rows - 1
    records = pipeline_records(trace)
    optimum = f_star(trace)
    f_final = float(values[-1]) if values.size else None
    f_best = None if best is None else float(trace.columns[name][best])
    return {
        "run": trace.path, "name": Path(trace.path).stem, "status": "abandoned" if abandoned(trace) else trace.status,
        **{key: setting(trace, key) for key in ("problem", *ALGORITHM_KEYS, "schedule", "simulated_depth", "ranks",
                                                "device", "mpi_library", "eval_every")},
        **layout(trace),
        "depth": depth(trace), "rows": trace.n_rows,
        "last_iteration": int(trace.columns["iteration"][last]) if trace.n_rows else None,
        "f_source": name,
        "f_final": f_final, "final_iteration": int(trace.columns["iteration"][rows[-1]]) if values.size else None,
        "f_best": f_best,
        "best_iteration": None if best is None else int(trace.columns["iteration"][best]),
        "f_star": optimum,
        "gap_final": None if optimum is None or f_final is None else f_final - optimum,
        "gap_best": None if optimum is None or f_best is None else f_best - optimum,
        "pipeline_time": float(trace.columns["pipeline_time"][last]) if trace.n_rows else None,
        "wall_time": float(trace.columns["wall_time"][last]) if trace.n_rows else None,
        "targets": time_to_targets(trace, targets),
        **anytime(trace, rows),
        "rank_fractions": (summary_fractions(rank_summaries(trace)) if rank_summaries(trace) else
                           [] if records is None else rank_fractions(records)),
        "timeline_ranks": timeline_ranks(trace),
        "rank_memory": rank_memory(trace),
        **efficiency(trace, records),
    }


def anytime(trace: Trace, rows: np.ndarray) -> dict:
    """The run's γ_t and η_t schedules with their first and last values, its noise, the iterate the report's f
    is taken at and, with --average, f at the averaged iterate (at the objective's last row), and the 95%
    interval of f^γ(x_t) at the last row that has one (NaN columns of older traces give None)."""
    columns, config = trace.columns, trace.config

    def ends(name: str) -> list:
        finite = columns[name][np.isfinite(columns[name])]
        return [float(finite[0]), float(finite[-1])] if finite.size else [None, None]

    average = config.get("average", "none")
    interval = np.flatnonzero(np.isfinite(columns["f_low"]))
    f_avg = columns["f_avg"][rows[-1]] if rows.size else math.nan
    return {
        "gamma_schedule": config.get("gamma_schedule", "constant"),
        "lr_schedule": config.get("lr_schedule", "constant"),
        "decay": [config.get("decay_tau"), config.get("decay_power")], "noise": config.get("noise", "gaussian"),
        "gamma_range": ends("gamma"), "step_size_range": ends("step_size"), "average": average,
        "reported_iterate": "y_t, the last iterate (f_eval)" if average == "none" else
                            f"y_t (f_eval); the {average} average beside it (f_avg)",
        "f_avg_final": float(f_avg) if math.isfinite(f_avg) else None,
        "interval": None if not interval.size else {
            "iteration": int(columns["iteration"][interval[-1]]),
            "low": float(columns["f_low"][interval[-1]]), "high": float(columns["f_high"][interval[-1]])},
    }


def varying(summaries: list[dict], keys=ALGORITHM_KEYS) -> list[str]:
    """The keys among `keys` whose values are not the same in every summary."""
    return [key for key in keys if len({repr(s[key]) for s in summaries}) > 1]


def settings_text(summary: dict, keys=ALGORITHM_KEYS) -> str:
    """'pprs K=8 γ=0.01 lr=0.01 μ=0' for the given keys of a summary (or of any dict of settings)."""
    names = {"algo": "", "K": "K=", "gamma": "γ=", "lr": "lr=", "mu": "μ="}
    return " ".join(f"{names[key]}{short_number(summary[key])}" for key in keys)


def layout_text(summary: dict) -> str:
    """'mpi, 4 stages, 44 units/iteration': what pipeline time counts for this run."""
    return (f"{summary['engine'] or '?'}, {short_number(summary['stages'])} stages, "
            f"{short_number(summary['makespan'])} units/iteration")


def every_text(n) -> str:
    """'every 10 iterations', 'every iteration' (how often f(y_t) was evaluated)."""
    return "every iteration" if n == 1 else f"every {short_number(n)} iterations"


def short_number(value) -> str:
    """A setting or value in at most 4 significant digits (whole numbers below 10⁷ in full); "-" for None."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e7:
        return str(int(value))
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _wall_per_iteration(trace: Trace) -> float | None:
    """Mean wall seconds per iteration over the rows (from the first row's wall time if there is one row)."""
    iteration, wall = trace.columns["iteration"], trace.columns["wall_time"]
    if trace.n_rows >= 2 and iteration[-1] > iteration[0]:
        return float((wall[-1] - wall[0]) / (iteration[-1] - iteration[0]))
    return float(wall[0]) if trace.n_rows == 1 and np.isfinite(wall[0]) else None


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return float(numerator / denominator)
