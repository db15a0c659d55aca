"""γ_t and η_t: the smoothing radius and the step size of iteration t, as pure functions of t.

Algorithm 1 fixes γ and η for a known horizon T (Theorem 3: γ = R d^{-1/4}/(T+1), η = γ/L). Users rarely
know T, so a run can let them change with t instead (`--gamma-schedule`, `--lr-schedule`):

- constant: γ_t = γ, η_t = η (the paper's; the default);
- theorem3: Theorem 3's values with the horizon T replaced by t, γ_t = γ/(1 + t) and η_t = η/(1 + t), γ and
  η by default the theorem's at T = 0 (R d^{-1/4} and R d^{-1/4}/L, filled in from the problem's constants
  by `run.presets`): at every t the parameters the theorem would pick had the run been meant to stop there;
- decay: γ_t = γ (1 + t/τ)^(-p), η_t likewise (`--decay-tau`, `--decay-power`), the randomized smoothing of
  Duchi, Bartlett and Wainwright shrinking its radius over time.

A schedule depends on t alone, not on T or on anything a rank holds, so every engine, rank layout and resume
computes the same γ_t and η_t bitwise: rank 0's root role draws θ = x_t + γ_t X_k with it, the divergence
locator redoes that pass, the optimizer steps with η_t and the trace stores both per row.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "theorem3", "decay")
DEFAULT_TAU = 10.0  # iterations before the decay sets in
DEFAULT_POWER = 0.5  # γ_t, η_t ~ t^(-1/2) in the long run: the classic rate for non-smooth stochastic steps


@dataclass(frozen=True)
class Schedule:
    """A value at iteration t: `base` scaled by the schedule `kind` (one of SCHEDULES)."""

    kind: str
    base: float
    tau: float = DEFAULT_TAU
    power: float = DEFAULT_POWER

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}: choose one of {', '.join(SCHEDULES)}")
        if not (self.tau > 0 and self.power > 0):
            raise ValueError(f"a decay needs tau > 0 and p > 0, got tau={self.tau:g}, p={self.power:g}")

    def __call__(self, t: int) -> float:
        if self.kind == "constant":
            return self.base
        if self.kind == "theorem3":
            return self.base / (1.0 + t)
        return self.base * (1.0 + t / self.tau) ** -self.power

    @property
    def constant(self) -> bool:
        return self.kind == "constant"


def smoothing(algorithm) -> Schedule:
    """γ_t of a run's algorithm section (`gamma`, `gamma_schedule`, `decay_tau`, `decay_power`)."""
    return Schedule(algorithm.gamma_schedule, float(algorithm.gamma), algorithm.decay_tau, algorithm.decay_power)


def step_size(algorithm) -> Schedule:
    """η_t of a run's algorithm section (`lr`, `lr_schedule`, `decay_tau`, `decay_power`)."""
    return Schedule(algorithm.lr_schedule, float(algorithm.lr), algorithm.decay_tau, algorithm.decay_power)


def theorem3_bases(L: float, R: float, d: int) -> dict[str, float]:
    """The theorem3 schedules' default γ and η: Theorem 3's at T = 0, γ = R d^{-1/4} and η = γ/L."""
    gamma = R * d ** -0.25
    return {"gamma": gamma, "lr": gamma / L}
