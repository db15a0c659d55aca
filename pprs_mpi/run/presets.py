"""--preset theorem3|theorem4: K, γ, η, μ (and T) from the problem's constants by Theorem 3 or 4, for the
values the user did not set; and the bases of the theorem3 schedules (`parameters`)."""

from __future__ import annotations

import numpy as np

from pprs_mpi import config, optim, parameters
from pprs_mpi.config import ConfigError
from pprs_mpi.problems import Problem


def apply_preset(cfg: config.RunConfig, problem: Problem) -> config.RunConfig:
    """`cfg` with K, γ, η, μ (and T) from Theorem 3 or 4; values the user set explicitly win."""
    if cfg.algorithm.preset == "none" or cfg.output.resume:  # a resumed run keeps the values the preset gave it
        return cfg
    L, R, d = problem.lipschitz, problem.radius, problem.graph.dim
    if L is None:
        raise ConfigError(f"--preset {cfg.algorithm.preset} needs a Lipschitz bound, which problem {problem.name!r} "
                          "does not know")
    try:
        if cfg.algorithm.preset == "theorem3":
            if R is None:
                raise ConfigError(f"--preset theorem3 needs R, which problem {problem.name!r} does not know")
            use_eps = "eps" in cfg.meta.given and "iters" not in cfg.meta.given
            preset = optim.theorem3(L, R, d, iters=None if use_eps else cfg.algorithm.iters,
                                    eps=cfg.algorithm.eps if use_eps else None)
        else:
            if cfg.algorithm.eps is None or cfg.algorithm.smoothing_radius is None:
                raise ConfigError("--preset theorem4 needs --eps and --smoothing-radius")
            preset = optim.theorem4(L, _initial_gap(problem), d, cfg.algorithm.eps, cfg.algorithm.smoothing_radius)
    except (ValueError, ZeroDivisionError, OverflowError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"--preset {cfg.algorithm.preset}: no usable parameters for these values "
                          f"({type(err).__name__}: {err})") from None
    return cfg.replace(**{key: getattr(preset, key) for key in ("K", "gamma", "lr", "mu", "iters")
                          if key not in cfg.meta.given}, preset_source=preset.source)


def apply_schedule_bases(cfg: config.RunConfig, problem: Problem) -> config.RunConfig:
    """`cfg` with γ and η of a theorem3 schedule from the problem's L, R and d (Theorem 3 at T = 0), unless the
    user set them; a resumed run keeps its stored values."""
    algorithm = cfg.algorithm
    wanted = [key for key, kind in (("gamma", algorithm.gamma_schedule), ("lr", algorithm.lr_schedule))
              if kind == "theorem3" and key not in cfg.meta.given]
    if not wanted or cfg.output.resume:
        return cfg
    L, R = problem.lipschitz, problem.radius
    if L is None or R is None:
        raise ConfigError(f"the theorem3 schedule needs L and R, which problem {problem.name!r} does not know: "
                          f"give --{' and --'.join(wanted)}")
    bases = parameters.theorem3_bases(L, R, problem.graph.dim)
    return cfg.replace(**{key: bases[key] for key in wanted})


def _initial_gap(problem: Problem) -> float:
    """D = f(θ_0) − f* for Theorem 4, from one plain forward pass on the host."""
    if problem.f_star is None:
        raise ConfigError(f"--preset theorem4 needs f*, which problem {problem.name!r} does not know")
    graph, values = problem.graph, {problem.graph.root: problem.x0[None, :]}
    for name in graph.order:
        values[name] = graph.op(name).forward(np, *[values[p] for p in graph.parents(name)])
    return float(values[graph.leaf][0]) - problem.f_star
