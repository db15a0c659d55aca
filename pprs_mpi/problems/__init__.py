"""Objectives: each builder returns a `Problem` (a graph, a start, and what is known of it).

A problem is named by a reference: a built-in name (`lad`), `FILE.py:FUNCTION` or
`package.module:FUNCTION` (see `user`). `spec_for` turns any reference into a `ProblemSpec`, whose
parameters type the builder's arguments for the command line, TOML files and the API alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pprs_mpi.graph import Graph, GraphError

REQUIRED = object()  # the default of a builder argument that has none
BUILDER_MARK = "__pprs_mpi_builder__"  # the attribute `builder` sets: a reference may name this function


def builder(function: Callable) -> Callable:
    """Marks `function` as a builder, so that a reference (`FILE.py:FUNCTION`, from a command line, a TOML
    file, a trace or the API) may name it; annotating it `-> Problem` or `-> Graph` does the same."""
    setattr(function, BUILDER_MARK, True)
    return function


@dataclass
class Problem:
    """A graph to minimise over θ, where to start, and the facts the presets and the tests use.

    `f_star` and `theta_star` are the known optimum (None if unknown); `lipschitz` is an upper bound
    on L and `radius` is R = ‖θ_0 − θ*‖, used by the presets of Theorems 3 and 4. `x0` defaults to 0.
    """

    name: str
    graph: Graph
    x0: np.ndarray | None = None
    f_star: float | None = None
    theta_star: np.ndarray | None = None
    lipschitz: float | None = None
    radius: float | None = None
    describe_point: Callable[[np.ndarray], dict] = field(default=lambda theta: {})

    def __post_init__(self):
        self.x0 = np.zeros(self.graph.dim) if self.x0 is None else np.asarray(self.x0, dtype=float)
        if self.x0.shape != (self.graph.dim,):
            raise ValueError(f"problem {self.name!r}: x0 has shape {self.x0.shape}, the root needs ({self.graph.dim},)")


@dataclass(frozen=True)
class Parameter:
    """A builder argument, given as --problem-arg NAME=VALUE (built-ins also as --NAME)."""

    type: type
    default: object
    help: str = ""


@dataclass(frozen=True)
class ProblemSpec:
    """A builder, its typed parameters, and the reference that names it in configurations and traces."""

    build: Callable[..., Problem | Graph]
    parameters: dict[str, Parameter]
    summary: str
    reference: str = ""

    def make(self, params: dict) -> Problem:
        """Calls the builder; a bare Graph becomes a Problem started at θ = 0 with nothing known."""
        made = self.build(**params)
        if isinstance(made, Graph):
            return Problem(self.reference, made)
        if not isinstance(made, Problem):  # a GraphError: the user's mistake, not an error the builder raised
            raise GraphError(f"problem {self.reference!r}: the builder returned {type(made).__name__}, "
                             "expected a pprs_mpi Problem or Graph")
        return made

    def arguments(self, values: dict, exact: bool = False, partial: bool = False) -> dict:
        """`values` (text from --problem-arg, or typed from TOML, the API or a trace) checked and typed;
        the defaults fill the rest unless `partial`. `exact`: every parameter must be present."""
        unknown = sorted(set(values) - set(self.parameters))
        if unknown:
            raise ValueError(f"problem {self.reference!r} has no argument {unknown[0]!r} "
                             f"(it takes: {', '.join(self.parameters) or 'none'})")
        if exact and set(values) != set(self.parameters):
            raise ValueError(f"problem {self.reference!r} takes parameters {sorted(self.parameters)}, "
                             f"got {sorted(values)}")
        typed = {name: _typed(name, value, self.parameters[name]) for name, value in values.items()}
        if partial:
            return typed
        missing = [name for name, p in self.parameters.items() if name not in typed and p.default is REQUIRED]
        if missing:
            raise ValueError(f"problem {self.reference!r} needs --problem-arg {missing[0]}=VALUE")
        return {name: typed.get(name, p.default) for name, p in self.parameters.items()}


class Text(str):
    """A builder argument as the command line gives it (--problem-arg NAME=VALUE): converted to the
    parameter's type. A plain str (from the API or TOML) is a value, so "24" is refused for an int."""


def plain(value):
    """A NumPy scalar as the Python value it holds (np.int64(24) -> 24, np.float32 -> float), so that the
    API takes what NumPy code computes; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _typed(name: str, value, param: Parameter):
    """A parameter value of the parameter's type: command-line text is converted, NumPy scalars are taken
    as their Python values, and anything else must already be of the type."""
    kind, value = param.type, plain(value)
    if isinstance(value, Text) and kind is not str:
        try:
            value = _BOOLEANS[value.strip().lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            raise ValueError(f"problem parameter {name!r} must be {kind.__name__}, got {value!r}") from None
    accepted = (int, float) if kind is float else kind
    if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"problem parameter {name!r} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def registry() -> dict[str, ProblemSpec]:
    """Every built-in problem by name (imported lazily so that `solve --help` stays fast)."""
    from pprs_mpi.problems import adversarial, fewshot, planted, probe, ring, worstcase
    specs = {**planted.PROBLEMS, **adversarial.PROBLEMS, **fewshot.PROBLEMS, **probe.PROBLEMS, **worstcase.PROBLEMS,
             **ring.PROBLEMS}
    return {name: ProblemSpec(s.build, s.parameters, s.summary, name) for name, s in specs.items()}


def builtin_parameters() -> dict[str, Parameter]:
    """The parameters of every built-in problem, which are also flags of their own (--depth)."""
    params = {}
    for spec in registry().values():
        params.update(spec.parameters)
    return params


def spec_for(reference: str) -> ProblemSpec:
    """The spec of a built-in name, FILE.py:FUNCTION or package.module:FUNCTION; ValueError if none."""
    specs = registry()
    if reference in specs:
        return specs[reference]
    if ":" not in reference:
        raise ValueError(f"unknown problem {reference!r}: choose one of {', '.join(sorted(specs))}, "
                         "or name a builder as FILE.py:FUNCTION or package.module:FUNCTION")
    from pprs_mpi.problems.user import load_builder
    return load_builder(reference)


def build(name: str, **params) -> Problem:
    """The problem `name` (any reference) built with `params` (missing ones take their defaults)."""
    spec = spec_for(name)
    return spec.make(spec.arguments(params))
