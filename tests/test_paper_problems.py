"""The paper's problems: the adversarial attack of eq. (17) and few-shot fine-tuning (§5)."""

import numpy as np
import pytest

from conftest import solve
from test_classifier import write_cifar10
from pprs_mpi import classifier, datasets
from pprs_mpi.api import engine_for
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.problems import build, registry
from pprs_mpi.solve import main
from pprs_mpi.trace import load

DEFAULTS = {name: p.default for name, p in registry()["adversarial"].parameters.items()}
FEWSHOT = {name: p.default for name, p in registry()["fewshot"].parameters.items()}


def exact_engine(graph):
    """K = 1, γ = 0: the plain (sub)gradient, one stage per node."""
    sampling = Sampling(K=1, gamma=0.0, seed=0, microbatch_size=1)
    return engine_for(graph, graph.stages(len(graph.order)), sampling)


def multi_margin(logits, target):
    terms = np.maximum(0, 1 - logits[target] + logits)
    return terms.sum() - terms[target]


def f_eval(out):
    values = load(out).columns["f_eval"]
    return values[~np.isnan(values)]


def test_adversarial_graph_is_the_network_chain_plus_reshape_margin_and_add():
    problem = build("adversarial", **{**DEFAULTS, "image_index": 5, "target": 3})
    net = classifier.load_network(classifier.default_network_path())
    graph = problem.graph
    assert graph.dim == 64 and graph.depth == len(net.layers) + 3 == 13
    assert graph.children["theta"] == ("image", "linf") and graph.parents(graph.leaf) == ("margin", "linf")
    assert [graph.op(n).describe() for n in net.names] == [op.describe() for op in net.ops()]


def test_adversarial_value_at_the_clean_image_is_the_margin_loss_of_the_logits():
    split = datasets.load_digits()
    net = classifier.load_network(classifier.default_network_path())
    problem = build("adversarial", **{**DEFAULTS, "image_index": 11})
    label = int(split.test_labels[11])
    assert np.array_equal(problem.x0, split.test_images[11].ravel())
    expected = multi_margin(net.logits(split.test_images[11:12])[0], (label + 1) % 10)
    assert exact_engine(problem.graph).evaluate(problem.x0, 0) == pytest.approx(expected, rel=1e-12)
    point = problem.describe_point(problem.x0)
    assert point == {"attack_success": False, "linf_distance": 0.0, "predicted_class": label,
                     "target": (label + 1) % 10}


def test_adversarial_gradient_matches_finite_differences_on_a_small_random_network(tmp_path):
    path = str(tmp_path / "small.h5")
    network = classifier.alexnet((1, 8, 8), 10, np.random.default_rng(4), channels=(3, 4), hidden=6)
    classifier.save_network(network, path)
    problem = build("adversarial", **{**DEFAULTS, "network": path, "target": 2, "lam": 3.0})
    engine = exact_engine(problem.graph)
    theta = problem.x0 + 0.05 * np.random.default_rng(5).standard_normal(64)  # away from kinks, almost surely
    grad, _ = engine.gradient(theta, 0)
    h, numeric = 1e-6, np.empty(64)
    for i in range(64):
        step = np.eye(64)[i] * h
        numeric[i] = (engine.evaluate(theta + step, 0) - engine.evaluate(theta - step, 0)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(grad) > 32  # the network term reaches most pixels, not only the l∞ one


def test_adversarial_on_cifar10_batches_with_a_user_network(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(1))
    path = str(tmp_path / "cifar.h5")
    network = classifier.alexnet((3, 32, 32), 10, np.random.default_rng(2), channels=(2, 2), hidden=4)
    classifier.save_network(network, path)
    params = {**DEFAULTS, "dataset": "cifar10", "data_dir": str(tmp_path), "network": path, "image_index": 2}
    problem = build("adversarial", **params)
    assert problem.graph.dim == 3072 and problem.graph.depth == 13
    assert np.array_equal(problem.x0, datasets.load("cifar10", str(tmp_path)).test_images[2].ravel())
    with pytest.raises(ValueError, match=r"image-index must be in \[0, 3\)"):
        build("adversarial", **{**params, "image_index": 3})


def test_short_pprs_attack_decreases_the_objective(tmp_trace):
    out = tmp_trace()
    assert main(["--problem", "adversarial", "--algo", "pprs", "-K", "4", "--gamma", "1e-3", "--lr", "1e-4",
                 "--iters", "20", "--eval-every", "20", "--quiet", "--out", out]) == 0
    start, end = f_eval(out)
    assert end < start


def test_fewshot_graph_reads_two_weight_slices_of_theta():
    problem = build("fewshot", **FEWSHOT)
    graph, net = problem.graph, classifier.load_network(classifier.default_network_path())
    assert len(graph.children["theta"]) >= 2 and graph.depth == 5
    assert graph.dim == 64 * 128 + 64 + 10 * 64 + 10 == problem.x0.size
    assert graph.op("loss").targets.size == 10 and sorted(graph.op("loss").targets) == list(range(10))
    unperturbed = build("fewshot", **{**FEWSHOT, "init_noise": 0.0})
    head = [net.layers[i].arrays[k].ravel() for i in (7, 9) for k in ("weight", "bias")]
    assert np.array_equal(unperturbed.x0, np.concatenate(head))
    assert unperturbed.describe_point(unperturbed.x0)["held_out_accuracy"] == pytest.approx(
        net.meta["held_out_accuracy"])


def test_short_pprs_fine_tuning_improves_the_loss(tmp_trace):
    out = tmp_trace()
    assert main(["--problem", "fewshot", "--shots", "10", "--algo", "pprs", "-K", "4", "--gamma", "1e-2",
                 "--lr", "1e-2", "--iters", "10", "--eval-every", "10", "--quiet", "--out", out]) == 0
    start, end = f_eval(out)
    assert end < start
    problem = build("fewshot", **FEWSHOT)
    before, after = problem.describe_point(problem.x0), problem.describe_point(load(out).result["y"])
    assert after["shot_accuracy"] >= before["shot_accuracy"] and set(after) == {"shot_accuracy", "held_out_accuracy"}


@pytest.mark.parametrize("flags, message", [
    (["--problem", "adversarial", "--target", "10"], "target must be a class in [0, 10)"),
    (["--problem", "adversarial", "--image-index", "359"], "image-index must be in [0, 359)"),
    (["--problem", "adversarial", "--network", "missing.h5"], "network file 'missing.h5' does not exist"),
    (["--problem", "adversarial", "--dataset", "cifar10"], "dataset 'cifar10' needs --network"),
])
def test_bad_problem_parameters_exit_2_with_one_line(flags, message, tmp_trace):
    result = solve(*flags, "--iters", "1", "--out", tmp_trace(), timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.parametrize("params, message", [
    ({"shots": 0}, r"shots must be in \[1, 1330\]"),
    ({"init_noise": -1.0}, "init-noise must be finite and >= 0"),
])
def test_bad_fewshot_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        build("fewshot", **{**FEWSHOT, **params})
