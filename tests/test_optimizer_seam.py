"""The optimizer seam, measured: a stateful optimizer (Adam on G_t) added in this one file, with no change to
the package, runs, checkpoints its moments, resumes bitwise and gives the same iterates serial and under MPI.

Run as a script (`python tests/test_optimizer_seam.py ARGS`, also under mpirun) it registers Adam and
solves with ARGS, as `python -m pprs_mpi.solve` would.
"""

import sys

import numpy as np
import pytest

from conftest import run
from pprs_mpi import optim
from pprs_mpi.trace import load, read_checkpoint


class Adam:
    """Adam (Kingma and Ba) on G_t, with bias correction; x = y is the iterate, m and v its moments."""

    names = ("x", "y", "m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps

    def init(self, x0) -> dict:
        return {"x": x0, "y": x0, "m": np.zeros_like(x0), "v": np.zeros_like(x0)}

    def step(self, state: dict, grad, t: int) -> dict:
        m = self.beta1 * state["m"] + (1 - self.beta1) * grad
        v = self.beta2 * state["v"] + (1 - self.beta2) * grad * grad
        m_hat, v_hat = m / (1 - self.beta1 ** (t + 1)), v / (1 - self.beta2 ** (t + 1))
        x = state["x"] - self.lr * m_hat / (v_hat ** 0.5 + self.eps)
        return {"x": x, "y": x, "m": m, "v": v}


if "adam" not in optim.OPTIMIZERS:
    optim.register("adam", lambda algorithm: Adam(algorithm.lr))

ARGS = ["--optimizer", "adam", "--problem", "branch", "--depth", "4", "-K", "5", "--microbatch-size", "2",
        "--gamma", "0.05", "--lr", "0.02", "--eval-every", "2", "--seed", "7", "--quiet", "--dim", "6", "--rows", "8"]


def adam_solve(*args, ranks=None):
    """This file as a script: the solver with Adam registered (under mpirun on `ranks` ranks)."""
    command = [sys.executable, __file__, *map(str, args)]
    result = run(command if ranks is None else ["mpirun", "-n", str(ranks), *command])
    assert result.returncode == 0, result.stderr
    return result


def assert_same_run(a, b):
    """Bitwise the same rows and result; f_eval where `a` has it (a run also evaluates at its own last iteration)."""
    for name in ("f_smoothed", "grad_norm", "iteration"):
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True), name
    evaluated = ~np.isnan(a.columns["f_eval"])
    assert np.array_equal(a.columns["f_eval"][evaluated], b.columns["f_eval"][evaluated])
    assert np.array_equal(a.result["y"], b.result["y"]) and np.array_equal(a.result["x"], b.result["x"])


def test_adam_checkpoints_its_moments_and_resumes_bitwise(tmp_trace):
    adam_solve(*ARGS, "--iters", "6", "--engine", "serial", "--out", tmp_trace("whole.h5"))
    adam_solve(*ARGS, "--iters", "3", "--engine", "serial", "--out", tmp_trace("split.h5"))
    arrays, attrs = read_checkpoint(tmp_trace("split.h5"))
    assert set(arrays) == {"x", "y", "m", "v"} and attrs["iteration"] == 3 and np.any(arrays["v"] > 0)
    adam_solve("--resume", tmp_trace("split.h5"), "--iters", "6", "--quiet")
    whole, split = load(tmp_trace("whole.h5")), load(tmp_trace("split.h5"))
    assert split.config["optimizer"] == "adam"
    assert_same_run(whole, split)
    plain = run([sys.executable, "-m", "pprs_mpi.solve", *ARGS[2:], "--iters", "6", "--out", tmp_trace("plain.h5")])
    assert plain.returncode == 0, plain.stderr
    assert not np.array_equal(load(tmp_trace("plain.h5")).result["y"], whole.result["y"])  # Adam did run


def test_a_trace_of_an_unregistered_optimizer_is_refused_in_one_line(tmp_trace):
    adam_solve(*ARGS, "--iters", "2", "--engine", "serial", "--out", tmp_trace())
    refused = run([sys.executable, "-m", "pprs_mpi.solve", "--resume", tmp_trace(), "--iters", "4"])
    assert refused.returncode == 2 and "unknown optimizer 'adam': choose one of algorithm1" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.mpi
def test_adam_is_bitwise_the_same_serial_and_under_mpi(tmp_trace):
    adam_solve(*ARGS, "--iters", "6", "--engine", "serial", "--stages", "3", "--out", tmp_trace("serial.h5"))
    adam_solve(*ARGS, "--iters", "6", "--out", tmp_trace("mpi.h5"), ranks=3)
    serial, parallel = load(tmp_trace("serial.h5")), load(tmp_trace("mpi.h5"))
    assert parallel.attrs["engine"] == "mpi" and parallel.attrs["ranks"] == 3
    assert_same_run(serial, parallel)


if __name__ == "__main__":
    from pprs_mpi.solve import main
    sys.exit(main(sys.argv[1:]))
