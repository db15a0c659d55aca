"""Algorithm 1's recursion, the Nesterov sequence and the presets of Theorems 3 and 4."""

import math

import numpy as np
import pytest

from pprs_mpi import config, optim
from pprs_mpi.backend import select
from pprs_mpi.driver import LoopState, Progress, minimize


class ScriptedEngine:
    """Returns preset gradients and records where they were asked for."""

    def __init__(self, grads):
        self.grads, self.points = grads, []

    def gradient(self, x, t):
        self.points.append(x.copy())
        return np.array([self.grads[t]]), np.array([0.0])

    def evaluate(self, y, t):
        return float(abs(y[0]))


class Rows:
    def __init__(self):
        self.rows = []

    def append(self, **row):
        self.rows.append(row)


def test_two_steps_by_hand():
    """η = 0.5, μ = 0.5, G_0 = 2, G_1 = −4 from x_0 = y_0 = 0:
    y_1 = −1, x_1 = 1.5·(−1) − 0.5·0 = −1.5, y_2 = −1.5 + 2 = 0.5, x_2 = 1.5·0.5 + 0.5·1 = 1.25."""
    engine, rows = ScriptedEngine([2.0, -4.0]), Rows()
    cfg = config.resolve({"mu": 0.5, "lr": 0.5, "eval_every": 1, "iters": 2, "checkpoint_every": 0})
    out = minimize(engine, select(), cfg, optim.Algorithm1(0.5, 0.5), makespan=6, trace=rows,
                   progress=Progress(2, 1, quiet=True),
                   start=LoopState.start({"x": np.zeros(1), "y": np.zeros(1)}))
    assert [p[0] for p in engine.points] == [0.0, -1.5]
    assert out.state.y[0] == 0.5 and out.state.x[0] == 1.25 and out.status == "completed"
    assert [r["pipeline_time"] for r in rows.rows] == [0.0, 6.0, 12.0]
    assert [r["f_eval"] for r in rows.rows] == [0.0, 1.0, 0.5]


def test_divergence_keeps_last_finite_iterate():
    engine, rows = ScriptedEngine([1.0, math.inf]), Rows()
    cfg = config.resolve({"mu": 0.0, "lr": 1.0, "eval_every": 0, "iters": 5, "checkpoint_every": 0})
    out = minimize(engine, select(), cfg, optim.Algorithm1(1.0, 0.0), makespan=2, trace=rows,
                   progress=Progress(5, 1, quiet=True),
                   start=LoopState.start({"x": np.zeros(1), "y": np.zeros(1)}))
    assert out.status == "diverged" and out.state.iteration == 1 and out.state.y[0] == -1.0


def lambdas(n):
    lam = [0.0]
    for _ in range(n):
        lam.append((1 + math.sqrt(1 + 4 * lam[-1] ** 2)) / 2)
    return lam


def test_nesterov_sequence():
    lam, mu = lambdas(12), optim.Momentum("nesterov")
    assert mu(0) == 0.0
    for t in range(10):
        assert mu(t) == pytest.approx((lam[t + 1] - 1) / lam[t + 2], rel=1e-15)
    assert mu(3) == pytest.approx((lam[4] - 1) / lam[5])  # random access after sequential use
    assert optim.Momentum(0.9)(7) == 0.9
    with pytest.raises(ValueError):
        optim.Momentum(1.0)


def test_theorem3_preset_matches_its_formulas():
    L, R, d, T = 3.0, 2.0, 16, 99
    p = optim.theorem3(L, R, d, iters=T)
    assert p.K == math.ceil((T + 1) / math.sqrt(d)) == 25
    assert p.lr == pytest.approx(R * d ** -0.25 / (L * (T + 1)))
    assert p.gamma == pytest.approx(L * p.lr)  # η = γ/L: f^γ is (L/γ)-smooth
    assert p.mu == "nesterov" and p.iters == T
    assert optim.theorem3_bound(L, R, d, T, p.K) == pytest.approx(3 * L * R * 2 / 100 + L * R / 2 / (2 * 25))
    by_eps = optim.theorem3(L, R, d, eps=0.5)
    assert optim.theorem3_bound(L, R, d, by_eps.iters, by_eps.K) <= 0.5
    assert optim.theorem3_bound(L, R, d, by_eps.iters - 1, math.ceil(by_eps.iters / 4)) > 0.5 * 0.9


def test_theorem4_preset_matches_its_formulas():
    L, D, d, eps, r = 2.0, 5.0, 10, 0.5, 0.1
    p = optim.theorem4(L, D, d, eps, r)
    gamma = r / math.sqrt(4 * math.log(3 * L / eps) + 2 * math.log(2 * math.e) * d)
    assert p.gamma == pytest.approx(gamma) and p.lr == pytest.approx(gamma / L) and p.mu == 0.0
    assert p.K == math.ceil(18 * L**2 / eps**2) == 288
    assert p.iters == math.ceil(36 * L * (D + 2 * gamma * L * math.sqrt(d)) / (gamma * eps**2))
    with pytest.raises(ValueError, match="eps must be > 0"):
        optim.theorem4(L, D, d, 0.0, r)
