"""benchmarks/vs_hand_loop.py's hand loops compute what pprs_mpi computes, so that its ratios compare the same
work: G_t and the K sample values against the serial engine's (a second, independent path), and the step
against Algorithm 1's update."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install 'pprs_mpi[torch]'): the benchmark's "
                                    "hand loop is torch code")

from pprs_mpi import optim  # noqa: E402
from pprs_mpi.api import engine_for  # noqa: E402
from pprs_mpi.engines.stage import Sampling  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import vs_hand_loop as bench  # noqa: E402


@pytest.mark.parametrize("kind", ["torch", "jax"])
@pytest.mark.parametrize("case_name", ["lad", "mlp64_K16", "adversarial"])
def test_the_hand_loops_gradient_values_and_step_are_pprs_mpis(kind, case_name):
    if kind == "jax":
        pytest.importorskip("jax", reason="JAX is not installed: no JAX loop to check")
    case = dataclasses.replace(bench.CASES[case_name], mu=0.5)  # a momentum, so that y_t enters the step
    problem = case.build()
    step, asarray, to_numpy = bench.hand_step(kind, problem, case)
    engine = engine_for(problem.graph, [tuple(problem.graph.order)],
                        Sampling(K=case.K, gamma=case.gamma, seed=case.seed, microbatch_size=case.K))
    rng = np.random.default_rng(1)
    y = problem.x0 + 0.01 * rng.standard_normal(problem.x0.shape)
    for t, x in ((0, problem.x0), (7, problem.x0 + 0.01 * rng.standard_normal(problem.x0.shape))):
        x_next, y_next, values, grad = (to_numpy(a) for a in step(asarray(x.copy()), asarray(y.copy()), t))
        G, engine_values = engine.gradient(x, t)
        assert np.linalg.norm(G) > 0
        np.testing.assert_allclose(grad, G, rtol=1e-10, atol=1e-12 * np.abs(G).max())
        np.testing.assert_allclose(values, engine_values, rtol=1e-12)
        expected_x, expected_y = optim.update(x, y, G, case.lr, case.mu)
        np.testing.assert_allclose(y_next, expected_y, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(x_next, expected_x, rtol=1e-12, atol=1e-14)


def test_only_a_chain_of_affine_and_relu_layers_ending_in_an_l1_norm_is_taken():
    from pprs_mpi.problems import build
    with pytest.raises(ValueError, match="must end in an L1 norm, not LInfDistance"):
        bench.chain_layers(build("linf"))
    with pytest.raises(ValueError, match="not a chain"):
        bench.chain_layers(build("branch"))
