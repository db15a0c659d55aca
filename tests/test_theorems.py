"""The theorem experiments' machinery on tiny sizes: the worst-case chains' known optima and span bounds, the
depth experiment's re-timing against the engine's own simulated-depth accounting, and the fits on synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pprs_mpi import problems
from pprs_mpi.check import check_graph
from pprs_mpi.experiments import depth, inprocess, lowerbounds, nonconvex, reproduction
from pprs_mpi.experiments.__main__ import main as experiments_main
from pprs_mpi.experiments.runner import ExperimentError
from pprs_mpi.problems import Problem
from pprs_mpi.problems.worstcase import difference_matrix, span_bound
import reference


@pytest.mark.parametrize("name", ["chain_smooth", "chain_nonsmooth"])
def test_worst_case_chains_have_their_closed_form_optimum(name):
    """f(θ*) = f* (the run's f at t = 0 from x0 = θ*), every node's VJP matches finite differences (at a
    random point: θ* is a kink of the max), and f is no lower than f* at 200 random points near θ* (convexity with
    the known minimiser; evaluated by the plain reference, tests/reference.py)."""
    built = problems.build(name, depth=6, dim=5, radius=1.5, problem_seed=3)
    assert all(r.ok for r in check_graph(built.graph, x0=np.random.default_rng(1).standard_normal(5)))
    at_star = Problem(name, built.graph, x0=built.theta_star)
    near = built.theta_star + 0.1 * np.random.default_rng(0).standard_normal((200, 5))
    nearby = reference.evaluate(built.graph, near)[built.graph.leaf]
    f_star = inprocess.solve_curve(at_star, algo="gd", lr=1e-9, iters=1)["f"][0]
    assert f_star == pytest.approx(built.f_star, rel=1e-12, abs=1e-14)
    assert min(nearby) >= built.f_star - 1e-12
    if name == "chain_smooth":
        assert built.f_star == pytest.approx(1 / (8 * 6))
        B = difference_matrix(5)
        assert np.allclose(B.T @ B, 2 * np.eye(5) - np.eye(5, k=1) - np.eye(5, k=-1))
    else:
        assert built.f_star == pytest.approx(-1.5 / (2 * (1 + math.sqrt(5))))


@pytest.mark.parametrize("name, lr", [("chain_smooth", 1.0), ("chain_nonsmooth", 0.05)])
def test_gradient_descent_stays_in_the_span_and_above_the_bound(name, lr):
    """GD from 0 on a k = 6 chain: after t steps at most t coordinates of θ_t are non-zero (on the smooth chain
    exactly the first t, whatever the rotations inside the graph), and f(θ_t) − f* is at least the span bound for
    every t < k; the bound is exact at t = 0 on the smooth chain (f(0) − f* = (1/8)(1 − 1/(k+1)))."""
    k = 6
    built = problems.build(name, depth=7, dim=k, radius=1.0, problem_seed=1)
    for t in range(1, k):
        y = inprocess.solve_curve(name, problem_args={"depth": 7, "dim": k}, algo="gd", lr=lr, iters=t)["y"]
        touched = np.abs(y) > 1e-12  # the rotations leave round-off (~1e-17) everywhere
        assert touched.sum() <= t and (name != "chain_smooth" or touched[:t].all())
    run = inprocess.solve_curve(name, problem_args={"depth": 7, "dim": k}, algo="agd", mu="nesterov", lr=lr,
                                iters=3 * k)
    bound = span_bound(name, k, 1.0, run["iteration"])
    assert np.all(run["f"] - built.f_star >= bound - 1e-12)
    assert np.all(bound[k:] == 0) and np.all(bound[:k] > 0)
    if name == "chain_smooth":
        assert run["f"][0] - built.f_star == pytest.approx(bound[0])
    np.testing.assert_array_equal(run["pipeline_time"], 2 * 7 * run["iteration"])  # NSE: 2Δ per gradient


def test_depth_retiming_is_the_engines_simulated_depth_time(tmp_path):
    """A PPRS preset run at --simulated-depth Δ with one input per microbatch reports pipeline time
    T·2(K + Δ − 1), which is what `depth` charges; GD's 2Δ is the engine's time for K = 1."""
    built = problems.build("lad", depth=4, dim=4, rows=8, radius=1.0, problem_seed=0)
    proto = {"problem": "lad", "graph_depth": 4}
    for D in (1, 7, 300):
        run = inprocess.solve_curve("lad", problem_args=depth.problem_args(proto, 4), preset="theorem3", eps=0.5,
                                    seed=0, microbatch_size=1, simulated_depth=D)
        K = math.ceil((len(run["iteration"])) / 2)  # T + 1 over √d = 2
        assert run["pipeline_time"][-1] == run["iteration"][-1] * depth.per_iteration("PPRS", K, 8, D)
        gd = inprocess.solve_curve("lad", problem_args=depth.problem_args(proto, 4), algo="gd", lr=0.1, iters=3,
                                   simulated_depth=D, microbatch_size=1)
        assert gd["pipeline_time"][-1] == 3 * depth.per_iteration("GD", 1, 8, D)
    assert built.lipschitz == pytest.approx(math.sqrt(8))


def test_fits_recover_known_exponents_and_the_shape():
    """Synthetic lines: slopes b = 3·(RL/ε)^1 · d^{1/4} for PPRS and 5·(RL/ε)² for GD come back as exponents 1, 1/4
    and 2, 0; times c₁(RL/ε)² + c₂(RL/ε)Δd^{1/4} give back c₁ and c₂ with zero deviation."""
    assert inprocess.fit_power([1, 10, 100], [2, 20 * 10 ** 0.5, 2000]) == pytest.approx((1.5, 2.0))
    depths, lines = [1, 10, 100], []
    for d in (4, 16, 64):
        for eps in (0.1, 0.01):
            a = 1 / eps
            lines.append({"d": d, "eps_rel": eps, "RL_over_eps": a, "method": "PPRS", "iters": 1, "a": 0,
                          "b": 3 * a * d ** 0.25, "times": [7 * a * a + 3 * a * D * d ** 0.25 for D in depths]})
            lines.append({"d": d, "eps_rel": eps, "RL_over_eps": a, "method": "GD", "iters": 1, "a": 0,
                          "b": 5 * a * a, "times": [5 * a * a * D for D in depths]})
    found = {(e["method"], e["in"], e["at"]): e["exponent"] for e in depth.exponents(lines)}
    assert found[("PPRS", "RL/ε", "d = 16")] == pytest.approx(1.0)
    assert found[("PPRS", "d", "ε = 0.01·LR")] == pytest.approx(0.25)
    assert found[("GD", "RL/ε", "d = 4")] == pytest.approx(2.0)
    assert found[("GD", "d", "ε = 0.1·LR")] == pytest.approx(0.0, abs=1e-12)
    shape = depth.shape_fit(lines, depths)
    assert (shape["c1"], shape["c2"], shape["max_rel_dev"]) == pytest.approx((7.0, 3.0, 0.0), abs=1e-9)


def test_depth_and_lowerbounds_quick_runs_write_their_documents(tmp_path, capsys):
    """Both commands end to end on tiny sizes; the documents rebuild from the JSON alone; bad input is one line."""
    pytest.importorskip("matplotlib")
    assert experiments_main(["depth", "--quick", "--out", str(tmp_path / "d"), "--docs", str(tmp_path / "docs")]) == 0
    data = json.loads((tmp_path / "d" / "depth.json").read_text())
    assert {r["d"] for r in data["rows"]} == {4} and all(r["iters"]["GPipe"] == r["iters"]["GD"] for r in data["rows"])
    first = (tmp_path / "docs" / "depth_lad.md").read_text()
    assert experiments_main(["depth", "--collect-only", "--out", str(tmp_path / "d"), "--docs",
                             str(tmp_path / "docs")]) == 0
    assert (tmp_path / "docs" / "depth_lad.md").read_text() == first
    assert experiments_main(["lowerbounds", "--quick", "--out", str(tmp_path / "l"), "--docs",
                             str(tmp_path / "docs")]) == 0
    text = (tmp_path / "docs" / "lowerbounds.md").read_text()
    assert "Span methods (GD, AGD): 6 of 6 curves stay on or above the bound" in text
    assert (tmp_path / "docs" / "lowerbounds.png").exists()
    capsys.readouterr()
    assert experiments_main(["depth", "--eps", "2", "--out", str(tmp_path / "x")]) == 2
    assert experiments_main(["lowerbounds", "--depths", "2", "--out", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("error" in line for line in errors)
    assert lowerbounds.judged({"error": [1.0, 0.5], "bound": [1.0, 0.6], "time": [0, 10]})["first_below"] == 10
    (tmp_path / "d").rename(tmp_path / "depth_lad")  # as under docs/data: reproduction --theorems rebuilds and links
    (tmp_path / "l").rename(tmp_path / "lowerbounds")
    found = reproduction._finite_sum(tmp_path)  # §5's ratios, by hand: PPRS 2(Km + Δ − 1) against GPipe 2(m + Δ − 1)
    row = data["rows"][-1]
    P, G = row["iters"]["PPRS"], min(row["iters"]["GD"], row["iters"]["AGD"])
    assert found["ratios"][-1]["ratios"] == pytest.approx(
        [P * (row["K"] * 8 + D - 1) / (G * (8 + D - 1)) for D in (8, 80, 800)])
    linked = reproduction.theorem_lines(tmp_path, tmp_path / "rebuilt")
    assert [line.split("](")[1] for line in linked if line.startswith("- [")] == ["depth_lad.md)", "lowerbounds.md)"]
    assert (tmp_path / "rebuilt" / "lowerbounds.md").read_text() == text


def test_nonconvex_quick_run_measures_the_walk_to_the_band(tmp_path):
    """On `ring` (D = 1, r = 0.3) PPRS with Theorem 4's preset reaches f ≤ r after about (D − r)/η iterations (the
    straight walk: the smoothed gradient is nearly a unit vector away from the sphere), far inside the preset's T;
    an ε at or above the floor √(1 − r²/(ρ + r)²) is refused, since T_(r,ε) would then be another event."""
    assert experiments_main(["nonconvex", "--quick", "--out", str(tmp_path), "--docs", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "nonconvex.json").read_text())["rows"][0]
    walk = (row["D"] - row["r"]) / row["lr"]
    assert all(walk <= h <= 1.2 * walk + 1 for h in row["hits"]) and max(row["hits"]) < row["T_bound"]
    assert "every seed reached T_(r,ε) within the bound" in (tmp_path / "nonconvex.md").read_text()
    proto = {**nonconvex.QUICK, "eps": [0.99]}
    with pytest.raises(ExperimentError, match="not below the floor"):
        nonconvex.measure(proto)


def _min_norm_in_hull(vectors: np.ndarray, steps: int = 3000) -> float:
    """Frank-Wolfe on the simplex: the smallest norm of a convex combination of the rows of `vectors`."""
    point = vectors[0].copy()
    for k in range(steps):
        vertex = vectors[np.argmin(vectors @ point)]
        point += 2 / (k + 2) * (vertex - point)
    return float(np.linalg.norm(point))


@pytest.mark.parametrize("z_norm, r, expected", [(2.0, 0.5, math.sqrt(1 - 0.25 / 4)), (1.2, 0.3, 0.0),
                                                 (0.2, 0.3, 0.0), (0.5, 0.2, math.sqrt(1 - 0.04 / 0.25))])
def test_ring_clarke_subdifferential_closed_form_against_sampled_gradients(z_norm, r, expected):
    """The closed-form smallest norm of the Clarke r-subdifferential of |‖z‖ − 1| against the hull of the graph's
    gradients (the plain reference's backprop) at 100 of 4000 points drawn in the ball (its boundary included), in
    d = 3 through a depth-4 graph."""
    built = problems.build("ring", depth=4, dim=3, problem_seed=2, ring_radius=1.0, ring_gap=1.0)
    assert all(c.ok for c in check_graph(built.graph, x0=np.random.default_rng(0).standard_normal(3)))
    graph_z = built.theta_star / np.linalg.norm(built.theta_star)  # θ* lies on the sphere, 2 from the centre's image
    centre = 2 * built.theta_star  # θ whose z is 0: θ* is halfway (‖c‖ = ρ + D = 2ρ)
    x = centre - graph_z * z_norm  # a point with ‖z‖ = z_norm
    rng = np.random.default_rng(1)
    directions = rng.standard_normal((4000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = x + r * directions * rng.uniform(0.0, 1.0, (4000, 1)) ** (1 / 3)
    points[:2000] = x + r * directions[:2000]  # the boundary, where the hull's closest point lives
    grads = reference.backprop(built.graph, reference.evaluate(built.graph, points[::40]))
    assert np.allclose(np.linalg.norm(grads, axis=1), 1.0)  # unit gradients off the sphere
    from pprs_mpi.problems.ring import clarke_min_norm
    assert float(clarke_min_norm(z_norm, 1.0, r)) == pytest.approx(expected)
    assert _min_norm_in_hull(grads) == pytest.approx(expected, abs=0.03)
