"""Summaries and comparisons of run traces: `python -m pprs_mpi.report RUN.h5 [RUN2.h5 ...]`.

Every figure printed says what it is: which column is the objective, how the targets were chosen,
final against best f (and f − f* where the trace knows f*), and the layout that sets how much
pipeline time an iteration counts. Output lines fit in 100 columns.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap

from pprs_mpi.analysis import (DEFAULT_GAP_FRACTIONS, default_targets, every_text, settings_text, short_number,
                               summarize, target_basis)
from pprs_mpi.layout import MESSAGE_S

WIDTH = 100  # columns of every line of text output
PLANNER_OFF = 2.0  # a measured pass this many times the planner's prediction (or less than 1/this) gets a hint
FINAL_ABOVE_BEST = ("with a constant step η and smoothing γ the iterates do not settle at the minimum: f(y_t) "
                    "keeps moving in a band whose width grows with η and γ√d (lower them to narrow it, or let them "
                    "decay: --lr-schedule, --gamma-schedule)")
FINAL_ABOVE_BEST_SCHEDULED = ("the iterates are still moving: f(y_t) keeps moving in a band whose width grows with "
                              "η_t and γ_t√d, which the schedules narrow as t grows")


def targets_rule(basis: tuple[float, float] | None, given: bool, n_runs: int) -> str:
    """How the targets were chosen; `basis` is (first f, best f) that the default ones come from."""
    if given:
        return "given with --targets"
    if basis is None:
        return "none: f never went below its first value (give some with --targets 0.1,0.05)"
    fractions = " / ".join(f"{100 * f:g}%" for f in DEFAULT_GAP_FRACTIONS)
    scope = "" if n_runs == 1 else " (highest first f and lowest best f of all runs)"
    return (f"best + {fractions} of the gap between first f {_num(basis[0])} and best f {_num(basis[1])}{scope}; "
            f"choose others with --targets 0.1,0.05")


def format_summary(s: dict, rule: str) -> str:
    """The text report of one run; `rule` says how its targets were chosen."""
    sim = f" (simulated Δ={s['simulated_depth']})" if s["simulated_depth"] is not None else ""
    star = "f* unknown (not in the trace)" if s["f_star"] is None else f"f* = {_num(s['f_star'])}"
    lines = [
        ("run", f"{s['run']}  [{s['status']}]"),
        ("problem", f"{s['problem']}, {star}"),
        ("algorithm", settings_text(s)),
        ("layout", f"{s['engine'] or '-'} engine, {_count(s['stages'], 'stage')} {_nodes(s['stage_nodes'])}, "
                   f"{_count(s['ranks'], 'rank')}, {s['schedule'] or '-'}, M={_num(s['n_microbatches'])} "
                   f"microbatches, depth Δ={_num(s['depth'])}{sim}, device {s['device'] or '-'}"),
        *([("", f"microbatch size {s['microbatch_choice']}")] if s["microbatch_choice"] else []),
        ("", f"pipeline time counts {_num(s['makespan'])} units per iteration (one unit: one forward or "
             f"backward of one node on one microbatch; one node per stage would count 2(M + Δ − 1) = "
             f"{_num(s['one_node_per_stage_makespan'])})"),
        ("iterations", f"{s['rows']} rows, last iteration {_num(s['last_iteration'])}"),
        ("f", f"f(y_t), evaluated {every_text(s['eval_every'])} and at the end (f_eval)"
              if s["f_source"] == "f_eval" else
              "mean of the K sample values f(x_t + γX_k) (f_smoothed; this trace has no f(y_t))"),
        ("  final", f"{_num(s['f_final'])} at iteration {_num(s['final_iteration'])}{_gap(s['gap_final'])}"),
        ("  best", f"{_num(s['f_best'])} at iteration {_num(s['best_iteration'])}{_gap(s['gap_best'])}"),
    ]
    lines += _anytime_lines(s)
    if s["f_best"] is not None and s["f_final"] > s["f_best"]:
        constant = {s["gamma_schedule"], s["lr_schedule"]} <= {None, "constant"}
        why = FINAL_ABOVE_BEST if constant else FINAL_ABOVE_BEST_SCHEDULED
        lines.append(("", f"final above best by {_num(s['f_final'] - s['f_best'])}: {why}"))
    lines += [("time", f"pipeline {_num(s['pipeline_time'])} units, wall {_num(s['wall_time'])} s"),
              ("targets", rule)]
    for t in s["targets"]:
        lines.append((f"  f ≤ {_num(t['target'])}", "not reached" if t["iteration"] is None else
                      f"pipeline {_num(t['pipeline_time'])} units, wall {_num(t['wall_time'])} s "
                      f"(iteration {t['iteration']})"))
    unit = "stage" if s["engine"] == "serial" else "rank"  # the serial engine runs every stage in one process
    sampled = s.get("timeline_ranks")
    if sampled is not None and s["stages"] and len(sampled) < s["stages"]:
        lines.append(("timeline", f"detailed for {len(sampled)} of {s['stages']} {unit}s "
                                  f"({_sample(sampled)}); fractions and unit cost from every {unit}'s summary"))
    for i, r in enumerate(s["rank_fractions"]):
        lines.append((f"per {unit}" if i == 0 else "", f"{unit} {r['rank']}: compute {_pct(r['compute'])}, "
                                                       f"wait {_pct(r['wait'])}"))
    for i, r in enumerate(s["rank_memory"]):
        lines.append(("memory" if i == 0 else "", f"{unit} {r['rank']}: ≤ {r['peak_stash']} kept (node, microbatch) "
                                                  f"inputs, buffers {_bytes(r['buffer_bytes'])}, "
                                                  f"sends pending ≤ {_bytes(r['peak_send_bytes'])}"))
    if s["unit_cost"] is not None:
        lines.append(("efficiency", f"pipeline {_pct(s['pipeline_efficiency'])} = makespan {_num(s['makespan'])} "
                                    f"× unit {_seconds(s['unit_cost'])} / iteration {_seconds(s['iteration_time'])}"))
        lines.append(("", f"end to end {_pct(s['end_to_end_efficiency'])} "
                          f"(wall {_seconds(s['wall_per_iteration'])} per iteration)"))
    lines += _planner_lines(s)
    width = max(len(key) for key, _ in lines)
    return "\n".join(_wrapped(key, value, width) for key, value in lines)


def _planner_lines(s: dict) -> list[tuple[str, str]]:
    """The planner's predicted time per iteration next to the measured one (the timeline's pass), so that its
    choice is read with the model's error on this machine. Where it weighed a pipeline's candidates by the declared
    costs and is off by PLANNER_OFF or more, what the trace says of why: the busiest rank computed for longer than
    the whole predicted pass (the nodes cost more than declared: time them), or it did not, and the rest of the pass
    went to waiting (messages cost more than the model says)."""
    predicted, measured = s["predicted_iteration_time"], s["iteration_time"]
    if not predicted or not measured:
        return []
    ratio = measured / predicted
    line = f"predicted {_seconds(predicted)} per iteration, measured {_seconds(measured)} ({ratio:.2g}× the prediction)"
    if 1 / PLANNER_OFF < ratio < PLANNER_OFF or not s["declared_model_on_ranks"]:
        return [("planner", line)]
    computing = max((r["compute"] or 0.0 for r in s["rank_fractions"]), default=1.0) * measured
    if ratio > 1 and computing < predicted:
        line += (f"; its busiest rank computed {_seconds(computing)} and waited the rest: messages cost more here than "
                 f"the model's {_seconds(MESSAGE_S)} (ranks sharing cores, or a slower network), which "
                 "--microbatch-size measured times")
    else:
        line += "; the ops' declared costs are far from this machine's: --microbatch-size measured times the nodes here"
    return [("planner", line)]


def _anytime_lines(s: dict) -> list[tuple[str, str]]:
    """Which iterate the f lines report, f at the averaged iterate, the last 95% interval of f^γ(x_t), the γ_t
    and η_t schedules and the noise."""
    lines = [("  iterate", s["reported_iterate"])]
    if s["average"] != "none":
        final, optimum = s["f_avg_final"], s["f_star"]
        gap = None if optimum is None or final is None else final - optimum
        lines.append(("  averaged", f"f at the {s['average']} average {_num(final)}{_gap(gap)}"))
    if s["interval"] is not None:
        i = s["interval"]
        lines.append(("  interval", f"f^γ(x_t) in [{_num(i['low'])}, {_num(i['high'])}] (95%, from the K sample "
                                    f"values) at iteration {i['iteration']}"))
    tau, power = s["decay"]
    for label, kind, (first, last) in (("γ_t", s["gamma_schedule"], s["gamma_range"]),
                                       ("η_t", s["lr_schedule"], s["step_size_range"])):
        how = f"decay (τ={_num(tau)}, p={_num(power)})" if kind == "decay" else kind
        values = "" if first is None else (f", {_num(first)}" if first == last else f", {_num(first)} → {_num(last)}")
        lines.append(("schedule" if label == "γ_t" else "", f"{label} {how}{values}"))
    lines.append(("noise", s["noise"] + (" (X_{2j+1} = −X_{2j})" if s["noise"] == "antithetic" else "")))
    return lines


def format_table(summaries: list[dict], rule: str) -> str:
    """Several runs side by side: their settings and layout, their results, their times to the targets.

    Each part is one aligned row per run, split into column groups that fit in WIDTH columns.
    """
    names = [_abbreviated(s["name"]) for s in summaries]
    settings = [[_num(s[key]) for key in ("status", "algo", "K", "gamma", "lr", "mu", "schedule")]
                + [_num(s["depth"]) + (f" (sim {s['simulated_depth']})" if s["simulated_depth"] is not None else ""),
                   _num(s["engine"]), _num(s["stages"]), _num(s["makespan"])] for s in summaries]
    results = [[s["f_source"], _num(s["f_final"]), f"{_num(s['f_best'])} (it {_num(s['best_iteration'])})",
                _num(s["gap_final"]), _num(s["pipeline_time"]), _num(s["wall_time"]),
                _pct(s["pipeline_efficiency"]), _pct(s["end_to_end_efficiency"])] for s in summaries]
    reached = [[_reached(t) for t in s["targets"]] for s in summaries]
    parts = [
        _grid(["run", "status", "algo", "K", "γ", "lr", "μ", "schedule", "Δ", "engine", "stages", "units/it"],
              names, settings),
        _grid(["run", "f", "final f", "best f", "final f−f*", "pipeline", "wall s", "pipe eff", "e2e eff"],
              names, results),
    ]
    if summaries[0]["targets"]:
        parts.append(_grid(["run", *(f"f ≤ {_num(t['target'])}" for t in summaries[0]["targets"])], names, reached))
    notes = ["units/it: pipeline time units per iteration, set by the layout (stages, nodes per stage); "
             "pipeline times of runs with different units/it differ for the same iterates",
             f"targets: {rule}; each cell: pipeline units / wall s to reach it"]
    return "\n\n".join(parts + ["\n".join(textwrap.fill(note, WIDTH, subsequent_indent="  ") for note in notes)])


def render(traces: list, targets: list[float] | None, as_json: bool) -> tuple[str, list[dict]]:
    """(the text or JSON to print, the summaries) of these traces; targets None: the defaults."""
    chosen = targets if targets is not None else default_targets(traces)
    summaries = [summarize(trace, chosen) for trace in traces]
    rule = targets_rule(target_basis(traces), given=targets is not None, n_runs=len(traces))
    if as_json:
        return json.dumps(_plain([{**s, "targets_rule": rule} for s in summaries]), indent=2), summaries
    if len(summaries) == 1:
        return format_summary(summaries[0], rule), summaries
    return format_table(summaries, rule), summaries


def _sample(ranks: list[int]) -> str:
    """'0, 33, 66, ..., 1023' for a long list of ranks."""
    return ", ".join(map(str, ranks)) if len(ranks) <= 6 else f"{ranks[0]}, {ranks[1]}, {ranks[2]}, ..., {ranks[-1]}"


def _count(n, word: str) -> str:
    """'1 rank', '4 ranks' ('-' when unknown)."""
    return f"{_num(n)} {word}{'s' * (n != 1)}" if n is not None else f"- {word}s"


def _grid(header: list[str], names: list[str], rows: list[list[str]]) -> str:
    """An aligned table whose first column is the run name, split into column groups of at most WIDTH
    columns (each group repeats the run names)."""
    columns = list(zip(header, *[[name, *row] for name, row in zip(names, rows)]))
    widths = [max(len(cell) for cell in column) for column in columns]
    groups, group = [], []
    for i in range(1, len(columns)):
        if group and widths[0] + sum(widths[j] + 2 for j in group) + widths[i] + 2 > WIDTH:
            groups.append(group)
            group = []
        group.append(i)
    groups.append(group)
    blocks = []
    for group in groups:
        chosen = [0, *group]
        blocks.append("\n".join("  ".join(f"{columns[j][r]:<{widths[j]}}" for j in chosen).rstrip()
                                for r in range(len(names) + 1)))
    return "\n\n".join(blocks)


def _wrapped(key: str, value: str, width: int) -> str:
    """`key  value`, the value wrapped to WIDTH columns with continuation lines under its start."""
    indent = " " * (width + 2)
    return textwrap.fill(value, WIDTH, initial_indent=f"{key:<{width}}  ", subsequent_indent=indent)


def _abbreviated(name: str, most: int = 24) -> str:
    """A run name of at most `most` characters: a long one keeps its start and end around '…'."""
    return name if len(name) <= most else name[:most // 2 - 1] + "…" + name[-(most // 2):]


def _nodes(counts: list[int]) -> str:
    if not counts:
        return ""
    if len(set(counts)) == 1:
        return f"of {counts[0]} node{'s' if counts[0] > 1 else ''}{' each' if len(counts) > 1 else ''}"
    return "of " + "+".join(map(str, counts)) + " nodes"


def _gap(value) -> str:
    return "" if value is None else f"  (f − f* = {_num(value)})"


def _reached(t: dict) -> str:
    return "not reached" if t["iteration"] is None else f"{_num(t['pipeline_time'])} / {_num(t['wall_time'])}"


_num = short_number


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


if __name__ == "__main__":  # python -m pprs_mpi.report: the command line in pprs_mpi.cli.report
    from pprs_mpi.cli.report import main
    sys.exit(main())
