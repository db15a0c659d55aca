"""The command line as a user meets it: traces it writes, presets, and one-line errors for bad input."""

import math

import numpy as np
import pytest

from conftest import solve
from pprs_mpi import optim
from pprs_mpi.problems import build
from pprs_mpi.solve import main
from pprs_mpi.trace import load


def test_trace_reads_back_with_gpipe_pipeline_time(tmp_trace):
    """K = 6 in microbatches of 4 on a depth-8 chain: 2(⌈6/4⌉ + 8 − 1) = 18 time units per iteration."""
    out = tmp_trace()
    assert main(["--problem", "lad", "--depth", "8", "--algo", "pprs", "-K", "6", "--microbatch-size", "4",
                 "--iters", "5", "--eval-every", "1", "--quiet", "--out", out]) == 0
    trace = load(out)
    assert trace.status == "completed" and trace.attrs["depth"] == 8 and trace.attrs["makespan"] == 18
    assert list(trace.columns["iteration"]) == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(np.diff(trace.columns["pipeline_time"]), np.full(5, 18.0))
    assert trace.config["K"] == 6 and trace.config["problem_params"]["depth"] == 8
    assert trace.result["y"].shape == (16,) and len(trace.timeline) > 0
    assert trace.graph["depth"] == 8 and len(trace.graph["names"]) == 8


def test_gd_and_agd_are_algorithm_1_without_smoothing(tmp_trace):
    for algo, mu in (("gd", 0.0), ("agd", 0.99)):
        assert main(["--algo", algo, "--iters", "3", "--quiet", "--out", tmp_trace(algo + ".h5")]) == 0
        trace = load(tmp_trace(algo + ".h5"))
        assert (trace.config["K"], trace.config["gamma"], trace.config["mu"]) == (1, 0.0, mu)
        assert trace.attrs["makespan"] == 2 * 8  # the naive sequential extension: 2Δ per iteration


def test_config_file_is_overridden_by_flags(tmp_path, tmp_trace):
    config = tmp_path / "run.toml"
    config.write_text('problem = "linf"\ndepth = 4\nK = 3\nlr = 0.5\niters = 2\nquiet = true\n')
    assert main(["--config", str(config), "--lr", "0.25", "--out", tmp_trace()]) == 0
    cfg = load(tmp_trace()).config
    assert (cfg["problem"], cfg["problem_params"]["depth"], cfg["K"], cfg["lr"]) == ("linf", 4, 3, 0.25)


def test_theorem3_preset_meets_the_bound_of_eq_13_on_depth_8_lad(tmp_trace):
    """Mean over 10 seeds of f(y_T) − f* against 3LRd^{1/4}/(T+1) + LRd^{-1/4}/(2K)."""
    T, finals = 99, []
    for seed in range(10):
        out = tmp_trace(f"seed{seed}.h5")
        assert main(["--problem", "lad", "--depth", "8", "--preset", "theorem3", "--iters", str(T),
                     "--seed", str(seed), "--microbatch-size", "25", "--eval-every", "0", "--quiet", "--out", out]) == 0
        trace = load(out)
        finals.append(trace.columns["f_eval"][-1])
    problem = build("lad", depth=8, dim=16, rows=32, radius=1.0, problem_seed=0)
    K = trace.config["K"]
    bound = optim.theorem3_bound(problem.lipschitz, problem.radius, 16, T, K)
    print(f"E[f(y_T)] - f* = {np.mean(finals):.4f} <= eq. (13) bound {bound:.4f} (T={T}, K={K})")
    assert K == math.ceil((T + 1) / 4) and np.mean(finals) - problem.f_star <= bound


@pytest.mark.parametrize("args, message", [
    (["--problem", "nope"], "unknown problem 'nope'"),
    (["-K", "0"], "K must be >= 1, got 0"),
    (["--gamma", "-1"], "gamma must be >= 0, got -1.0"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
    (["--lr", "-3"], "lr must be > 0, got -3.0"),
    (["-K", "abc"], "argument -K/--samples: invalid int value: 'abc'"),
    (["--algo", "gd", "--gamma", "0.1"], "gd uses no smoothing: gamma must be 0"),
    (["--out", "/nonexistent/dir/run.h5"], "cannot write trace '/nonexistent/dir/run.h5'"),
    (["--problem", "lad", "--depth", "1"], "depth must be between 2 and 10000, got 1"),
    (["--engine", "serial", "--stages", "99"], "99 stages (ranks) for a graph of 8 nodes"),
    (["--inject-fault", "x"], "fault must look like RANK:ITERATION:raise|exit|hang"),
    (["-K", "100000000", "--iters", "1", "--microbatch-size", "1"],
     "forward actions per iteration (at most 1,000,000)"),
    (["-K", "100000000", "--iters", "1"], "activation entries per pass (at most 1,073,741,824): lower K"),
    (["--depth", "100000"], "depth must be between 2 and 10000, got 100000"),
    (["--dim", "30000", "--rows", "30000"], "matrix entries (at most 200,000,000)"),
    (["--depth", "5000", "--engine", "serial"], "cells in one process (at most 20,000,000)"),
    (["--preset", "theorem4", "--eps", "1e9", "--smoothing-radius", "1"], "eps=1e+09 is too large"),
    # Found by the durability audit (issue 13, items 8-10): each used to hang, trace back or print 2 lines.
    (["-K", "1000000000", "--microbatch-size", "1000000000"], "lower --microbatch-size"),
    (["--config", "/dev/zero"], "is not a regular file"),
    (["--preset", "theorem4", "--eps", "1e-200", "--smoothing-radius", "0.1"], "ZeroDivisionError"),
    (["--preset", "theorem4", "--eps", "1e-160", "--smoothing-radius", "1e-160"], "OverflowError"),
    (["--inject-fault", "\n"], "got '\\n'"),
    (["--simulated-depth", "100000000000000000000"], "simulated-depth must be between 1 and 10**9"),
])
def test_bad_input_gets_one_line_and_exit_code_2(capsys, tmp_trace, args, message):
    if "--out" not in args:
        args = [*args, "--out", tmp_trace()]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pprs_mpi.solve: error: ") and message in err


@pytest.mark.parametrize("content, message", [
    ("not = [valid", "is not valid TOML"),
    ("learning_rate = 1\n", "unknown key 'learning_rate'"),
    (b"lr = \xff\xfe\n", "is not UTF-8 text"),
    ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "nests too deeply"),
])
def test_bad_config_file_gets_one_line(capsys, tmp_path, content, message):
    config = tmp_path / "bad.toml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["--config", str(config), "--out", str(tmp_path / "run.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_bad_input_from_a_shell_has_no_traceback(tmp_trace):
    result = solve("-K", "0", "--out", tmp_trace(), timeout=60)
    assert result.returncode == 2 and result.stderr == "pprs_mpi.solve: error: K must be >= 1, got 0\n"


def test_divergence_is_reported_and_marked(tmp_trace, capsys):
    assert main(["--algo", "gd", "--lr", "1e307", "--iters", "50", "--quiet", "--out", tmp_trace()]) == 1
    assert "diverged" in capsys.readouterr().err
    assert load(tmp_trace()).status == "diverged"


def test_resume_of_a_completed_trace_says_so_and_how_to_extend_it_leaving_the_file_alone(tmp_trace, capsys):
    out = tmp_trace()
    assert main(["--depth", "4", "--iters", "5", "--quiet", "--out", out]) == 0
    before = open(out, "rb").read()
    capsys.readouterr()
    assert main(["--resume", out]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"pprs_mpi.solve: {out} is already complete at iteration 5: nothing to do (to extend the run: "
        f"--resume {out} --iters N, with N > 5)"]
    assert open(out, "rb").read() == before
    assert main(["--resume", out, "--iters", "7"]) == 0  # the hint works
    assert load(out).columns["iteration"][-1] == 7 and load(out).attrs["resumes"] == 1


def test_an_existing_trace_from_python_names_the_keyword_that_replaces_it(tmp_trace):
    import pprs_mpi
    out = tmp_trace()
    pprs_mpi.minimize("lad", iters=1, quiet=True, out=out)
    with pytest.raises(pprs_mpi.ConfigError, match=r"already exists: pass --overwrite \(from Python: overwrite=True\)"):
        pprs_mpi.minimize("lad", iters=1, quiet=True, out=out)
    assert pprs_mpi.minimize("lad", iters=1, quiet=True, out=out, overwrite=True).status == "completed"


def test_threads_is_recorded_and_a_bad_count_is_one_line(tmp_trace, capsys):
    out = tmp_trace()
    assert main(["--problem", "lad", "--iters", "1", "--threads", "2", "--quiet", "--out", out]) == 0
    assert load(out).config["threads"] == 2
    assert main(["--threads", "0", "--out", tmp_trace("b.h5")]) == 2
    assert "threads" in capsys.readouterr().err


def test_the_pprs_console_script_runs_each_command_line(tmp_trace, capsys):
    """pyproject's [project.scripts] `pprs` names a main that dispatches to the python -m command lines."""
    import importlib
    from pathlib import Path

    from pprs_mpi.cli.pprs import main as pprs
    from pprs_mpi.config import tomllib
    scripts = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
        "scripts"]
    module, _, function = scripts["pprs"].partition(":")
    assert getattr(importlib.import_module(module), function) is pprs
    out = tmp_trace()
    assert pprs(["solve", "--problem", "lad", "--iters", "2", "--quiet", "--out", out]) == 0
    assert load(out).status == "completed"
    capsys.readouterr()
    assert pprs(["report", out]) == 0 and "completed" in capsys.readouterr().out
    assert pprs(["check", "lad"]) == 0 and "pass" in capsys.readouterr().out
    for wrong in (["sovle"], []):
        assert pprs(wrong) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
