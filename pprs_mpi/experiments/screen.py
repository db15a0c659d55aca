"""Which (image, target) pairs of an attack problem can be attacked at all, decided before any sweep.

f(x̃) = margin(x̃) + λ‖x̃ − x‖∞ starts at the clean image x. Nothing can be gained there when
  - the target is already reached: margin(x) = 0, the least value f can take; or
  - x is stationary: ‖∇margin(x)‖₁ < λ. Near x the network is piecewise linear, so
    f(x + δ) ≈ margin(x) + ⟨∇margin(x), δ⟩ + λ‖δ‖∞ ≥ f(x) + (λ − ‖∇margin(x)‖₁)‖δ‖∞:
    x is a local minimum.
Both numbers come from one plain gradient step of the problem with λ = 0 through `pprs_mpi.minimize`
(lr 1: ∇margin(x) = x − y_1, and f(y_0) = margin(x)), so the check uses the solver's own gradient.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from pprs_mpi import api, problems


def applies(problem: str) -> bool:
    """True for problems that attack an image with an l∞ weight λ (e.g. 'adversarial')."""
    spec = problems.registry().get(problem)
    return spec is not None and {"image_index", "lam"} <= set(spec.parameters)


def lam_of(problem: str, solve_options: dict) -> float:
    """The λ the runs use: the one given, else the problem's default."""
    return float(solve_options.get("lam", problems.registry()[problem].parameters["lam"].default))


def margin_gradient(problem: str, options: dict) -> tuple[float, np.ndarray]:
    """(margin(x), ∇margin(x)) at the clean image of a pair, by one plain step of lr 1 with λ = 0 through the
    solver; `options` are the pair's solve options, problem parameters among them."""
    from mpi4py import MPI
    spec = problems.registry()[problem]
    built = problems.build(problem, **{**{k: v for k, v in options.items() if k in spec.parameters}, "lam": 0.0})
    with tempfile.TemporaryDirectory() as folder:
        result = api.minimize(built, comm=MPI.COMM_SELF, algo="gd", lr=1.0, mu=0.0, iters=1, eval_every=1,
                              engine="serial", quiet=True, out=str(Path(folder) / "screen.h5"))
    return float(result.f_eval[0]), built.x0 - result.y


def screen_pair(problem: str, options: dict, lam: float) -> dict:
    """margin(x), ‖∇margin(x)‖₁ and the verdict for one pair: 'attackable', 'target reached' or 'stationary'."""
    margin, gradient = margin_gradient(problem, options)
    gradient_l1 = float(np.abs(gradient).sum())
    verdict = "target reached" if margin <= 0 else "stationary" if gradient_l1 < lam else "attackable"
    return {"margin": margin, "grad_l1": gradient_l1, "verdict": verdict}


def screen(out: Path, problem: str, options_of_pair, pairs: list[int], lam: float) -> dict[int, dict]:
    """pair → its screening, cached in OUT/pairs.json (so a resumed or collected sweep sees the same verdicts)."""
    path = out / "pairs.json"
    known = {int(p): v for p, v in json.loads(path.read_text()).items()} if path.exists() else {}
    missing = [p for p in pairs if p not in known]
    for pair in missing:
        known[pair] = screen_pair(problem, options_of_pair(pair), lam)
    if missing:
        temporary = out / f".pairs.{os.getpid()}.json"
        temporary.write_text(json.dumps({str(p): known[p] for p in sorted(known)}, indent=1))
        temporary.replace(path)  # atomic: shards screening at once never leave a half-written file
    return {p: known[p] for p in pairs}
