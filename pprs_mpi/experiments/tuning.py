"""Tuning on the tuning pairs only: scores of every configuration per setting, the configuration kept per method,
and the growth of the grid until no kept configuration sits on its edge.

A setting is a (depth Δ, budget) of the protocol; a depth may have several budgets. Per setting and method, the
kept configuration is the one with the lowest mean final loss over the tuning pairs within the budget (or the
fastest to reach the protocol's loss level). Grid growth: when a kept configuration has the largest or smallest
lr (or γ) its method's grid has, one more value one grid step further out is added for that method (every other
parameter of the method as before); the new configurations run on the tuning pairs and the selection is made
again, for at most `extend_rounds` rounds. Round r's runs are the phase 'extend r' of the sweep.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pprs_mpi.experiments import curves
from pprs_mpi.experiments.fig3 import attackable, configs, setting_key, settings
from pprs_mpi.experiments.runner import FINISHED, ExperimentError, NotReady
from pprs_mpi.trace import TraceError, load


def read_curves(runs_dir: Path, name: str, pairs: list[int]) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """(iteration grid, pairs × points losses, diverged runs, runs not finished) of one configuration."""
    found, diverged, unfinished = [], 0, []
    for pair in pairs:
        stem = f"{name}_pair{pair:03d}"
        try:
            trace = load(runs_dir / f"{stem}.h5")
        except TraceError:
            unfinished.append(stem)
            continue
        if trace.status not in FINISHED:
            unfinished.append(f"{stem} ({trace.status})")
            continue
        found.append(curves.loss_curve(trace))
        diverged += trace.status == "diverged"
    if unfinished or not found:
        return np.empty(0), np.empty((0, 0)), diverged, unfinished or [name]
    return *curves.curve_matrix(found), diverged, []


def within_budget(config: dict, grid: np.ndarray, losses: np.ndarray, depth: int, budget: float):
    """(pipeline times, losses[:, points]) of the part of a configuration's curves within a setting's budget."""
    time = curves.retime(grid, config["inputs"], depth)
    keep = time <= budget
    return time[keep], losses[:, keep]


def tuned(proto: dict, verdicts: dict, runs_dir: Path, rounds: int | None = None) -> dict:
    """The tuning after `rounds` growth rounds (default: all of the protocol's; it stops early once no kept
    configuration is on an edge): {grid, kept: setting → method → name, scores, pairs, rounds, extensions}.
    Raises NotReady naming the first unfinished run of the grid it needs."""
    pairs = attackable(proto["tune_pairs"], verdicts)
    if not pairs:
        raise ExperimentError("no tuning pair can be attacked (see pairs.json): choose other --tune-pairs")
    rounds = proto["extend_rounds"] if rounds is None else rounds
    extensions, cache = {}, {}
    for done in range(rounds + 1):
        grid = configs(proto, extensions)
        missing = [name for name in grid if not _read(cache, runs_dir, name, pairs)[3] == []]
        if missing:
            raise NotReady(f"tuning run(s) not finished yet (e.g. {_read(cache, runs_dir, missing[0], pairs)[3][0]})"
                           ": run the same command again once every shard's tuning is done")
        result = {"grid": grid, "pairs": pairs, "rounds": done, "extensions": extensions,
                  **_select(proto, grid, {name: cache[name] for name in grid})}
        wider = grow(proto, grid, result["kept"], extensions)
        if wider == extensions or done == rounds:
            return result
        extensions = wider
    raise AssertionError("unreachable")


def pending(proto: dict, verdicts: dict, runs_dir: Path, round_: int) -> tuple[list[str], dict]:
    """(the configurations growth round `round_` adds, to run on the tuning pairs; the grown grid holding them).
    NotReady while an earlier round's runs are unfinished."""
    before = tuned(proto, verdicts, runs_dir, round_ - 1)
    if before["rounds"] < round_ - 1:  # growth stopped earlier: nothing left on an edge
        return [], before["grid"]
    grid = configs(proto, grow(proto, before["grid"], before["kept"], before["extensions"]))
    return [name for name in grid if name not in before["grid"]], grid


def _read(cache: dict, runs_dir: Path, name: str, pairs: list[int]):
    if name not in cache:
        cache[name] = read_curves(runs_dir, name, pairs)
    return cache[name]


def _select(proto: dict, grid: dict, read: dict) -> dict:
    kept, scores = {}, {}
    for depth, budget in settings(proto):
        key, scored = setting_key(depth, budget), {}
        for name, c in grid.items():
            if "settings" in c and key not in c["settings"]:
                continue  # a preset's configuration belongs to its own setting(s) only
            iterations, losses, diverged, _ = read[name]
            time, losses = within_budget(c, iterations, losses, depth, budget)
            mean = losses.mean(axis=0)
            reach = math.inf if proto["select"] == "final" else (
                curves.time_to_reach(time, mean, float(proto["select"])) or math.inf)
            scored[name] = {"final": float(mean[-1]), "reach": reach, "diverged": diverged}
        for method in dict.fromkeys(c["method"] for c in grid.values()):
            mine = {n: s for n, s in scored.items() if grid[n]["method"] == method and math.isfinite(s["final"])}
            if mine:
                kept.setdefault(key, {})[method] = min(mine, key=lambda n: (mine[n]["reach"], mine[n]["final"]))
        scores[key] = scored
    return {"kept": kept, "scores": scores}


def edges(grid: dict, config: dict) -> list[str]:
    """The edges of its method's grid a configuration sits on: e.g. ['lr max', 'γ min'] (a one-value axis has
    none)."""
    found = []
    if config.get("preset"):
        return found  # untuned: nothing to grow
    for axis, label in (("lr", "lr"), ("gamma", "γ")):
        values = sorted({c[axis] for c in grid.values() if c["method"] == config["method"]})
        if len(values) > 1:
            found += [f"{label} {side}" for side, value in (("min", values[0]), ("max", values[-1]))
                      if config[axis] == value]
    return found


def grow(proto: dict, grid: dict, kept: dict, extensions: dict) -> dict:
    """The extensions with one more value beyond every edge a kept configuration sits on: method →
    {'lr': (...), 'gamma': (...)} of values added to the method's grid."""
    wider = {method: {axis: tuple(values) for axis, values in ext.items()} for method, ext in extensions.items()}
    for per_method in kept.values():
        for method, name in per_method.items():
            for edge in edges(grid, grid[name]):
                label, side = edge.split()
                axis = "lr" if label == "lr" else "gamma"
                values = sorted({c[axis] for c in grid.values() if c["method"] == method})
                step = values[1] / values[0] if side == "min" else values[-1] / values[-2]
                new = float(f"{(values[0] / step if side == 'min' else values[-1] * step):.2g}")
                mine = wider.setdefault(method, {})
                mine[axis] = tuple(sorted(set(mine.get(axis, ())) | {new}))
    return wider
