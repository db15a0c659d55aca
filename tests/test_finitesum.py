"""§5 done faithfully: the convex finite sum `probe` (gradients, convexity, f* and L) and `experiments finitesum`
(Theorem 3's accelerated PPRS and its preset against GPipe, re-timed at 2(K·m + Δ − 1), tuned on tuning pairs)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import solve
from pprs_mpi import optim
from pprs_mpi.api import engine_for
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.experiments import fig3, fig3_results, verdict
from pprs_mpi.experiments.__main__ import main as experiments_main
from pprs_mpi.problems import build, registry
from pprs_mpi.trace import load

pytest.importorskip("scipy")
FIG3 = Path(__file__).parents[1] / "docs" / "data" / "fig3"
PROBE = {**{name: p.default for name, p in registry()["probe"].parameters.items()}, "shots": 4}


def exact_engine(graph):
    """K = 1, γ = 0: the plain (sub)gradient."""
    return engine_for(graph, graph.stages(len(graph.order)), Sampling(K=1, gamma=0.0, seed=0, microbatch_size=1))


def final(out):
    values = load(out).columns["f_eval"]
    return values[~np.isnan(values)][-1]


@pytest.fixture(scope="module")
def problem():
    return build("probe", **PROBE)


def test_probe_is_a_finite_sum_over_the_shots_with_a_new_last_layer(problem):
    graph = problem.graph
    assert graph.dim == 10 * (64 + 1) and np.array_equal(problem.x0, np.zeros(graph.dim))
    assert list(graph.op("hinge").targets) == [0, 1, 2, 3]  # one shot from each class in turn
    features = graph.op("scores").x
    assert features.shape == (4, 64) and np.allclose(np.linalg.norm(features, axis=1), 1.0)
    assert exact_engine(graph).evaluate(problem.x0, 0) == pytest.approx(9.0)  # every hinge term 1, no penalty
    other = build("probe", **{**PROBE, "problem_seed": 1})
    assert not np.array_equal(other.graph.op("scores").x, features)  # the seed chooses the shots


def test_probe_gradient_matches_finite_differences(problem):
    engine = exact_engine(problem.graph)
    theta = 0.3 * np.random.default_rng(2).standard_normal(problem.graph.dim)  # away from kinks, almost surely
    grad, _ = engine.gradient(theta, 0)
    h, numeric = 1e-6, np.empty(theta.size)
    for i in range(theta.size):
        step = np.zeros(theta.size)
        step[i] = h
        numeric[i] = (engine.evaluate(theta + step, 0) - engine.evaluate(theta - step, 0)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_probe_is_convex_along_random_chords(problem):
    """f(tx + (1 − t)y) ≤ t f(x) + (1 − t) f(y) on 200 random chords at several scales (a ReLU before the scores,
    as in `fewshot`, fails this)."""
    engine, rng = exact_engine(problem.graph), np.random.default_rng(3)
    f = lambda theta: engine.evaluate(theta, 0)  # noqa: E731
    for scale in (0.1, 1.0, 10.0):
        for _ in range(200 // 3):
            x, y = scale * rng.standard_normal((2, problem.graph.dim))
            t = rng.uniform()
            assert f(t * x + (1 - t) * y) <= t * f(x) + (1 - t) * f(y) + 1e-12


def test_probe_knows_its_optimum_and_its_lipschitz_bound(problem):
    """f(θ*) = f* (the LP's value), nothing nearby or found by AGD goes below it, f* > 0 with the hinge part > 0
    (not a separable fit), R = ‖θ*‖, and no subgradient exceeds the stated L."""
    engine, rng = exact_engine(problem.graph), np.random.default_rng(4)
    assert engine.evaluate(problem.theta_star, 0) == pytest.approx(problem.f_star, abs=1e-9)
    assert problem.f_star > 0 and problem.radius == pytest.approx(np.linalg.norm(problem.theta_star))
    hinge = problem.f_star - PROBE["penalty"] * np.abs(problem.theta_star).sum()
    assert hinge > 0.1  # the optimum trades margin against weight
    for scale in (1e-4, 1e-2, 1.0):
        for _ in range(20):
            assert engine.evaluate(problem.theta_star + scale * rng.standard_normal(problem.graph.dim), 0) \
                >= problem.f_star - 1e-9
    norms = [np.linalg.norm(engine.gradient(theta, 0)[0]) for theta in
             [problem.x0, *(s * rng.standard_normal(problem.graph.dim) for s in (0.01, 1.0, 100.0) for _ in range(5))]]
    assert max(norms) <= problem.lipschitz and problem.lipschitz == pytest.approx(
        np.sqrt(2 * 10 * 9) + PROBE["penalty"] * np.sqrt(problem.graph.dim))


def test_probe_is_not_solved_in_a_few_gd_steps_and_agd_approaches_f_star(problem, tmp_trace):
    out = tmp_trace()
    assert solve("--problem", "probe", "--shots", "4", "--algo", "agd", "--mu", "nesterov", "--lr", "1e-3",
                 "--iters", "1500", "--eval-every", "0", "--quiet", "--out", out, timeout=120).returncode == 0
    gap = final(out) - problem.f_star
    assert 0 <= gap < 0.05
    assert solve("--problem", "probe", "--shots", "4", "--algo", "gd", "--lr", "1e-2", "--iters", "20",
                 "--eval-every", "0", "--quiet", "--out", out, "--overwrite", timeout=120).returncode == 0
    assert final(out) - problem.f_star > 0.5


def test_a_probe_without_penalty_is_refused_in_one_line(tmp_trace):
    result = solve("--problem", "probe", "--penalty", "0", "--iters", "1", "--out", tmp_trace(), timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "penalty must be finite and > 0" in \
        result.stderr


def test_theorem3s_preset_uses_the_most_iterations_a_budget_allows():
    for dim, m, depth, budget in ((650, 4, 4, 28_000), (650, 4, 400, 1_612_000), (16, 3, 20, 5_000)):
        T, K = fig3.preset_iters(dim, m, depth, budget)
        assert K == optim.theorem3(1.0, 1.0, dim, iters=T).K
        assert T * 2 * (K * m + depth - 1) <= budget
        bigger = optim.theorem3(1.0, 1.0, dim, iters=T + 1).K
        assert (T + 1) * 2 * (bigger * m + depth - 1) > budget


def test_finitesum_quick_runs_the_whole_path_with_the_papers_timing(tmp_path):
    """`finitesum --quick` on m = 3 shots: every curve is re-timed at 2(K·m + Δ − 1) per iteration (GPipe: K = 1);
    the preset row runs Theorem 3 on each pair's own L and R with the T its setting's budget allows, and is scored
    in that setting only; every configuration runs on the tuning pairs, only kept ones on the report pairs; the
    main comparison per depth is the accelerated PPRS row against a GPipe row."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "finitesum"
    assert experiments_main(["finitesum", "--quick", "--shots", "3", "--out", str(out)]) == 0
    proto, table, results = fig3_results.read_summary(out / "summary.h5")
    assert (proto["experiment"], proto["problem"], proto["examples"], proto["dim"]) == ("finitesum", "probe", 3, 650)
    for key, result in results.items():
        for method, c in result["selected"].items():
            np.testing.assert_array_equal(c["time"], c["iteration"] * 2 * (c["K"] * 3 + result["depth"] - 1))
            assert c["time"][-1] <= result["budget"]
            assert (c["algo"] == "pprs") == method.startswith("PPRS")
            assert not method.startswith("GPipe") or (c["K"], c["gamma"]) == (1, 0.0)
        preset = result["selected"][fig3.PRESET]
        assert (preset["iters"], preset["K"]) == fig3.preset_iters(650, 3, result["depth"], result["budget"])
        assert preset["settings"] == [key] and preset["iteration"][-1] == preset["iters"]
        trace = load(out / "runs" / f"{preset['name']}_pair002.h5")
        own = build("probe", **{**PROBE, "shots": 3, "problem_seed": 2})
        expected = optim.theorem3(own.lipschitz, own.radius, 650, iters=preset["iters"])
        assert (trace.config["K"], trace.config["mu"]) == (expected.K, "nesterov")
        assert trace.config["gamma"] == pytest.approx(expected.gamma) and trace.config["lr"] == pytest.approx(
            expected.lr)
        assert table["tune_scores"][key].keys() >= {preset["name"]} and not any(
            n.startswith("pprs_theorem3") and n != preset["name"] for n in table["tune_scores"][key])
    grid = fig3.configs(proto)
    ran = {(p.stem.rsplit("_pair", 1)[0], int(p.stem[-3:])) for p in (out / "runs").glob("*.h5")}
    assert {(name, pair) for name in grid for pair in (0, 1)} <= ran
    kept = {c["name"] for r in results.values() for c in r["selected"].values()}
    assert {name for name, pair in ran if pair in (2, 3)} == kept
    mains = [c for c in table["comparisons"] if c["main"]]
    assert [c["depth"] for c in mains] == [4, 400]
    assert all(verdict.family(c["method"]) == "+momentum" and c["against"].startswith("GPipe") for c in mains)
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert all(r["mu"] == "nesterov" for r in rows if r["selected"] and r["method"].startswith("PPRS"))
    assert math.isnan(next(r for r in rows if r["method"] == fig3.PRESET)["lr"])
    docs = tmp_path / "docs"
    assert experiments_main(["reproduction", "--run", str(FIG3), "--finitesum", str(out), "--docs", str(docs)]) == 0
    document = (docs / "reproduction.md").read_text()
    assert {p.name for p in (docs / "data" / "finitesum").iterdir()} == {"summary.h5", "sessions.json", "optima.json"}
    optima = json.loads((docs / "data" / "finitesum" / "optima.json").read_text())
    assert optima["2"]["f_star"] == pytest.approx(own.f_star) and set(optima) == {"0", "1", "2", "3"}
    assert "## §5, eq. (16), faithfully" in document and "**§5 (ERM), faithful run: Δ = 4 (m ≈ Δ, no claim)" \
        in document and "(finitesum)" in document and (docs / "finitesum.png").exists()
    assert experiments_main(["reproduction", "--run", str(FIG3), "--finitesum", str(docs / "data" / "finitesum"),
                             "--docs", str(docs)]) == 0
    assert (docs / "reproduction.md").read_text().split("\n", 3)[3] == document.split("\n", 3)[3]


@pytest.mark.parametrize("flags, message", [
    (["--pprs-mus", "1.5"], "momenta μ must be in [0, 1) or 'nesterov'"),
    (["--agd-mus", "nesterov,fast"], "invalid _mus value: 'nesterov,fast'"),
])
def test_bad_momenta_are_one_line_errors_before_anything_runs(flags, message, tmp_path, capsys):
    assert experiments_main(["finitesum", "--quick", *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "x").exists()
