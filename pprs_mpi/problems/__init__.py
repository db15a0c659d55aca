"""Built-in objectives: each builder returns a `Problem` (a graph, a start, and what is known of it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pprs_mpi.graph import Graph


@dataclass
class Problem:
    """A graph to minimise over θ, where to start, and the facts the presets and the tests use.

    `f_star` and `theta_star` are the known optimum (None if unknown); `lipschitz` is an upper bound
    on L and `radius` is R = ‖θ_0 − θ*‖, used by the presets of Theorems 3 and 4.
    """

    name: str
    graph: Graph
    x0: np.ndarray
    f_star: float | None = None
    theta_star: np.ndarray | None = None
    lipschitz: float | None = None
    radius: float | None = None
    describe_point: Callable[[np.ndarray], dict] = field(default=lambda theta: {})


@dataclass(frozen=True)
class Parameter:
    """A problem option, exposed on the command line as --NAME (underscores become dashes)."""

    type: type
    default: object
    help: str


@dataclass(frozen=True)
class ProblemSpec:
    build: Callable[..., Problem]
    parameters: dict[str, Parameter]
    summary: str


def registry() -> dict[str, ProblemSpec]:
    """Every built-in problem by name (imported lazily so that `solve --help` stays fast)."""
    from pprs_mpi.problems import adversarial, fewshot, planted
    return {**planted.PROBLEMS, **adversarial.PROBLEMS, **fewshot.PROBLEMS}


def build(name: str, **params) -> Problem:
    specs = registry()
    if name not in specs:
        raise ValueError(f"unknown problem '{name}': choose one of {', '.join(sorted(specs))}")
    return specs[name].build(**params)
