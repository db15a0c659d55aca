"""The experiments: curve algebra, best-lr selection on traces with a known answer, sharding, and tiny end-to-end runs."""

import json
import math
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import MPI_ENV, run as run_command
from pprs_mpi import optim, problems
from pprs_mpi.experiments import curves, fig3, rates, runner
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


def test_mean_retime_within_and_time_to_reach():
    grid = np.array([0, 2, 4])
    iterations, mean = curves.mean_curve([(grid, np.array([4.0, 2.0, 1.0])), (grid, np.array([2.0, 2.0, math.inf]))])
    assert mean.tolist() == [3.0, 2.0, math.inf]
    time = curves.retime(iterations, K=10, depth=20)
    assert time.tolist() == [0, 2 * 58, 4 * 58]  # 2(K + Δ − 1) = 58 per iteration
    assert [t.tolist() for t in curves.within(time, mean, 200)] == [[0, 116], [3.0, 2.0]]
    assert curves.time_to_reach(time, mean, 2.5) == 116 and curves.time_to_reach(time, mean, 1.0) is None
    with pytest.raises(ValueError):
        curves.mean_curve([(grid, mean), (grid[:2], mean[:2])])


def test_best_is_lowest_finite_first_on_ties_none_when_all_diverged():
    assert curves.best({"a": 3.0, "b": 1.0, "c": math.inf, "d": 1.0}) == "b"
    assert curves.best({"a": math.inf, "b": math.nan}) is None


def test_every_run_is_done_exactly_once_across_shards_and_ranks():
    proto = fig3.protocol(fig3.PAPER, "adversarial", [])
    runs = fig3.runs(proto)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 100 * (5 * 5 * 3 + 2 * 5)
    for shards in (1, 3, 7):
        for ranks in (1, 2, 4):
            done = [r.name for i in range(shards) for rank in range(ranks)
                    for r in runner.assign(runs, (i, shards), rank, ranks)]
            assert sorted(done) == sorted(names)


@pytest.mark.parametrize("text", ["3", "3/3", "-1/2", "a/b"])
def test_bad_shard_is_an_experiment_error(text):
    with pytest.raises(runner.ExperimentError):
        runner.parse_shard(text)


def test_each_run_is_retimed_for_both_depths_from_one_run():
    """One run per configuration, long enough for the larger budget in iterations (the smaller Δ)."""
    proto = fig3.protocol(fig3.Grid(lrs=(1e-3,), gammas=(1e-3,), Ks=(2, 100), baseline_lrs=(1e-3,), pairs=1, iters=10),
                          "lad", [])
    assert proto["budgets"] == {"20": 10 * 2 * (100 + 19), "200": 10 * 2 * (100 + 199)}
    iters = {name: c["iters"] for name, c in fig3.configs(proto).items()}
    assert iters["gd_lr0.001"] == 2380 // 40 and iters["pprs_K100_lr0.001_g0.001"] == 10
    assert iters["pprs_K2_lr0.001_g0.001"] == max(2380 // 42, 5980 // 402)


def write_synthetic_runs(out, proto, curves_by_config, status_by_run=None):
    """Traces whose f(y_t) follows `curves_by_config[name](iteration, pair)`; None = leave the run out."""
    runner.write_protocol(out, proto)
    (out / "runs").mkdir()
    for name, c in fig3.configs(proto).items():
        for pair in range(proto["pairs"]):
            stem = f"{name}_pair{pair:03d}"
            status = (status_by_run or {}).get(stem, "completed")
            if status is None:
                continue
            last = c["iters"] if status == "completed" else 3
            with TraceWriter(out / "runs" / f"{stem}.h5", {"iters": c["iters"], "eval_every": c["eval_every"]}, {}) as w:
                for t in range(last + 1):
                    w.append(iteration=t, f_eval=curves_by_config[name](t, pair) if t % c["eval_every"] == 0 else math.nan)
                w.close(status)


def test_selection_picks_what_the_data_says(tmp_path, capsys):
    """K_max = 100 gives budgets of 59 GD iterations at Δ = 20 and 14 at Δ = 200. AGD's lr 1e-3 is fast then
    stuck at 5, lr 1e-4 slow then best (1): the budget decides, per depth. GD's better lr 1e-3 diverges on one
    pair, so 1e-4 is kept. PPRS: one pair is missing; the lowest final loss wins."""
    proto = fig3.protocol(fig3.Grid(lrs=(1e-3, 1e-4), gammas=(1e-3,), Ks=(100,), baseline_lrs=(1e-3, 1e-4),
                                    pairs=2, iters=10), "lad", [])
    shapes = {
        "agd_lr0.001": lambda t, p: 5.0 if t else 10.0,
        "agd_lr0.0001": lambda t, p: 10.0 if t < 30 else 1.0,
        "gd_lr0.001": lambda t, p: 10.0 - t / 10,
        "gd_lr0.0001": lambda t, p: 10.0 - t / 20,
        "pprs_K100_lr0.001_g0.001": lambda t, p: 10.0 - t / 4 - p,
        "pprs_K100_lr0.0001_g0.001": lambda t, p: 10.0 - t / 5,
    }
    write_synthetic_runs(tmp_path, proto, shapes, {"gd_lr0.001_pair001": "diverged",
                                                  "pprs_K100_lr0.0001_g0.001_pair001": None})
    assert fig3.collect(tmp_path) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    chosen = {(r["depth"], r["method"]): r for r in table["rows"]}
    assert chosen[20, "AGD"]["lr"] == 1e-4 and chosen[200, "AGD"]["lr"] == 1e-3
    assert chosen[20, "AGD"]["final_loss"] == 1.0 and chosen[200, "AGD"]["final_loss"] == 5.0
    assert chosen[20, "GD"]["lr"] == 1e-4 and chosen[20, "GD"]["grid_diverged"] == 1
    assert chosen[20, "PPRS K=100"]["lr"] == 1e-3
    assert chosen[20, "PPRS K=100"]["final_loss"] == pytest.approx(10 - 10 / 4 - 0.5)  # mean over pairs 0 and 1
    assert table["left_out"]["missing"] == ["pprs_K100_lr0.0001_g0.001_pair001"]
    # AGD lr 1e-4 reaches 1.0 at iteration 30, i.e. 30·2Δ time units at Δ = 20.
    assert chosen[20, "AGD"]["times"][-1] == 30 * 40
    with h5py.File(tmp_path / "summary.h5") as f:
        agd = f["depth_20/AGD"]
        assert agd.attrs["lr"] == 1e-4 and agd["pipeline_time"][-1] <= proto["budgets"]["20"]
        assert np.all(np.diff(f["depth_200/AGD/pipeline_time"][()]) == 400)
    out = capsys.readouterr().out
    assert "1/4 runs in 1/2 configs" in out and "1 missing" in out


def test_quick_like_run_on_lad_writes_summary_png_table_and_skips_done_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["--problem", "lad", "--pairs", "2", "--iters", "5", "--Ks", "2,4", "--lrs", "1e-2,1e307", "--gammas", "1e-2",
            "--baseline-lrs", "1e-2,1e-3", "--out", str(tmp_path), "--depth", "4"]
    assert fig3.main(argv) == 0
    out = capsys.readouterr().out
    assert "ETA" in out and "diverged at iteration" in out
    for name in ("summary.h5", "table.txt", "table.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "fig3.png").read_bytes()[:8] == PNG
    assert len(list((tmp_path / "runs").glob("*.h5"))) == 2 * (2 * 2 + 2 + 2)
    table = json.loads((tmp_path / "table.json").read_text())
    for depth in (20, 200):
        every = [c for c in table["all_configs"] if c["depth"] == depth]
        for row in (r for r in table["rows"] if r["depth"] == depth):
            finals = {c["name"]: c["final"] for c in every if c["method"] == row["method"]}
            assert row["selected"] == min((n for n in finals if math.isfinite(finals[n])), key=finals.get)
            assert "1e+307" not in row["selected"]
    assert fig3.main(argv) == 0
    assert "16 of 16 runs already finished, skipped" in capsys.readouterr().out
    assert fig3.main(["--collect-only", "--out", str(tmp_path), "--levels", "3,2"]) == 0
    assert json.loads((tmp_path / "table.json").read_text())["levels"] == [3.0, 2.0]


def test_a_different_grid_into_the_same_folder_is_refused(tmp_path, capsys):
    argv = ["fig3", "--problem", "lad", "--pairs", "1", "--Ks", "2", "--lrs", "1e-2", "--gammas", "1e-2",
            "--baseline-lrs", "1e-2", "--out", str(tmp_path)]
    assert experiments_main([*argv, "--iters", "2"]) == 0
    capsys.readouterr()
    assert experiments_main([*argv, "--iters", "3"]) == 2
    assert "different experiment" in capsys.readouterr().err
    assert experiments_main(["fig3", "--collect-only", "--out", str(tmp_path / "nowhere")]) == 2
    assert experiments_main(["nothing"]) == 2


def test_a_signal_stops_the_sweep_and_the_same_command_continues_it(tmp_path):
    """SIGUSR1 (Slurm's warning) or SIGTERM: exit 3, finished traces kept; running again does only the rest."""
    argv = [sys.executable, "-m", "pprs_mpi.experiments", "fig3", "--problem", "lad", "--pairs", "12", "--iters", "20",
            "--Ks", "2", "--lrs", "1e-2", "--gammas", "1e-2", "--baseline-lrs", "1e-2", "--out", str(tmp_path)]
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
    assert len(list((tmp_path / "runs").glob("*.h5"))) == 36


@pytest.mark.skipif("adversarial" not in problems.registry(), reason="problem 'adversarial' not available")
def test_fig3_on_the_adversarial_problem(tmp_path, capsys):
    argv = ["--pairs", "1", "--iters", "3", "--Ks", "2", "--lrs", "1e-3", "--gammas", "1e-3", "--baseline-lrs", "1e-3",
            "--out", str(tmp_path)]
    assert fig3.main(argv) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert {r["method"] for r in table["rows"]} == {"PPRS K=2", "GD", "AGD"}
    assert table["initial_mean_loss"] > 0


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
def test_fig3_under_mpirun_spreads_runs_over_ranks(tmp_path):
    result = run_command(["mpirun", "-n", "2", sys.executable, "-m", "pprs_mpi.experiments", "fig3", "--problem", "lad",
                          "--pairs", "2", "--iters", "3", "--Ks", "2", "--lrs", "1e-2", "--gammas", "1e-2",
                          "--baseline-lrs", "1e-2", "--out", str(tmp_path)], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rank 0/2: 3 of 6 runs" in result.stdout and "rank 1/2: 3 of 6 runs" in result.stdout
    assert len(list((tmp_path / "runs").glob("*.h5"))) == 6 and (tmp_path / "summary.h5").exists()
