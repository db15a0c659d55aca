"""Anytime PPRS: γ_t and η_t schedules, antithetic noise, averaged iterates and the 95% interval of f^γ(x_t).

Each is checked against its definition (closed forms, SciPy's quantiles, a plain reverse-mode reference for the
engine's G_t with γ_t), bitwise across the serial engine, --stages, mpirun -n 2 and 3 and a resume, and its bad
input refused in one line with exit 2 before anything runs."""

import math
import os

import numpy as np
import pytest

import reference
from conftest import mpirun, solve
from fake_device import FakeDevice
from pprs_mpi import Graph, Node, averaging, interval, noise, parameters
from pprs_mpi.backend import select
from pprs_mpi.engines.factory import engine_for
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.nonfinite import first_nonfinite
from pprs_mpi.ops import Square, Sum
from pprs_mpi.problems import build
from pprs_mpi.report import summarize
from pprs_mpi.trace import load

DATA = os.path.join(os.path.dirname(__file__), "data")
COMMON = ["--problem", "lad", "--depth", "4", "--dim", "6", "--rows", "8", "--iters", "8", "-K", "6",
          "--gamma", "0.05", "--lr", "0.02", "--eval-every", "2", "--seed", "5", "--quiet"]
VARIANTS = {  # every new option at least once; b = 3 splits the antithetic pair (2, 3) across two microbatches
    "decay-antithetic-suffix": ["--gamma-schedule", "decay", "--lr-schedule", "theorem3", "--decay-tau", "3",
                                "--decay-power", "0.7", "--noise", "antithetic", "--average", "suffix:0.5",
                                "--microbatch-size", "3"],
    "theorem3-polyak": ["--gamma-schedule", "theorem3", "--lr-schedule", "decay", "--average", "polyak",
                        "--microbatch-size", "2"],
}
COLUMNS = ("iteration", "f_smoothed", "f_eval", "grad_norm", "step_size", "gamma", "f_low", "f_high", "f_avg")
# pipeline_time too where the layout is the same (it counts the layout's makespan)


def assert_same_iterates(a, b, columns=COLUMNS):
    for name in columns:
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name
    for name in ("y", "x", "y_avg"):
        assert np.array_equal(a.result[name], b.result[name]), name


# -- definitions ------------------------------------------------------------------------------------------------

def test_schedules_follow_their_formulas():
    assert all(parameters.Schedule("constant", 0.3)(t) == 0.3 for t in (0, 1, 10**6))
    decay = parameters.Schedule("decay", 0.3, tau=4.0, power=0.5)
    assert decay(0) == 0.3 and math.isclose(decay(12), 0.3 / 2.0) and math.isclose(decay(60), 0.3 / 4.0)
    assert math.isclose(parameters.Schedule("theorem3", 2.0)(3), 0.5)
    bases = parameters.theorem3_bases(L=2.0, R=3.0, d=16)  # Theorem 3's γ, η at T = 0: R d^{-1/4}, γ/L
    assert math.isclose(bases["gamma"], 1.5) and math.isclose(bases["lr"], 0.75)
    with pytest.raises(ValueError, match="p > 0"):
        parameters.Schedule("decay", 1.0, power=0.0)


def test_t_quantiles_match_scipy():
    t = pytest.importorskip("scipy.stats").t
    for dof in (1, 2, 7, 30, 31, 50, 200, 10**4):
        assert abs(interval.t_quantile(dof) - t.ppf(0.975, dof)) < 2e-6, dof


def test_interval_is_students_and_uses_pair_means_for_antithetic_samples():
    t = pytest.importorskip("scipy.stats").t
    values = np.array([1.0, 3.0, 2.0, 6.0, 4.0, 5.0])
    low, high = interval.confidence_interval(values)
    expected = t.interval(0.95, 5, loc=values.mean(), scale=values.std(ddof=1) / math.sqrt(6))
    assert np.allclose((low, high), expected)
    pairs = values.reshape(3, 2).mean(axis=1)
    low, high = interval.confidence_interval(values, antithetic=True)
    assert np.allclose((low, high), t.interval(0.95, 2, loc=pairs.mean(), scale=pairs.std(ddof=1) / math.sqrt(3)))
    assert all(math.isnan(v) for v in interval.confidence_interval(np.array([2.0])))


def test_antithetic_rows_negate_their_even_partner_whatever_the_grouping():
    plain = noise.perturbations(9, 4, range(0, 6), 5)
    paired = noise.perturbations(9, 4, range(0, 6), 5, antithetic=True)
    assert np.array_equal(paired[0::2], plain[0::2]) and np.array_equal(paired[1::2], -plain[0::2])
    assert np.array_equal(noise.Rows(9, 3, 5, antithetic=True).draw(4, range(3, 6)), paired[3:])


def test_device_noise_pairs_its_samples_too():
    source = FakeDevice().noise_source(Sampling(6, 0.3, 3, 6, antithetic=True), 4)
    plain = FakeDevice().noise_source(Sampling(6, 0.3, 3, 6), 4).draw(7, range(6))
    paired = source.draw(7, range(6))
    assert np.array_equal(paired[0::2], plain[0::2]) and np.array_equal(paired[1::2], -plain[0::2])
    assert np.array_equal(source.draw(7, range(3, 6)), paired[3:])


def test_averages_are_the_means_of_the_iterates_they_cover():
    class Scripted:  # y_{t+1} = t + 1, so the means are known
        names = ("x", "y")

        def init(self, x0):
            return {"x": x0, "y": x0}

        def step(self, state, grad, t):
            return {"x": state["x"], "y": np.full(2, t + 1.0)}

    for text, T, expected in (("polyak", 6, 3.5), ("suffix:0.5", 6, 5.0), ("suffix:1", 6, 3.5), ("suffix:0.2", 6, 5.5)):
        optimizer = averaging.wrap(Scripted(), text, T)
        state = optimizer.init(np.zeros(2))
        for t in range(T):
            state = optimizer.step(state, None, t)
        assert np.allclose(state["avg"], expected), text
    assert averaging.wrap(Scripted(), "none", 6).names == ("x", "y")


def test_the_engine_draws_with_gamma_t_and_antithetic_noise():
    """G_t and the K values of the serial engine at t = 5 against a plain reference with γ_5 and paired noise."""
    problem = build("lad", depth=3, dim=4, rows=6, problem_seed=1)
    graph, K, seed, t = problem.graph, 4, 3, 5
    schedule = parameters.Schedule("decay", 0.2, tau=2.0, power=1.0)
    sampling = Sampling(K, 0.2, seed, 2, gamma_schedule=schedule, antithetic=True)
    engine = engine_for(graph, [(name,) for name in graph.order], sampling)
    x = np.linspace(-0.5, 0.5, graph.dim)
    grad, values = engine.gradient(x, t)
    theta = x + schedule(t) * noise.perturbations(seed, t, range(K), graph.dim, antithetic=True)
    forward = reference.evaluate(graph, theta)
    assert np.allclose(values, forward[graph.leaf].ravel(), rtol=1e-13)
    assert np.allclose(grad, reference.backprop(graph, forward).mean(axis=0), rtol=1e-12)


def test_the_divergence_locator_redoes_the_pass_with_gamma_t():
    """x_t + γ_t X overflows a square at t = 0 (γ_0 = 1e200) and not at t = 5 (γ_5 ≈ 1e133): the locator blames
    the square at t = 0 only."""
    graph = Graph(2, [Node("sq", Square(), ("theta",)), Node("sum", Sum(), ("sq",))])
    schedule = parameters.Schedule("decay", 1e200, tau=1e-6, power=10.0)
    sampling = Sampling(2, 1e200, 0, 2, gamma_schedule=schedule)
    assert "'sq'" in first_nonfinite(graph, sampling, select(), np.zeros(2), 0)
    assert first_nonfinite(graph, sampling, select(), np.zeros(2), 5) is None


# -- runs ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_stores_its_columns_and_is_bitwise_equal_across_stages(tmp_trace, variant):
    args = [*COMMON, *VARIANTS[variant]]
    for name, extra in (("serial", []), ("two", ["--stages", "2"]), ("three", ["--stages", "3"])):
        done = solve(*args, "--engine", "serial", *extra, "--out", tmp_trace(f"{name}.h5"))
        assert done.returncode == 0, done.stderr
    serial = load(tmp_trace("serial.h5"))
    for name in ("two", "three"):
        assert_same_iterates(serial, load(tmp_trace(f"{name}.h5")))
    columns, cfg = serial.columns, serial.config
    gamma = parameters.Schedule(cfg["gamma_schedule"], cfg["gamma"], cfg["decay_tau"], cfg["decay_power"])
    lr = parameters.Schedule(cfg["lr_schedule"], cfg["lr"], cfg["decay_tau"], cfg["decay_power"])
    steps = columns["iteration"][1:] - 1  # row i + 1 holds iteration t = i
    assert np.array_equal(columns["gamma"][1:], [gamma(t) for t in steps])
    assert np.array_equal(columns["step_size"][1:], [lr(t) for t in steps])
    assert np.all(columns["f_low"][1:] <= columns["f_smoothed"][1:])
    assert np.all(columns["f_smoothed"][1:] <= columns["f_high"][1:])
    evaluated = np.isfinite(columns["f_eval"])
    assert np.array_equal(evaluated, np.isfinite(columns["f_avg"])) and not np.array_equal(
        serial.result["y_avg"], serial.result["y"])
    report = summarize(serial)
    assert report["average"] == cfg["average"] and "average" in report["reported_iterate"]


@pytest.mark.mpi
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_is_bitwise_equal_on_2_and_3_ranks(tmp_trace, variant):
    args = [*COMMON, *VARIANTS[variant]]
    serial = solve(*args, "--engine", "serial", "--out", tmp_trace("serial.h5"))
    assert serial.returncode == 0, serial.stderr
    for ranks in (2, 3):
        done = mpirun(ranks, *args, "--out", tmp_trace(f"mpi{ranks}.h5"), timeout=120)
        assert done.returncode == 0, done.stderr
        parallel = load(tmp_trace(f"mpi{ranks}.h5"))
        assert parallel.attrs["engine"] == "mpi" and parallel.attrs["ranks"] == ranks
        assert_same_iterates(load(tmp_trace("serial.h5")), parallel)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_resumes_bitwise(tmp_trace, variant):
    """A run failing at iteration 5 resumes from its checkpoint at 4 (the average, γ_t, η_t continued)."""
    args = [*COMMON, *VARIANTS[variant], "--engine", "serial"]
    assert solve(*args, "--out", tmp_trace("whole.h5")).returncode == 0
    failed = solve(*args, "--checkpoint-every", "2", "--inject-fault", "0:5:raise", "--out", tmp_trace("split.h5"))
    assert failed.returncode != 0 and load(tmp_trace("split.h5")).status == "failed"
    resumed = solve("--resume", tmp_trace("split.h5"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    whole, split = load(tmp_trace("whole.h5")), load(tmp_trace("split.h5"))
    assert split.attrs["resumes"] == 1
    assert_same_iterates(whole, split, columns=(*COLUMNS, "pipeline_time"))


def test_the_toml_config_takes_the_new_options(tmp_path, tmp_trace):
    (tmp_path / "run.toml").write_text('gamma-schedule = "decay"\nlr_schedule = "theorem3"\ndecay-tau = 3\n'
                                       'decay_power = 0.7\nnoise = "antithetic"\naverage = "suffix:0.5"\n'
                                       'microbatch-size = 3\n')
    by_file = solve(*COMMON, "--config", tmp_path / "run.toml", "--out", tmp_trace("file.h5"))
    by_flags = solve(*COMMON, *VARIANTS["decay-antithetic-suffix"], "--out", tmp_trace("flags.h5"))
    assert by_file.returncode == 0 and by_flags.returncode == 0, by_file.stderr + by_flags.stderr
    assert_same_iterates(load(tmp_trace("file.h5")), load(tmp_trace("flags.h5")), columns=(*COLUMNS, "pipeline_time"))


@pytest.mark.parametrize("bad, named", [
    (["--gamma-schedule", "cosine"], "invalid choice: 'cosine'"),
    (["--lr-schedule", "linear"], "invalid choice: 'linear'"),
    (["--decay-power", "0"], "decay-power must be > 0, got 0.0"),
    (["--decay-power", "-1"], "decay-power must be > 0, got -1.0"),
    (["--decay-tau", "0"], "decay-tau must be > 0, got 0.0"),
    (["--noise", "antithetic", "-K", "5"], "K must be even, got K=5"),
    (["--average", "suffix:0"], "average must be none, polyak or suffix:F with F in (0, 1], got 'suffix:0'"),
    (["--average", "suffix:1.5"], "F in (0, 1], got 'suffix:1.5'"),
    (["--average", "suffix:half"], "F in (0, 1], got 'suffix:half'"),
    (["--average", "mean"], "F in (0, 1], got 'mean'"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(tmp_trace, bad, named):
    refused = solve(*COMMON, *bad, "--out", tmp_trace())
    assert refused.returncode == 2 and named in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_trace())


def test_bad_input_from_a_config_file_is_refused_too(tmp_path, tmp_trace):
    (tmp_path / "run.toml").write_text("decay_power = 0\n")
    refused = solve(*COMMON, "--config", tmp_path / "run.toml", "--out", tmp_trace())
    assert refused.returncode == 2 and "decay-power must be > 0" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_trace())


def test_a_suffix_average_cannot_change_its_horizon_on_resume(tmp_trace):
    args = [*COMMON, "--average", "suffix:0.5", "--engine", "serial"]
    solve(*args, "--checkpoint-every", "2", "--inject-fault", "0:5:raise", "--out", tmp_trace())
    refused = solve("--resume", tmp_trace(), "--iters", "12")
    assert refused.returncode == 2 and "a resume cannot change --iters" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_theorem3_schedule_needs_the_problems_constants(tmp_path, tmp_trace):
    builder = tmp_path / "plain.py"
    builder.write_text("from pprs_mpi import Graph, Node\nfrom pprs_mpi.ops import L1Norm\n"
                       "def build() -> Graph:\n    return Graph(3, [Node('l1', L1Norm(), ('theta',))])\n")
    refused = solve("--problem", f"{builder}:build", "--gamma-schedule", "theorem3", "--out", tmp_trace())
    assert refused.returncode == 2 and "theorem3 schedule needs L and R" in refused.stderr, refused.stderr
    assert "give --gamma" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    given = solve("--problem", f"{builder}:build", "--gamma-schedule", "theorem3", "--gamma", "0.1", "--iters", "3",
                  "--quiet", "--out", tmp_trace())
    assert given.returncode == 0, given.stderr


def test_the_plot_draws_the_band_the_average_and_the_schedules(tmp_path, tmp_trace):
    pytest.importorskip("matplotlib")
    from pprs_mpi import plots
    assert solve(*COMMON, *VARIANTS["theorem3-polyak"], "--out", tmp_trace()).returncode == 0
    trace = load(tmp_trace())
    figure = plots.plot_smoothed_vs_eval(trace, summarize(trace), "run")
    top, below = figure.axes
    assert len(top.collections) == 1  # the 95% band
    assert any("polyak average" in line.get_label() for line in top.lines)
    assert [line.get_label() for line in below.lines] == [r"smoothing $\gamma_t$", r"step $\eta_t$"]
    assert np.array_equal(below.lines[0].get_ydata(), trace.columns["gamma"])


def test_an_old_trace_reads_with_the_new_columns_empty():
    old = load(os.path.join(DATA, "trace_v1.h5"))
    for name in ("gamma", "f_low", "f_high", "f_avg"):
        assert old.columns[name].shape == old.columns["iteration"].shape and np.all(np.isnan(old.columns[name]))
    report = summarize(old)
    assert report["gamma_schedule"] == "constant" and report["interval"] is None and report["average"] == "none"
