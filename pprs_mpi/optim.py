"""The optimizer seam, and Algorithm 1 of the paper (PPRS) and its baselines, GD and AGD, as its first user.

An `Optimizer` turns G_t into the next iterate; its state is a dict of named arrays, which is also
what a checkpoint stores and a resume reads back (so a stateful optimizer, Adam or an adaptive step,
needs no change to the driver or the checkpoint code: register it and select it with --optimizer).

The update is y_{t+1} = x_t − η G_t, x_{t+1} = (1 + μ_t) y_{t+1} − μ_t y_t, where G_t is the
mean of K gradients at x_t + γX_k. GD is K = 1, γ = 0, μ = 0; AGD is K = 1, γ = 0 with μ = 0.99
or the Nesterov sequence; GPipe is γ = 0 with K > 1. (`--algo gd|agd` sets these K and μ unless
the user sets them, and requires γ = 0.) The presets compute the parameters of
Theorems 3 and 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

from pprs_mpi import parameters

ALGORITHMS = ("pprs", "gd", "agd")
AGD_DEFAULT_MU = 0.99
DEFAULT = "algorithm1"


class Optimizer(Protocol):
    """One update rule. Its state is a dict of named arrays, among them "x" (where G_t is taken) and "y"
    (the iterate whose f(y) the trace reports); `names` lists them all, the arrays a checkpoint must hold.

    `init` gets the start x_0 as a host (NumPy) array; `step` gets the state as the backend's arrays and
    must use array operators only (no `np.` calls), so that it runs on NumPy and CuPy alike. `step` is a
    pure function of (state, G_t, t): a resume from the stored state is bitwise the uninterrupted run.
    """

    names: tuple[str, ...]

    def init(self, x0) -> dict: ...
    def step(self, state: dict, grad, t: int) -> dict: ...


OPTIMIZERS: dict[str, Callable[[object], Optimizer]] = {}


def register(name: str, factory: Callable[[object], Optimizer]) -> None:
    """Makes `factory(algorithm)` the optimizer selected by `--optimizer name` (a name is registered once);
    `algorithm` is the run configuration's algorithm section (`lr`, `mu`, `K`, `gamma`, `iters`, `seed`, ...)."""
    if name in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is already registered")
    OPTIMIZERS[name] = factory


def build(algorithm) -> Optimizer:
    """The optimizer a run's configuration (its algorithm section) selects."""
    return OPTIMIZERS[algorithm.optimizer](algorithm)


class Algorithm1:
    """Lines 5-6 of Algorithm 1 with step size η_t and momentum μ_t (PPRS, GD and AGD alike); state x_t, y_t.
    `lr` is η, or a function of t (a schedule of `parameters`)."""

    names = ("x", "y")

    def __init__(self, lr: float | Callable[[int], float], mu: float | str):
        self.lr = lr if callable(lr) else (lambda t, constant=float(lr): constant)
        self.momentum = Momentum(mu)

    def init(self, x0) -> dict:
        """Algorithm 1's line 1: x_0 = y_0 (the paper's 0, or the problem's own start)."""
        return {"x": x0, "y": x0}

    def step(self, state: dict, grad, t: int) -> dict:
        x, y = update(state["x"], state["y"], grad, self.lr(t), self.momentum(t))
        return {"x": x, "y": y}


class Momentum:
    """μ_t: either a constant or the Nesterov sequence ('nesterov'); a pure function of t.

    The sequence is μ_t = (λ_{t+1} − 1)/λ_{t+2} with λ_0 = 0, λ_t = (1 + √(1 + 4λ_{t−1}²))/2: the
    momentum of the accelerated method the paper cites ([18], Bubeck §3.7), counted so that μ_0 = 0.
    The paper prints μ_t = λ_{t−1}/λ_{t+1}, undefined at t = 0 and tending to 1 − 2/t, too slowly
    for the O(1/t²) rate; we read it as Bubeck's (λ_s − 1)/λ_{s+1}.
    """

    def __init__(self, mu: float | str):
        self.constant = None if mu == "nesterov" else float(mu)
        if self.constant is not None and not 0.0 <= self.constant < 1.0:
            raise ValueError(f"mu must be in [0, 1) or 'nesterov', got {mu}")
        self._lambdas = [0.0]  # λ_0, λ_1, ... extended on demand, so any t costs O(1) amortised

    def __call__(self, t: int) -> float:
        if self.constant is not None:
            return self.constant
        while len(self._lambdas) <= t + 2:
            lam = self._lambdas[-1]
            self._lambdas.append((1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0)
        return (self._lambdas[t + 1] - 1.0) / self._lambdas[t + 2]


def update(x, y, grad, lr: float, mu: float):
    """Lines 5-6 of Algorithm 1: returns (x_{t+1}, y_{t+1}) from x_t, y_t and G_t."""
    y_next = x - lr * grad
    x_next = (1.0 + mu) * y_next - mu * y
    return x_next, y_next


register(DEFAULT, lambda algorithm: Algorithm1(parameters.step_size(algorithm), algorithm.mu))


@dataclass(frozen=True)
class Preset:
    """Parameters recommended by a theorem; `iters` is T, `mu` a number or 'nesterov'."""

    K: int
    gamma: float
    lr: float
    mu: float | str
    iters: int
    source: str


def theorem3(L: float, R: float, d: int, iters: int | None = None, eps: float | None = None) -> Preset:
    """Theorem 3 (convex, L-Lipschitz): K = ⌈(T+1)/√d⌉, η = R d^{-1/4} / (L(T+1)), μ_t Nesterov.

    γ is implicit in the theorem: η = 1/β for the (L/γ)-smooth f^γ gives γ = R d^{-1/4}/(T+1), which
    also makes the bias term γL√d the 3LRd^{1/4}/(T+1) of eq. (13). Given ε instead of T, T is the
    smallest one for which the bound of eq. (13) with this K, at most 3.5 LRd^{1/4}/(T+1), is ≤ ε.
    """
    _positive(L=L, R=R, d=d)
    if (iters is None) == (eps is None):
        raise ValueError("theorem3 needs exactly one of iters (T) or eps")
    if iters is None:
        _positive(eps=eps)
        iters = max(1, math.ceil(3.5 * L * R * d**0.25 / eps) - 1)
    T = int(iters)
    gamma = R * d ** -0.25 / (T + 1)
    return Preset(K=math.ceil((T + 1) / math.sqrt(d)), gamma=gamma, lr=gamma / L, mu="nesterov",
                  iters=T, source="Theorem 3, eq. (13)")


def theorem3_bound(L: float, R: float, d: int, iters: int, K: int) -> float:
    """Right-hand side of eq. (13): 3LRd^{1/4}/(T+1) + LRd^{-1/4}/(2K)."""
    return 3 * L * R * d**0.25 / (iters + 1) + L * R * d**-0.25 / (2 * K)


def theorem4(L: float, D: float, d: int, eps: float, r: float) -> Preset:
    """Theorem 4 (non-convex): γ = r/√(4 log(3L/ε) + 2 log(2e) d), η = γ/L, μ = 0,
    K = 18L²/ε², T = 36L(D + 2γL√d)/(γε²), both rounded up (eq. (14))."""
    _positive(L=L, D=D, d=d, eps=eps, r=r)
    spread = 4 * math.log(3 * L / eps) + 2 * math.log(2 * math.e) * d
    if spread <= 0:
        raise ValueError(f"eps={eps:g} is too large for L={L:g} and d={d}: Theorem 4's γ is undefined")
    gamma = r / math.sqrt(spread)
    return Preset(K=math.ceil(18 * L**2 / eps**2), gamma=gamma, lr=gamma / L, mu=0.0,
                  iters=math.ceil(36 * L * (D + 2 * gamma * L * math.sqrt(d)) / (gamma * eps**2)),
                  source="Theorem 4, eq. (14)")


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
