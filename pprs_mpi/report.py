"""Summaries and comparisons of run traces: `python -m pprs_mpi.report RUN.h5 [RUN2.h5 ...]`.

The objective is f_eval (f(y_t), evaluated every `eval_every` iterations) where the trace has any,
else f_smoothed (mean of the K sample values); every summary says which. Timeline figures cover
the gradient pipeline only: the records of evaluation passes (microbatch M) are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from pprs_mpi.trace import PHASES, Trace, TraceError, abandoned, load

FORWARD, BACKWARD, WAIT = (PHASES.index(p) for p in ("forward", "backward", "wait"))
DEFAULT_GAP_FRACTIONS = (1e-1, 1e-2, 1e-3)


def setting(trace: Trace, key: str):
    """A run setting: the root attribute if the writer stored one, else the configuration's value."""
    return trace.attrs[key] if key in trace.attrs else trace.config.get(key)


def objective(trace: Trace) -> tuple[str, np.ndarray]:
    """(column name, row indices) of the objective: the rows where f_eval was computed, else all rows."""
    evaluated = np.flatnonzero(np.isfinite(trace.columns["f_eval"]))
    if evaluated.size:
        return "f_eval", evaluated
    return "f_smoothed", np.arange(trace.n_rows)


def default_targets(traces: list[Trace]) -> list[float]:
    """Targets common to all runs: the best f found plus 10%, 1% and 0.1% of the gap from the worst start."""
    starts, bests = [], []
    for trace in traces:
        name, rows = objective(trace)
        values = trace.columns[name][rows]
        values = values[np.isfinite(values)]
        if values.size:
            starts.append(values[0])
            bests.append(values.min())
    if not starts or max(starts) <= min(bests):
        return []
    low, gap = min(bests), max(starts) - min(bests)
    return [float(low + fraction * gap) for fraction in DEFAULT_GAP_FRACTIONS]


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
        M = -(-int(trace.config["K"]) // int(trace.config.get("microbatch_size") or 1))
    return None if M is None else int(M)


def depth(trace: Trace) -> int | None:
    """Δ: the writer's attribute, else the stored graph's."""
    value = setting(trace, "depth")
    if value is None and trace.graph is not None:
        value = trace.graph["depth"]
    return None if value is None else int(value)


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


def rank_memory(trace: Trace) -> list[dict]:
    """Per rank, the most (node, microbatch) inputs it kept at once for a backward, the bytes of its MPI
    message buffers and the most bytes of its pending sends (empty for traces without these figures)."""
    keys = ("peak_stash", "buffer_bytes", "peak_send_bytes")
    columns = [trace.attrs.get(f"rank_{key}") for key in keys]
    if any(column is None for column in columns):
        return []
    return [{"rank": rank, **{key: int(value) for key, value in zip(keys, values)}}
            for rank, values in enumerate(zip(*map(np.atleast_1d, columns)))]


def efficiency(trace: Trace, records: np.ndarray | None) -> dict:
    """Ideal makespan × measured unit cost, over the measured time of an iteration.

    The makespan is the writer's 'makespan' attribute, else 2(M + Δ − 1); the unit cost is the mean
    forward/backward record (the mean, not the median: units slowed by contention count in the total). 'pipeline' measures an iteration by its timeline span (bubbles and
    communication) over complete iterations, 'end_to_end' by the wall time per iteration of the rows
    (optimizer, evaluations and trace included).
    """
    M, delta = n_microbatches(trace), depth(trace)
    makespan = setting(trace, "makespan")
    if makespan is None and M is not None and delta is not None:
        makespan = 2 * (M + delta - 1)
    unit = iteration_time = None
    if records is not None:
        compute = records[np.isin(records["phase"], (FORWARD, BACKWARD))]
        unit = float(np.mean(compute["end"] - compute["start"])) if compute.size else None
        complete = records[np.isin(records["iteration"], complete_iterations(records))]
        iteration_time = float(iteration_spans(complete)[1].mean())
    wall = _wall_per_iteration(trace)
    ideal = None if makespan is None or unit is None else makespan * unit
    return {"n_microbatches": M, "makespan": makespan, "unit_cost": unit, "iteration_time": iteration_time,
            "pipeline_efficiency": _ratio(ideal, iteration_time),
            "wall_per_iteration": wall, "end_to_end_efficiency": _ratio(ideal, wall)}


def summarize(trace: Trace, targets: list[float] | None = None) -> dict:
    """Everything the report prints about one run, as plain Python values (None where unknown)."""
    if targets is None:
        targets = default_targets([trace])
    name, rows = objective(trace)
    values = trace.columns[name][rows]
    finite = np.isfinite(values)
    best = int(rows[np.flatnonzero(finite)[np.argmin(values[finite])]]) if finite.any() else None
    last = trace.n_rows - 1
    records = pipeline_records(trace)
    return {
        "run": trace.path, "name": Path(trace.path).stem, "status": "abandoned" if abandoned(trace) else trace.status,
        **{key: setting(trace, key) for key in ("problem", "algo", "K", "gamma", "lr", "mu", "schedule",
                                                "simulated_depth", "ranks", "device", "engine", "mpi_library")},
        "depth": depth(trace), "rows": trace.n_rows,
        "last_iteration": int(trace.columns["iteration"][last]) if trace.n_rows else None,
        "f_source": name,
        "f_final": float(values[-1]) if values.size else None,
        "f_best": None if best is None else float(trace.columns[name][best]),
        "best_iteration": None if best is None else int(trace.columns["iteration"][best]),
        "pipeline_time": float(trace.columns["pipeline_time"][last]) if trace.n_rows else None,
        "wall_time": float(trace.columns["wall_time"][last]) if trace.n_rows else None,
        "targets": time_to_targets(trace, targets),
        "rank_fractions": [] if records is None else rank_fractions(records),
        "rank_memory": rank_memory(trace),
        **efficiency(trace, records),
    }


def format_summary(s: dict) -> str:
    """The text report of one run."""
    sim = f" (simulated Δ={s['simulated_depth']})" if s["simulated_depth"] is not None else ""
    lines = [
        ("run", f"{s['run']}  [{s['status']}]"),
        ("problem", s["problem"]),
        ("algorithm", f"{s['algo']}  K={_num(s['K'])}  gamma={_num(s['gamma'])}  lr={_num(s['lr'])}  "
                      f"mu={_num(s['mu'])}"),
        ("pipeline", f"{s['schedule'] or '-'}, depth Δ={_num(s['depth'])}{sim}, M={_num(s['n_microbatches'])}, "
                     f"{_num(s['ranks'])} ranks, device {s['device'] or '-'}, engine {s['engine'] or '-'}"),
        ("iterations", f"{s['rows']} rows, last iteration {_num(s['last_iteration'])}"),
        (f"f ({s['f_source']})", f"final {_num(s['f_final'])}, best {_num(s['f_best'])} "
                                 f"at iteration {_num(s['best_iteration'])}"),
        ("time", f"pipeline {_num(s['pipeline_time'])} units, wall {_num(s['wall_time'])} s"),
    ]
    for t in s["targets"]:
        lines.append((f"to f <= {_num(t['target'])}", "not reached" if t["iteration"] is None else
                      f"pipeline {_num(t['pipeline_time'])} units, wall {_num(t['wall_time'])} s "
                      f"(iteration {t['iteration']})"))
    for i, r in enumerate(s["rank_fractions"]):
        lines.append(("per rank" if i == 0 else "", f"rank {r['rank']}: compute {_pct(r['compute'])}, "
                                                    f"wait {_pct(r['wait'])}"))
    for i, r in enumerate(s["rank_memory"]):
        lines.append(("memory" if i == 0 else "", f"rank {r['rank']}: kept inputs of {r['peak_stash']} "
                                                  f"(node, microbatch) at most, message buffers {_bytes(r['buffer_bytes'])}, "
                                                  f"pending sends {_bytes(r['peak_send_bytes'])} at most"))
    if s["unit_cost"] is not None:
        lines.append(("efficiency", f"pipeline {_pct(s['pipeline_efficiency'])} = makespan {_num(s['makespan'])} "
                                    f"× unit {_seconds(s['unit_cost'])} / iteration {_seconds(s['iteration_time'])}"))
        lines.append(("", f"end to end {_pct(s['end_to_end_efficiency'])} "
                          f"(wall {_seconds(s['wall_per_iteration'])} per iteration)"))
    width = max(len(key) for key, _ in lines)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in lines)


def format_table(summaries: list[dict]) -> str:
    """One aligned row per run, for comparing several runs (same targets for all)."""
    header = ["run", "status", "algo", "K", "gamma", "lr", "mu", "Δ", "ranks", "f", "final f", "best f", "pipeline",
              "wall s"]
    for t in summaries[0]["targets"]:
        header += [f"pipe f<={_num(t['target'])}", f"wall f<={_num(t['target'])}"]
    header += ["pipe eff", "e2e eff"]
    rows = []
    for s in summaries:
        delta = _num(s["depth"]) + (f" (sim {s['simulated_depth']})" if s["simulated_depth"] is not None else "")
        row = [s["name"], s["status"], _num(s["algo"]), _num(s["K"]), _num(s["gamma"]), _num(s["lr"]), _num(s["mu"]),
               delta, _num(s["ranks"]), s["f_source"],
               _num(s["f_final"]), _num(s["f_best"]), _num(s["pipeline_time"]), _num(s["wall_time"])]
        for t in s["targets"]:
            row += [_num(t["pipeline_time"]), _num(t["wall_time"])]
        rows.append(row + [_pct(s["pipeline_efficiency"]), _pct(s["end_to_end_efficiency"])])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(f"{cell:<{w}}" for cell, w in zip(line, widths)).rstrip() for line in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pprs_mpi.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN.h5", help="trace files")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--targets", type=_targets, help="comma-separated values of f, e.g. 1e-1,1e-2")
    parser.add_argument("--iteration", type=int, help="iteration shown in the Gantt chart (default: last complete)")
    args = parser.parse_args(argv)
    if args.plot is not None:
        try:
            from pprs_mpi import plots
        except ImportError:
            print("--plot needs matplotlib: pip install 'pprs_mpi[plot]'", file=sys.stderr)
            return 2
    try:
        traces = [load(path) for path in args.runs]
        targets = args.targets if args.targets is not None else default_targets(traces)
        summaries = [summarize(trace, targets) for trace in traces]
        written = plots.write_all(traces, args.plot, args.iteration) if args.plot is not None else []
    except (TraceError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_plain(summaries), indent=2))
    elif len(summaries) == 1:
        print(format_summary(summaries[0]))
    else:
        print(format_table(summaries))
    for path in written:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _targets(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


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


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _seconds(value) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _bytes(value: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def _plain(value):
    """JSON-ready copy: NaN and infinities become null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
