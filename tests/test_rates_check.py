"""The rates experiment's rate check (experiments/decay.py): the fit recovers known exponents, the check passes a
series that decays like eq. (13) and fails one that decays slower even under the bound, and on real runs it passes
Theorem 3's step rule and fails the rule that is wrong on purpose."""

import json

import numpy as np
import pytest

from pprs_mpi import optim
from pprs_mpi.experiments import decay, framing, rates, reproduction
from pprs_mpi.experiments.__main__ import main as experiments_main

TS = [10, 30, 100, 300]


def test_the_fit_recovers_a_power_law_and_its_constant():
    for exponent, constant in ((-1.0, 3.0), (-1.7, 0.2), (0.0, 5.0), (0.4, 1e-3)):
        p, c = decay.fit(TS, [constant * (T + 1) ** exponent for T in TS])
        assert p == pytest.approx(exponent, abs=1e-12) and c == pytest.approx(constant, rel=1e-12)
    matrix = np.array([[2 * (T + 1) ** -1.0, (T + 1) ** -2.0] for T in TS])  # one series per column
    assert np.allclose(decay.fit(TS, matrix)[0], [-1.0, -2.0], atol=1e-12)


def test_the_bootstrap_error_is_zero_without_spread_and_fixed_by_its_seed():
    flat = [np.full(5, (T + 1) ** -1.5) for T in TS]
    assert decay.bootstrap_se(TS, flat) < 1e-12  # rounding of the means only
    rng = np.random.default_rng(1)
    noisy = [(T + 1) ** -1.5 * rng.uniform(0.5, 1.5, 5) for T in TS]
    assert decay.bootstrap_se(TS, noisy) == decay.bootstrap_se(TS, noisy) > 0
    wider = [(T + 1) ** -1.5 * rng.uniform(0.1, 1.9, 5) for T in TS]
    assert decay.bootstrap_se(TS, wider) > decay.bootstrap_se(TS, noisy)


def series(errors_of_T, bound_of_T, start=10.0, seeds=5):
    """Rows of one synthetic series: each T's seeds spread ±10% around errors_of_T(T)."""
    rows = []
    for T in TS:
        errors = [errors_of_T(T) * (0.9 + 0.2 * k / (seeds - 1)) for k in range(seeds)]
        rows.append({"T": T, "errors": errors, "measured": float(np.mean(errors)), "bound": bound_of_T(T),
                     "holds": float(np.mean(errors)) <= bound_of_T(T), "start": start})
    return rows


def bound(T):
    """eq. (13) for lad at d = 4 with the preset K."""
    return optim.theorem3_bound(2 * 2**0.5, 1.0, 4, T, optim.theorem3(2 * 2**0.5, 1.0, 4, iters=T).K)


def test_a_series_decaying_like_the_bound_passes_and_a_slower_one_under_the_bound_fails():
    like = decay.judge(series(lambda T: 0.3 * bound(T), bound))
    assert like["passes"] and not like["slower"] and like["window"] == TS
    assert like["measured_exponent"] == pytest.approx(like["bound_exponent"], abs=1e-12)
    assert like["why"] == ""
    plateau = decay.judge(series(lambda T: 0.3 * bound(300), bound))  # under the bound at every T
    assert plateau["exceeded"] == [] and plateau["slower"] and not plateau["passes"]
    assert plateau["measured_exponent"] == pytest.approx(0.0, abs=1e-12)
    assert "decays slower than the bound" in plateau["why"]
    slow = decay.judge(series(lambda T: 0.3 * bound(10) * ((T + 1) / 11) ** -0.7, bound))  # p = -0.7 > -1.0
    assert slow["exceeded"] == [] and slow["slower"] and slow["measured_exponent"] == pytest.approx(-0.7)


def test_a_series_over_the_bound_fails_and_the_fit_skips_ts_where_the_bound_is_above_the_start():
    over = decay.judge(series(lambda T: 2 * bound(T), bound))
    assert not over["passes"] and not over["slower"] and over["exceeded"] == TS
    clipped = decay.judge(series(lambda T: 0.1 * bound(T), bound, start=bound(30) * 1.01))
    assert clipped["window"] == [30, 100, 300] and clipped["passes"]
    untested = decay.judge(series(lambda T: 0.1 * bound(T), bound, start=bound(300) * 1.01))
    assert untested["window"] == [300] and untested["slower"] is None and untested["passes"]
    assert "rate not tested" in untested["why"]
    diverged = series(lambda T: 0.1 * bound(T), bound)
    diverged[-1]["errors"][0] = float("inf")
    assert decay.judge(diverged)["slower"] is None


def run_rates(out, rule):
    assert rates.main(["--out", str(out), "--problems", "linf", "--d", "4", "--T", "10,30,100", "--K", "preset",
                       "--seeds", "3", "--step-rule", rule]) == 0
    return json.loads((out / "rates.json").read_text())


def test_real_runs_pass_theorem3s_rule_and_fail_the_wrong_one_on_the_rate_alone(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    right, wrong = run_rates(tmp_path / "right", "theorem3"), run_rates(tmp_path / "wrong", "wrong-small-step")
    assert wrong["protocol"]["step_rule"] == "wrong-small-step" and right["protocol"]["step_rule"] == "theorem3"
    [good], [bad] = right["series"], wrong["series"]
    assert good["passes"] and bad["window"] == good["window"] == [10, 30, 100]
    assert bad["exceeded"] == [] and all(r["holds"] for r in wrong["rows"])  # the bound alone misses it
    assert bad["slower"] and not bad["passes"]
    assert bad["measured_exponent"] > good["measured_exponent"] + 1
    assert bad["measured_exponent"] > bad["bound_exponent"] + 5 * bad["se"]
    first = {r["T"]: r for r in right["rows"]}[10]  # the two rules agree at the smallest T, bit for bit
    assert {r["T"]: r for r in wrong["rows"]}[10]["errors"] == first["errors"]
    assert "the rate check passes 0 of 1 series" in (tmp_path / "wrong" / "rates.txt").read_text()
    section = "\n".join(reproduction._rates(right, wrong))  # docs/reproduction.md's section and reading note
    assert "Theorem 3's rule: the check passes **1 of 1** series" in section
    assert "--step-rule wrong-small-step" in section
    assert "The step rule wrong on purpose: the check passes **0 of 1** series" in section
    scope = framing._rates_scope(right, wrong)
    assert "it fails 1 of 1 series" in scope and "missed by the bound alone: linf d = 4" in scope


def test_bad_step_rule_input_is_one_line_exit_2(tmp_path, capsys):
    assert experiments_main(["rates", "--out", str(tmp_path), "--step-rule", "faster"]) == 2
    assert experiments_main(["rates", "--out", str(tmp_path), "--step-rule", "wrong-small-step", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--step-rule" in err and "drop --lr" in err and "Traceback" not in err
