"""The experiments: curve algebra, best-lr selection on traces with a known answer, sharding,
and tiny end-to-end runs."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import MPI_ENV, run as run_command
from pprs_mpi import optim, problems
from pprs_mpi.experiments import (curves, fig3, fig3_results, rates, reproduction, runner, screen, stats,
                                  tuning, verdict)
from pprs_mpi.experiments.__main__ import main as experiments_main
from pprs_mpi.trace import Trace, TraceWriter

PNG = b"\x89PNG\r\n\x1a\n"


def fake_trace(iters, every, f_eval_by_iteration, status="completed"):
    iteration = np.array(sorted(f_eval_by_iteration), dtype=np.int64)
    columns = {"iteration": iteration, "f_eval": np.array([f_eval_by_iteration[i] for i in iteration])}
    return Trace(path="x.h5", attrs={}, config={"iters": iters, "eval_every": every}, status=status,
                 columns=columns, graph=None, result={}, timeline=None, has_checkpoint=False)


def test_loss_curve_marks_what_a_diverged_run_never_reached_as_inf():
    rows = {0: 5.0, 1: math.nan, 2: 4.0, 3: math.nan, 4: math.nan}  # stopped at iteration 4 with f(y) NaN
    grid, values = curves.loss_curve(fake_trace(7, 2, rows, status="diverged"))
    assert grid.tolist() == [0, 2, 4, 6, 7]
    assert values.tolist() == [5.0, 4.0, math.inf, math.inf, math.inf]


def test_stack_retime_and_time_to_reach():
    grid = np.array([0, 2, 4])
    iterations, losses = curves.curve_matrix([(grid, np.array([4.0, 2.0, 1.0])),
                                              (grid, np.array([2.0, 2.0, math.inf]))])
    mean = losses.mean(axis=0)
    assert mean.tolist() == [3.0, 2.0, math.inf]
    time = curves.retime(iterations, K=10, depth=20)
    assert time.tolist() == [0, 2 * 58, 4 * 58]  # 2(K + Δ − 1) = 58 per iteration
    assert curves.time_to_reach(time, mean, 2.5) == 116 and curves.time_to_reach(time, mean, 1.0) is None
    with pytest.raises(ValueError):
        curves.curve_matrix([(grid, mean), (grid[:2], mean[:2])])


def lad_grid(**changes):
    """A small grid on the planted `lad` problem (no screening: every pair is attacked)."""
    return fig3.Grid(**{**asdict(fig3.QUICK), "tune_pairs": (0, 1), "report_pairs": (2, 3), **changes})


def test_every_run_is_done_exactly_once_across_shards_and_ranks():
    proto = fig3.protocol(fig3.DEFAULT, "adversarial", [])
    verdicts = {p: {"verdict": "attackable"} for p in range(110)}
    runs = fig3.tune_runs(proto, verdicts)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 40 * (3 * 3 * 7 * 3 + 19 + 2 * 19)  # baselines: 6 lrs per decade
    for shards in (1, 3, 7):
        for ranks in (1, 2, 4):
            done = [r.name for i in range(shards) for rank in range(ranks)
                    for r in runner.assign(runs, (i, shards), rank, ranks)]
            assert sorted(done) == sorted(names)


@pytest.mark.parametrize("text", ["3", "3/3", "-1/2", "a/b"])
def test_bad_shard_is_an_experiment_error(text):
    with pytest.raises(runner.ExperimentError):
        runner.parse_shard(text)


def test_half_decades_and_pair_ranges():
    assert fig3.half_decades(1e-3, 1e-6) == (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
    fine = fig3.per_decade(1e-3, 1e-6, 6)
    assert len(fine) == 19 and {1e-3, 1e-4, 1e-5, 1e-6} <= set(fine) and list(fine) == sorted(fine, reverse=True)
    assert fine[1] == 6.8e-4 and max(a / b for a, b in zip(fine, fine[1:])) <= 1.5
    assert fig3._pairs("0-3,7,9-10") == (0, 1, 2, 3, 7, 9, 10)


def test_the_budget_is_given_per_depth_and_never_depends_on_the_Ks():
    """The budgets are --budget's, whatever the Ks (a depth may have two); a method's iterations follow from its own
    cost per depth; an ERM over m examples pipelines K·m inputs per iteration."""
    budgets = ((20, 23_800), (200, 30_000), (200, 59_800))
    one, three = (fig3.protocol(lad_grid(Ks=Ks, budgets=budgets), "lad", []) for Ks in ((10,), (2, 10, 100)))
    assert one["budgets"] == three["budgets"] == [[20, 23_800], [200, 30_000], [200, 59_800]]
    erm = fig3.configs(fig3.protocol(lad_grid(Ks=(10,), budgets=budgets), "lad", [], examples=4))
    assert erm["pprs_K10_mu0_lr0.001_g0.001"]["iters"] == max(23_800 // 2 // 59, 59_800 // 2 // 239)
    assert erm["gd_lr0.001"]["iters"] == 23_800 // 2 // 23
    a, b = fig3.configs(one), fig3.configs(three)
    assert a["gd_lr0.001"] == b["gd_lr0.001"] and a["gd_lr0.001"]["iters"] == 23_800 // 40
    assert a["pprs_K10_mu0_lr0.001_g0.001"] == b["pprs_K10_mu0_lr0.001_g0.001"]
    assert b["pprs_K100_mu0_lr0.001_g0.001"]["iters"] == max(23_800 // 238, 59_800 // 598)


def test_evaluation_points_are_spread_over_each_depths_own_budget():
    """Every configuration is evaluated at least `eval_points` times within every depth's budget, GD at Δ = 200
    included (it got ~14 points when the spacing followed the longest depth)."""
    proto = fig3.protocol(fig3.DEFAULT, "adversarial", [])
    for c in fig3.configs(proto).values():
        evaluated = np.union1d(np.arange(0, c["iters"] + 1, c["eval_every"]), [c["iters"]])
        for depth, budget in fig3.settings(proto):
            time = curves.retime(evaluated, c["inputs"], depth)
            gaps = np.diff([*time[time <= budget], budget])
            assert gaps.max() <= budget / proto["eval_points"], (c, depth)


def test_pprs_momentum_rows_are_tuned_alike_and_the_papers_mu0_row_stays():
    grid = fig3.configs(fig3.protocol(fig3.DEFAULT, "adversarial", []))
    methods = {}
    for c in grid.values():
        methods.setdefault(c["method"], set()).add((c["mu"], c["lr"]))
    assert {mu for mu, _ in methods["PPRS K=10 μ=0"]} == {0.0}
    assert {mu for mu, _ in methods["PPRS K=10 +momentum"]} == {0.9, 0.99}
    assert {mu for mu, _ in methods["AGD"]} == {0.9, 0.99} and {mu for mu, _ in methods["GD"]} == {0.0}
    lrs = {method: {lr for _, lr in pairs} for method, pairs in methods.items()}
    assert all(found == set(fig3.half_decades(1e-3, 1e-6)) for m, found in lrs.items() if m.startswith("PPRS"))
    assert lrs["GD"] == lrs["AGD"] == set(fig3.per_decade(1e-3, 1e-6, 6))
    sizes = {method: len(pairs) * (3 if method.startswith("PPRS") else 1) for method, pairs in methods.items()}
    assert sizes["GD"] == 19 and sizes["PPRS K=10 μ=0"] == 21 and sizes["AGD"] == 38 and sizes[
        "PPRS K=10 +momentum"] == 42  # comparable numbers of configurations per row (γ: 3 values)


def test_overlapping_pairs_and_bad_grids_are_refused(tmp_path):
    for argv in (["--tune-pairs", "0-9", "--report-pairs", "9-20"], ["--pprs-mus", "1"], ["--budget", "20"],
                 ["--select", "fastest"], ["--budget", "20=100,20=100"]):
        assert experiments_main(["fig3", "--problem", "lad", "--out", str(tmp_path), *argv]) == 2


def write_synthetic_runs(out, proto, curve_of, grid=None, pairs=None):
    """Traces for every configuration of `grid` (default: the protocol's) on every pair (default: tuning and report)
    whose f(y_t) is `curve_of(name, iteration, pair)` (None: leave the run out; a NaN: the run diverges there)."""
    runner.write_protocol(out, proto)
    (out / "runs").mkdir(exist_ok=True)
    for name, c in (grid or fig3.configs(proto)).items():
        for pair in pairs or (*proto["tune_pairs"], *proto["report_pairs"]):
            if curve_of(name, 0, pair) is None:
                continue
            values = [curve_of(name, t, pair) for t in range(c["iters"] + 1)]
            last = next((t for t, v in enumerate(values) if math.isnan(v)), c["iters"])
            with TraceWriter(out / "runs" / f"{name}_pair{pair:03d}.h5", {"iters": c["iters"],
                                                                          "eval_every": c["eval_every"]}, {}) as w:
                for t in range(last + 1):
                    evaluated = t % c["eval_every"] == 0 or t == c["iters"]  # as the solver: every e and at the end
                    w.append(iteration=t, f_eval=values[t] if evaluated else math.nan)
                w.close("diverged" if last < c["iters"] else "completed")


def test_selection_is_on_tuning_pairs_and_the_table_on_report_pairs_only(tmp_path):
    """GD lr 1e-3 is the better one on the tuning pairs (0, 1) but the worse one on the report pairs (2, 3): it is
    kept, and its reported loss is the mean over pairs 2 and 3 alone. The budget decides per depth (AGD); a
    configuration that diverges on one tuning pair is never kept (PPRS K=2 μ=0 lr 1e-3)."""
    proto = fig3.protocol(lad_grid(Ks=(2,), gammas=(1e-3,), budgets=((20, 2_000), (200, 8_000))), "lad", [])
    tune = set(proto["tune_pairs"])

    def curve(name, t, pair):
        if name == "gd_lr0.001":
            return 10 - t / 10 if pair in tune else 20 + pair
        if name == "gd_lr0.0001":
            return 10 - t / 20 if pair in tune else 1 + pair
        if name == "agd_mu0.99_lr0.001":
            return 5.0 if t else 10.0
        if name == "agd_mu0.99_lr0.0001":
            return 10.0 if t < 30 else 1.0
        if name == "pprs_K2_mu0_lr0.001_g0.001":
            return math.nan if (pair, t) == (1, 3) else 0.0 + (t == 0) * 10
        return 10 - t / 100
    write_synthetic_runs(tmp_path, proto, curve)
    verdicts = {p: {"verdict": "attackable"} for p in range(4)}
    kept = fig3_results.selection(proto, verdicts, tmp_path / "runs")
    assert kept["20:2000"]["GD"] == kept["200:8000"]["GD"] == "gd_lr0.001"
    assert kept["20:2000"]["AGD"] == "agd_mu0.99_lr0.0001"  # 50 iterations within budget at Δ = 20
    assert kept["200:8000"]["AGD"] == "agd_mu0.99_lr0.001"  # 20 at Δ = 200
    assert kept["20:2000"]["PPRS K=2 μ=0"] == "pprs_K2_mu0_lr0.0001_g0.001"
    report = fig3.report_runs(proto, verdicts, tmp_path)
    assert {r.options["problem_seed"] for r in report} == {2, 3}
    assert fig3_results.collect(tmp_path, levels=(1.5,)) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {(r["depth"], r["method"]): r for r in table["rows"]}
    assert rows[20, "GD"]["final_loss"] == 20 + 2.5 and rows[20, "GD"]["pairs"] == 2
    assert rows[20, "PPRS K=2 μ=0"]["tune_diverged"] == 1
    assert rows[20, "AGD"]["times"] == [30 * 40]  # loss 1 from iteration 30 on, 2Δ = 40 units per iteration
    found = {(c["depth"], c["method"], c["against"]): c for c in table["comparisons"]}
    assert found[20, "PPRS K=2 μ=0", "GD"]["lower"] == 2  # ends near 9.5 on both report pairs, GD at 22 and 23
    with h5py.File(tmp_path / "summary.h5") as f:
        assert f["20_2000/GD/pair_loss"].shape[0] == 2


def test_report_pairs_cannot_change_any_choice(tmp_path):
    """Two sweeps with the same tuning runs and opposite report runs: every kept configuration, every family's
    representative K, the best baseline and which comparison is the main one are the same; only the report
    numbers differ. On the tuning pairs K=10 beats K=2 and AGD beats GD; on report pairs B the reverse holds."""
    proto = fig3.protocol(lad_grid(Ks=(2, 10), gammas=(1e-3,), budgets=((20, 2_000), (200, 8_000))), "lad", [])
    tune = set(proto["tune_pairs"])
    rank = {"pprs_K10": 1.0, "agd": 2.0, "pprs_K2": 3.0, "gd": 4.0}  # lower is better on the tuning pairs

    def tuning_curve(name, t):
        own = next(v for k, v in rank.items() if name.startswith(k)) + (0.1 if "lr0.0001" in name else 0.0)
        return own if t else 10.0  # the same final loss whatever the iterations a budget allows

    tables = {}
    for variant, report in (("A", lambda name, t, pair: tuning_curve(name, t) + pair),
                            ("B", lambda name, t, pair: 20.0 - tuning_curve(name, t) + pair)):
        out = tmp_path / variant
        write_synthetic_runs(out, proto, lambda name, t, pair: tuning_curve(name, t) if pair in tune
                             else report(name, t, pair))
        assert fig3_results.collect(out, levels=(9.0,)) == 0
        tables[variant] = json.loads((out / "table.json").read_text())
    a, b = tables["A"], tables["B"]
    assert [r["selected"] for r in a["rows"]] == [r["selected"] for r in b["rows"]]
    assert a["choices"] == b["choices"] and all(
        c["PPRS μ=0"] == ["PPRS K=10 μ=0"] and c["baseline"] == ["AGD"] for c in a["choices"])
    pick = [(c["method"], c["against"], c["main"]) for c in a["comparisons"]]
    assert pick == [(c["method"], c["against"], c["main"]) for c in b["comparisons"]]
    assert [c for c in pick if c[2]] == [("PPRS K=10 μ=0", "AGD", True)] * 2  # one main comparison per depth
    assert [r["final_loss"] for r in a["rows"]] != [r["final_loss"] for r in b["rows"]]
    main = {v: next(c for c in t["comparisons"] if c["main"]) for v, t in tables.items()}
    assert main["A"]["median"] < 0 < main["B"]["median"]


def test_verdict_statistics_and_choices_read_only_tuning_losses():
    """The sign test is exact (5 of 5 lower: p = 2/32); Holm multiplies the smallest p by the count; choices
    ignore the report pairs entirely: shuffling every row's pair_finals (and final_loss) leaves them unchanged."""
    assert stats.sign_test([-1, -2, -3, -4, -5]) == pytest.approx(2 / 32)
    assert stats.sign_test([-1, 1, 0]) == 1.0 and stats.sign_test([]) == 1.0
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    found = stats.compare([1.0, 2.0, 3.0, 10.0], [2.0, 3.0, 4.0, 0.0])
    assert (found["lower"], found["higher"], found["median"], found["mean"]) == (3, 1, -1.0, 1.75)
    rng = np.random.default_rng(0)
    rows = [{"depth": 20, "budget": B, "method": m, "selected": m, "tune_final": t,
             "pair_finals": list(rng.normal(size=12)), "final_loss": 0.0}
            for B in (100, 200) for m, t in (("PPRS K=2 μ=0", 2.0), ("PPRS K=10 μ=0", 1.0), ("PPRS K=2 +momentum", 5.0),
                                             ("GD", 3.0), ("AGD", 4.0))]
    chosen = verdict.choices(rows)
    for row in rows:
        row["pair_finals"] = list(rng.permutation(row["pair_finals"]) - 100 * (row["method"] == "PPRS K=2 μ=0"))
    assert verdict.choices(rows) == chosen == {
        (20, B): {"PPRS μ=0": ["PPRS K=10 μ=0"], "PPRS +momentum": ["PPRS K=2 +momentum"], "baseline": ["GD"]}
        for B in (100, 200)}
    mains = [c for c in verdict.comparisons(rows) if c["main"]]
    assert [(c["budget"], c["method"], c["against"]) for c in mains] == [(200, "PPRS K=10 μ=0", "GD")]


@pytest.mark.parametrize("names", [("GPipe", "GPipe+momentum"), ("GPipe+momentum", "GPipe")])
def test_a_tie_on_the_tuning_pairs_goes_against_the_method_under_test(names):
    """Two baselines tie exactly on the tuning score (the ERM run's GPipe and GPipe+momentum did). PPRS is lower than
    the weak one on all 12 pairs and higher than the strong one on all 12: the main comparison is the one against the
    strong baseline ('higher', p = 2/4096), the other named as tied, whichever name sorts first."""
    weak, strong = names
    rows = [{"depth": 20, "budget": 100, "method": m, "selected": m, "tune_final": 0.0, "tune_reach": 50.0,
             "pair_finals": finals, "final_loss": 0.0}
            for m, finals in (("PPRS K=2 μ=0", [1.0] * 12), (weak, [2.0] * 12), (strong, [0.5] * 12))]
    assert verdict.choices(rows)[(20, 100)]["baseline"] == [weak, strong]
    main = next(c for c in verdict.comparisons(rows) if c["main"])
    assert (main["against"], main["outcome"], main["sign_p"]) == (strong, "higher", pytest.approx(2 / 2**12))
    assert main["tied_with"] == [f"PPRS K=2 μ=0 vs {weak}"]


def test_the_grid_grows_past_every_edge_a_kept_configuration_sits_on(tmp_path):
    """Every method does best at lr 1e-2 but the grid is {1e-3, 1e-4}: round 1 adds 1e-2 (one grid step up),
    round 2 adds 1e-1, which is worse, so growth stops with nothing kept on an edge; the report phase then
    runs the grown grid's choices."""
    proto = fig3.protocol(lad_grid(extend_rounds=3, budgets=((20, 2_000),)), "lad", [])
    verdicts = {p: {"verdict": "attackable"} for p in range(4)}

    def curve(name, t, pair):
        lr = float(name.split("_lr")[1].split("_")[0])
        return 10.0 - t / 100 * (5.0 - abs(math.log10(lr) + 2))

    write_synthetic_runs(tmp_path, proto, curve, pairs=proto["tune_pairs"])
    for round_, added in ((1, 0.01), (2, 0.1)):
        runs = fig3.extend_runs(proto, verdicts, tmp_path, round_)
        assert runs and {r.options["lr"] for r in runs} == {added}
        for run in runs:  # as the solver would write them
            name, pair = run.name.rsplit("_pair", 1)
            config = {"iters": run.options["iters"], "eval_every": run.options["eval_every"]}
            write_synthetic_runs(tmp_path, proto, curve, {name: config}, pairs=[int(pair)])
    assert fig3.extend_runs(proto, verdicts, tmp_path, 3) == []
    final = tuning.tuned(proto, verdicts, tmp_path / "runs")
    assert final["rounds"] == 2 and all("_lr0.01" in name for name in final["kept"]["20:2000"].values())
    assert not any(tuning.edges(final["grid"], final["grid"][n]) for n in final["kept"]["20:2000"].values())
    assert {r.options["lr"] for r in fig3.report_runs(proto, verdicts, tmp_path)} == {0.01}


def test_fig3_figure_draws_the_95_percent_bootstrap_band_of_every_curve():
    """One band per kept curve, spanning the 2.5% and 97.5% percentiles of the resampled mean curves (the README
    promises them)."""
    pytest.importorskip("matplotlib")
    from pprs_mpi.experiments.figures import fig3_figure
    losses = np.array([[9.0, 5.0, 4.0], [8.0, 6.0, 2.0], [10.0, 7.0, 3.0]])
    curve = {"algo": "gd", "K": 1, "mu": 0.0, "lr": 1e-3, "gamma": 0.0, "time": np.array([0.0, 40.0, 80.0]),
             "loss": losses.mean(axis=0), "losses": losses, "bootstrap": curves.bootstrap_means(losses, 200)}
    results = {"20:100": {"depth": 20, "budget": 100, "selected": {"GD": curve}}}
    proto = {"problem": "lad", "tune_pairs": [0], "report_pairs": [1, 2, 3], "examples": 1}
    fig = fig3_figure(results, proto, {"pair_counts": {"report": {"attackable": 3}}})
    (band,) = fig.axes[0].collections
    low, high = np.quantile(curve["bootstrap"], [0.025, 0.975], axis=0)
    y = band.get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx(low.min()) and y.max() == pytest.approx(high.max())
    assert low[1] < curve["loss"][1] < high[1]


def test_select_a_level_keeps_the_fastest_to_reach_it(tmp_path):
    """AGD lr 1e-3 reaches 5 at once and stays there; lr 1e-4 reaches 1 at iteration 30. The lowest final loss
    keeps lr 1e-4; the fastest to ≤ 5 keeps lr 1e-3; to ≤ 2 only lr 1e-4 gets there."""
    curve = {"agd_mu0.99_lr0.001": lambda t: 5.0 if t else 10.0,
             "agd_mu0.99_lr0.0001": lambda t: 10.0 if t < 30 else 1.0}
    verdicts = {p: {"verdict": "attackable"} for p in range(4)}
    kept = {}
    for rule in ("final", "5", "2"):
        proto = fig3.protocol(lad_grid(select=rule, budgets=((20, 2_000),)), "lad", [])
        out = tmp_path / rule
        write_synthetic_runs(out, proto, lambda name, t, pair: curve.get(name, lambda t: 10.0)(t))
        kept[rule] = fig3_results.selection(proto, verdicts, out / "runs")["20:2000"]["AGD"]
    assert kept == {"final": "agd_mu0.99_lr0.0001", "5": "agd_mu0.99_lr0.001", "2": "agd_mu0.99_lr0.0001"}


def test_unfinished_tuning_stops_the_report_phase_and_collect(tmp_path):
    proto = fig3.protocol(lad_grid(), "lad", [])
    write_synthetic_runs(tmp_path, proto, lambda name, t, pair: None if name == "gd_lr0.001" and pair == 1 else 1.0)
    verdicts = {p: {"verdict": "attackable"} for p in range(4)}
    with pytest.raises(runner.NotReady, match="gd_lr0.001_pair001"):
        fig3.report_runs(proto, verdicts, tmp_path)
    with pytest.raises(runner.ExperimentError, match="tuning run"):
        fig3_results.collect(tmp_path)


def test_bootstrap_means_equal_explicit_resampling_and_keep_divergence():
    losses = np.array([[3.0, 2.0, 1.0], [5.0, 4.0, np.inf], [4.0, 1.0, 0.0]])
    means = curves.bootstrap_means(losses, resamples=200, seed=3)
    counts = np.random.default_rng(3).multinomial(3, np.full(3, 1 / 3), size=200)
    for row, count in zip(means, counts):
        drawn = np.repeat(losses, count, axis=0)
        np.testing.assert_allclose(row, drawn.mean(axis=0))
    times = curves.first_times(np.array([0, 10, 20]), means, 2.5)
    assert set(times) <= {10.0, 20.0, np.inf}
    assert curves.interval(np.array([1.0, 2.0, np.inf, 3.0]), 0.5) == (1.0, np.inf)


@pytest.mark.skipif("adversarial" not in problems.registry(), reason="problem 'adversarial' not available")
def test_screen_finds_stationary_images_by_the_solvers_gradient():
    """Pair 7 of the digits network has ‖∇margin(x)‖₁ ≈ 155 < λ = 300 (nothing to attack); pair 0 ≈ 563.
    The solver's gradient is checked against central differences of the margin (λ = 0) at x, along every
    pixel where the two one-sided slopes agree (not at a kink: ReLU or max-pool ties on blank pixels)."""
    from reference import evaluate
    found = screen.screen_pair("adversarial", {"image_index": 7, "target": -1}, 300.0)
    assert found["verdict"] == "stationary" and found["grad_l1"] < 300 < screen.screen_pair(
        "adversarial", {"image_index": 0, "target": -1}, 300.0)["grad_l1"]
    assert screen.screen_pair("adversarial", {"image_index": 7, "target": -1}, 100.0)["verdict"] == "attackable"
    lam0 = problems.build("adversarial", image_index=7, lam=0.0)
    margin, gradient = screen.margin_gradient("adversarial", {"image_index": 7, "target": -1})
    def f(theta):
        return float(evaluate(lam0.graph, theta[None])[lam0.graph.leaf][0])
    h, x = 1e-6, lam0.x0
    right = np.array([(f(x + h * e) - f(x)) / h for e in np.eye(x.size)])
    left = np.array([(f(x) - f(x - h * e)) / h for e in np.eye(x.size)])
    smooth = np.abs(right - left) < 1e-4
    assert smooth.sum() >= 32 and f(x) == pytest.approx(margin) == pytest.approx(found["margin"])
    np.testing.assert_allclose(gradient[smooth], ((right + left) / 2)[smooth], rtol=1e-5, atol=1e-6)
    assert np.abs(gradient).sum() == found["grad_l1"]


@pytest.mark.skipif("adversarial" not in problems.registry(), reason="problem 'adversarial' not available")
def test_quick_mode_runs_the_whole_path_and_writes_the_reproduction_document(tmp_path, capsys):
    """--quick: screening, tuning, report runs, table, figure, summary; a second call skips everything; the
    reproduction document is written from the folder. Unattackable pairs (7) are counted and never run."""
    pytest.importorskip("matplotlib")
    out, docs = tmp_path / "fig3", tmp_path / "docs"
    argv = ["fig3", "--quick", "--report-pairs", "2,3,7", "--out", str(out)]
    assert experiments_main(argv) == 0
    printed = capsys.readouterr().out
    assert "fig3 tune: 1/" in printed and "ETA" in printed and "fig3 report:" in printed
    table = json.loads((out / "table.json").read_text())
    assert table["pair_counts"]["report"] == {"attackable": 2, "stationary": 1, "target reached": 0}
    assert not list((out / "runs").glob("*_pair007.h5"))
    run_pairs = {int(path.stem[-3:]) for path in (out / "runs").glob("*.h5")}
    assert run_pairs == {0, 1, 2, 3}
    methods = {r["method"] for r in table["rows"] if r["selected"]}
    assert {"PPRS K=2 μ=0", "PPRS K=2 +momentum", "PPRS K=10 +momentum", "GD", "AGD"} <= methods
    assert all(r["mu"] > 0 for r in table["rows"] if r["selected"] and r["method"].endswith("+momentum"))
    for row in (r for r in table["rows"] if r["selected"]):  # the reported numbers are the report pairs' means
        with h5py.File(out / "summary.h5") as f:
            group = f"{row['depth']}_{row['budget']}/{row['method'].replace(' ', '_').replace('=', '')}"
            pair_loss = f[f"{group}/pair_loss"][()]
        assert pair_loss.shape[0] == 2 and row["final_loss"] == pytest.approx(pair_loss[:, -1].mean())
    assert (out / "fig3.png").read_bytes()[:8] == PNG
    assert experiments_main(argv) == 0
    assert "already finished, skipped" in capsys.readouterr().out
    earlier = Path(__file__).parents[1] / "docs" / "data" / "fig3_lam300" / "table.json"
    assert experiments_main(["reproduction", "--run", str(out), "--earlier", str(earlier), "--docs", str(docs)]) == 0
    document = (docs / "reproduction.md").read_text()
    assert "## Figure 3 at the paper's unscaled" not in document and "was not rerun" in document
    assert {p.name for p in (docs / "data" / "fig3").iterdir()} == {"summary.h5", "sessions.json", "pairs.json"}
    assert "re-judged" in document and "PPRS K=100 μ=0 vs AGD: **higher**" in document  # the earlier Δ = 200 row
    shutil.rmtree(out)  # the committed sources alone rebuild the same document
    assert experiments_main(["reproduction", "--run", str(docs / "data" / "fig3"), "--earlier", str(earlier),
                             "--docs", str(docs)]) == 0
    rebuilt = (docs / "reproduction.md").read_text()
    assert rebuilt.split("\n", 3)[3] == document.split("\n", 3)[3]  # all but the line naming the command
    sources, other = docs / "data" / "fig3", tmp_path / "docs2"
    assert experiments_main(["reproduction", "--run", str(sources), "--paper-lam", str(sources),
                             "--docs", str(other)]) == 0
    assert "## Figure 3 at the paper's unscaled λ = 300" in (other / "reproduction.md").read_text()
    assert (other / "data" / "fig3_paper_lam" / "summary.h5").exists() and (other / "fig3_paper_lam.png").exists()
    assert "held-out" in document and "fig3 --quick --report-pairs 2,3,7" in document and "nproc" in document
    assert "1 stationary" in document and (docs / "fig3.png").exists() and (docs / "fig3_table.txt").exists()


@pytest.mark.skipif("fewshot" not in problems.registry(), reason="problem 'fewshot' not available")
def test_erm_pits_pprs_against_gpipe_with_k_times_m_inputs_per_iteration(tmp_path):
    """`erm --quick` on m = 3 shots: GPipe (GD, K = 1) is charged 2(m + Δ − 1) per iteration, PPRS 2(K·m + Δ − 1);
    the configuration kept is the fastest to loss ≤ 0.01 on the tuning pairs and pairs are compared on that time."""
    pytest.importorskip("matplotlib")
    assert experiments_main(["erm", "--quick", "--shots", "3", "--out", str(tmp_path)]) == 0
    proto, table, results = fig3_results.read_summary(tmp_path / "summary.h5")
    assert proto["experiment"] == "erm" and proto["examples"] == 3 and proto["problem"] == "fewshot"
    for result in results.values():
        for method, c in result["selected"].items():
            per_iteration = 2 * (c["K"] * 3 + result["depth"] - 1)
            np.testing.assert_array_equal(c["time"], c["iteration"] * per_iteration)
            assert (method == "GPipe") == (c["algo"] == "gd" and c["K"] == 1)
    assert {c["metric"] for c in table["comparisons"]} == {"pair_times"}
    assert all(c["against"] in next(ch["baseline"] for ch in table["choices"] if ch["depth"] == c["depth"])
               for c in table["comparisons"] if c["main"])
    for row in (r for r in table["rows"] if r["selected"]):
        reached = [curves.time_to_reach(results[f"{row['depth']}:{row['budget']}"]["selected"][row["method"]]["time"],
                                        np.array(pair), 0.01) for pair in
                   results[f"{row['depth']}:{row['budget']}"]["selected"][row["method"]]["losses"]]
        assert row["pair_times"] == [math.inf if t is None else t for t in reached]


def test_closed_form_check_is_within_monte_carlo_error():
    rows = reproduction.closed_form_checks(K=4000)
    assert len(rows) == 8 and all(abs(r["z"]) < reproduction.Z_LIMIT for r in rows)
    assert {round(r["closed_form"], 4) for r in rows if r["f"] == "max(0, x)" and r["x"] == 0.05} == {0.5398}


def test_a_different_grid_into_the_same_folder_is_refused(tmp_path, capsys):
    argv = ["fig3", "--problem", "lad", "--tune-pairs", "0", "--report-pairs", "1", "--Ks", "2", "--lrs", "1e-2",
            "--gammas", "1e-2", "--pprs-mus", "0", "--agd-mus", "0.9", "--out", str(tmp_path)]
    assert experiments_main([*argv, "--budget", "20=200"]) == 0
    capsys.readouterr()
    assert experiments_main([*argv, "--budget", "20=300"]) == 2
    assert "different experiment" in capsys.readouterr().err
    assert experiments_main(["fig3", "--collect-only", "--out", str(tmp_path / "nowhere")]) == 2
    assert experiments_main(["reproduction", "--run", str(tmp_path / "nowhere")]) == 2
    assert experiments_main(["nothing"]) == 2


def test_a_signal_stops_the_sweep_and_the_same_command_continues_it(tmp_path):
    """SIGUSR1 (Slurm's warning) or SIGTERM: exit 3, finished traces kept; running again does only the rest."""
    argv = [sys.executable, "-m", "pprs_mpi.experiments", "fig3", "--problem", "lad", "--tune-pairs", "0-11",
            "--report-pairs", "12-13", "--budget", "20=800", "--Ks", "2", "--lrs", "1e-2", "--gammas", "1e-2",
            "--pprs-mus", "0", "--agd-mus", "0.9", "--out", str(tmp_path)]
    sweep = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, **MPI_ENV})
    try:
        for line in sweep.stdout:
            if " runs (" in line:  # the first progress line: a run is done, the sweep is under way
                sweep.send_signal(signal.SIGUSR1)
                break
        output = sweep.communicate(timeout=60)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 3 and "stopped by a signal" in output
    done = len(list((tmp_path / "runs").glob("*.h5")))
    assert 1 <= done < 36
    result = run_command(argv, timeout=120)
    assert result.returncode == 0 and (tmp_path / "summary.h5").exists()
    assert "runs already finished, skipped" in result.stdout
    assert len(list((tmp_path / "runs").glob("*.h5"))) == 36 + 2 * 3
    assert json.loads((tmp_path / "sessions.json").read_text())[-1]["command"].startswith(
        "python -m pprs_mpi.experiments fig3 --problem lad")


def test_rates_tiny_grid_bound_holds(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert rates.main(["--out", str(tmp_path), "--seeds", "2", "--T", "4,8", "--d", "4", "--K", "preset,1"]) == 0
    result = json.loads((tmp_path / "rates.json").read_text())
    assert len(result["rows"]) == 2 * 2 * 2 and all(row["holds"] for row in result["rows"])
    for row in result["rows"]:
        planted = rates.build(row["problem"], row["d"])
        K = optim.theorem3(planted.lipschitz, 1.0, 4, iters=row["T"]).K if row["K_rule"] == "preset" else 1
        assert row["K"] == K and row["bound"] == optim.theorem3_bound(planted.lipschitz, 1.0, 4, row["T"], K)
        assert row["seeds"] == 2 and 0 <= row["measured"] <= row["max"]
    assert "the bound holds in 8 of 8 rows" in (tmp_path / "rates.txt").read_text()
    assert (tmp_path / "rates.png").read_bytes()[:8] == PNG


@pytest.mark.mpi
def test_fig3_under_mpirun_spreads_both_phases_over_ranks(tmp_path):
    result = run_command(["mpirun", "-n", "2", sys.executable, "-m", "pprs_mpi.experiments", "fig3", "--problem", "lad",
                          "--tune-pairs", "0-1", "--report-pairs", "2-3", "--budget", "20=200", "--Ks", "2",
                          "--lrs", "1e-2", "--gammas", "1e-2", "--pprs-mus", "0", "--agd-mus", "0.9",
                          "--out", str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tune rank 0/2: 3 of 6 runs" in result.stdout and "tune rank 1/2: 3 of 6 runs" in result.stdout
    assert "report rank 1/2: 3 of 6 runs" in result.stdout
    assert len(list((tmp_path / "runs").glob("*.h5"))) == 12 and (tmp_path / "summary.h5").exists()
    assert json.loads((tmp_path / "sessions.json").read_text())[0]["command"].startswith("mpirun -n 2 python -m")


@pytest.mark.skipif("adversarial" not in problems.registry(), reason="problem 'adversarial' not available")
def test_momentum_rows_of_a_second_run_join_the_first_runs_table_without_changing_it(tmp_path):
    """`fig3 --no-baselines` runs PPRS rows only; combined.combine adds them to a finished run's table on the same
    report pairs: the first run's rows and main comparisons stay, the added rows keep their own report values and
    enter the exploratory comparisons; another run's report pairs or repeated rows are refused."""
    pytest.importorskip("matplotlib")
    from pprs_mpi.experiments import combined
    base, more, docs = tmp_path / "base", tmp_path / "more", tmp_path / "docs"
    assert experiments_main(["fig3", "--quick", "--pprs-mus", "0", "--out", str(base)]) == 0
    assert experiments_main(["fig3", "--quick", "--pprs-mus", "0.99", "--no-baselines", "--out", str(more)]) == 0
    assert {p.name.split("_")[0] for p in (more / "runs").glob("*.h5")} == {"pprs"}  # no GD, no AGD run
    first, second = fig3_results.read_summary(base / "summary.h5"), fig3_results.read_summary(more / "summary.h5")
    alone = verdict.comparisons(first[1]["rows"])
    proto, table, results = combined.combine(first, second)
    added = {r["method"] for r in second[1]["rows"]}
    assert added == {"PPRS K=2 +momentum", "PPRS K=10 +momentum"}
    assert [r for r in table["rows"] if r["method"] not in added] == first[1]["rows"]
    assert [r["method"] for r in table["rows"][:6]] == ["PPRS K=2 μ=0", "PPRS K=2 +momentum", "PPRS K=10 μ=0",
                                                        "PPRS K=10 +momentum", "GD", "AGD"]
    theirs = {(r["depth"], r["budget"], r["method"]): r["pair_finals"] for r in second[1]["rows"] if r["selected"]}
    assert theirs and all(r["pair_finals"] == theirs[(r["depth"], r["budget"], r["method"])]
                          for r in table["rows"] if r["method"] in added and r["selected"])
    main = [(c["method"], c["against"], c["sign_p"], c["outcome"]) for c in table["comparisons"] if c["main"]]
    assert main == [(c["method"], c["against"], c["sign_p"], c["outcome"]) for c in alone if c["main"]]
    momentum = [c for c in table["comparisons"] if c["method"] in added]
    assert momentum and all(c["sign_p"] == stats.compare(
        theirs[(c["depth"], c["budget"], c["method"])],
        next(r for r in table["rows"] if (r["depth"], r["budget"], r["method"]) == (c["depth"], c["budget"],
                                                                                    c["against"]))["pair_finals"]
    )["sign_p"] for c in momentum)
    assert set(results["20:1200"]["selected"]) == {r["method"] for r in table["rows"] if r["selected"]
                                                   and (r["depth"], r["budget"]) == (20, 1200)}
    with pytest.raises(runner.ExperimentError, match="repeats rows"):
        combined.combine(first, first)
    other = ({**second[0], "report_pairs": [2]}, second[1], second[2])
    with pytest.raises(runner.ExperimentError, match="other report pairs"):
        combined.combine(first, other)
    assert experiments_main(["reproduction", "--run", str(base), "--momentum", str(more), "--docs", str(docs)]) == 0
    document = (docs / "reproduction.md").read_text()
    assert "Rows added by a second run (PPRS K=2 +momentum, PPRS K=10 +momentum)" in document
    assert "PPRS +momentum against their tuning-chosen best baseline" in document
    assert (docs / "data" / "fig3_momentum" / "summary.h5").exists()
