"""The run configuration: defaults, then a TOML file (--config), then command-line flags.

Every mistake becomes a `ConfigError` whose message is one line naming the problem; `solve`
prints it and exits with code 2.
"""

from __future__ import annotations

import argparse
import math
import sys

from pprs_mpi import optim
from pprs_mpi.backend import DEVICES, DTYPES
from pprs_mpi.faults import Fault
from pprs_mpi.problems import registry
from pprs_mpi.schedule import SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """Bad user input; the message is one line."""


ENGINES = ("auto", "serial", "mpi")
PRESETS = ("none", "theorem3", "theorem4")
BALANCES = ("declared", "measured")
NOISE_SOURCES = ("device", "host")

DEFAULTS = {
    "problem": "lad", "algo": "pprs", "K": None, "gamma": None, "lr": 0.01, "mu": None,
    "iters": 200, "seed": 0, "schedule": "gpipe", "microbatch_size": 1, "eval_every": 10,
    "out": "run.h5", "engine": "auto", "stages": None, "device": "cpu", "dtype": "float64", "noise_source": "device",
    "preset": "none", "balance": "declared", "eps": None, "smoothing_radius": None, "simulated_depth": None,
    "comm_timeout": None, "inject_fault": None, "checkpoint_every": 0, "timeline_every": None, "expect_ranks": None, "resume": None, "overwrite": False, "quiet": False, "progress_every": None,
}
# What each algorithm means when the user leaves K, γ or μ unset (Algorithm 1 with other settings).
ALGORITHM_DEFAULTS = {
    "pprs": {"K": 8, "gamma": 0.01, "mu": 0.0},
    "gd": {"K": 1, "gamma": 0.0, "mu": 0.0},
    "agd": {"K": 1, "gamma": 0.0, "mu": optim.AGD_DEFAULT_MU},
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one line
        raise ConfigError(message)


def _mu(text: str):
    return text if text == "nesterov" else float(text)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pprs_mpi.solve", argument_default=argparse.SUPPRESS,
                description="Minimise a computation graph with PPRS, GD or AGD; writes an HDF5 trace.")
    p.add_argument("--config", help="TOML file with any of the options below (flags override it)")
    p.add_argument("--problem", help=f"built-in problem (default {DEFAULTS['problem']}): " + ", ".join(
        f"{name} = {spec.summary}" for name, spec in registry().items()))
    p.add_argument("--algo", choices=optim.ALGORITHMS, help="pprs (default), gd, or agd")
    p.add_argument("-K", "--samples", dest="K", type=int, help="noisy samples per iteration (pprs default 8)")
    p.add_argument("--gamma", type=float, help="smoothing γ ≥ 0 (pprs default 0.01; gd/agd: 0)")
    p.add_argument("--lr", type=float, help="step size η > 0 (default 0.01)")
    p.add_argument("--mu", type=_mu, help="momentum μ in [0, 1) or 'nesterov' (pprs/gd 0, agd 0.99)")
    p.add_argument("--iters", type=int, help="iterations T (default 200)")
    p.add_argument("--seed", type=int, help="noise seed (default 0)")
    p.add_argument("--preset", choices=PRESETS,
                   help="theorem3: K, γ, η, μ from the problem's L, R and T (or --eps); theorem4: γ, η, K, T from L, D, --eps, --smoothing-radius")
    p.add_argument("--eps", type=float, help="target precision ε for the presets")
    p.add_argument("--smoothing-radius", dest="smoothing_radius", type=float, help="r of Theorem 4")
    p.add_argument("--schedule", choices=SCHEDULES, help="pipeline schedule (default gpipe)")
    p.add_argument("--microbatch-size", dest="microbatch_size", type=int, help="noisy copies per message b (default 1)")
    p.add_argument("--eval-every", dest="eval_every", type=int, help="evaluate f(y_t) every N iterations and at the end, 0 = only at the end (default 10)")
    p.add_argument("--simulated-depth", dest="simulated_depth", type=int,
                   help="count pipeline time as if the graph had this depth (labelled simulated)")
    p.add_argument("--out", help="trace file to write (default run.h5)")
    p.add_argument("--engine", choices=ENGINES, help="auto (default): mpi when run on several ranks")
    p.add_argument("--balance", choices=BALANCES,
                   help="group nodes into stages by the ops' declared costs (default) or by measured times")
    p.add_argument("--stages", type=int, help="serial engine: pipeline stages to emulate (default: one per node)")
    p.add_argument("--device", choices=DEVICES, help="cpu (default), gpu, or auto")
    p.add_argument("--noise-source", dest="noise_source", choices=NOISE_SOURCES,
                   help="GPU ranks: draw X_k on the device (default) or on the host, bitwise as on a CPU run")
    p.add_argument("--dtype", choices=DTYPES, help="float64 (default) or float32")
    p.add_argument("--expect-ranks", dest="expect_ranks", type=int,
                   help="fail unless the job has exactly N MPI ranks (job scripts pass the tasks Slurm granted)")
    p.add_argument("--comm-timeout", dest="comm_timeout", type=float, help="abort if a rank waits longer than S seconds")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                   help="write a checkpoint into the trace every N iterations (default 0: only on SIGTERM/SIGUSR1)")
    p.add_argument("--timeline-every", dest="timeline_every", type=int,
                   help="record the per-rank timeline every N iterations (default: about 100 iterations in all)")
    p.add_argument("--resume", metavar="RUN.h5",
                   help="continue the run of this trace from its last checkpoint, with its stored configuration")
    p.add_argument("--inject-fault", dest="inject_fault", metavar="RANK:ITER:KIND",
                   help="testing: make RANK raise, exit or hang at iteration ITER (also env PPRS_FAULT)")
    p.add_argument("--progress-every", dest="progress_every", type=int, help="iterations between progress lines")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (refused otherwise)")
    group = p.add_argument_group("problem parameters")
    for name, param in _problem_parameters().items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=param.type, help=param.help)
    return p


def _problem_parameters() -> dict:
    params = {}
    for spec in registry().values():
        params.update(spec.parameters)
    return params


# What a resumed run may change: nothing that alters the iterates, only how far and how it is run.
RESUME_OVERRIDES = {"resume", "iters", "quiet", "overwrite", "progress_every", "comm_timeout", "checkpoint_every", "timeline_every",
                    "expect_ranks",
                    "inject_fault", "engine", "stages", "balance", "eval_every"}


def load(argv: list[str] | None = None) -> dict:
    """The merged, validated configuration; `given` lists the keys the user set (file or flags)."""
    flags = vars(parser().parse_args(argv))
    from_file = _read_toml(flags.pop("config")) if "config" in flags else {}
    given = {**from_file, **flags}
    if given.get("resume"):
        return _resumed(given)
    cfg = {**DEFAULTS, **given}
    if cfg["problem"] not in registry():
        raise ConfigError(f"unknown problem '{cfg['problem']}': choose one of {', '.join(sorted(registry()))}")
    if cfg["algo"] not in optim.ALGORITHMS:
        raise ConfigError(f"unknown algo '{cfg['algo']}': choose one of {', '.join(optim.ALGORITHMS)}")
    spec = registry()[cfg["problem"]]
    foreign = sorted(set(given) & set(_problem_parameters()) - set(spec.parameters))
    if foreign:
        raise ConfigError(f"option '{foreign[0]}' does not apply to problem '{cfg['problem']}'")
    cfg["problem_params"] = {name: given.get(name, param.default) for name, param in spec.parameters.items()}
    for name in spec.parameters:
        cfg.pop(name, None)
    for key, value in ALGORITHM_DEFAULTS[cfg["algo"]].items():
        if cfg[key] is None:
            cfg[key] = value
    cfg["given"] = sorted(given)
    return _finish(cfg)


def _finish(cfg: dict) -> dict:
    """Validates the merged configuration and fills the defaults that depend on other settings."""
    validate(cfg)
    if cfg["timeline_every"] is None:
        cfg["timeline_every"] = max(1, math.ceil(cfg["iters"] / 100))
    return cfg


def _resumed(given: dict) -> dict:
    """The stored configuration of the trace to resume, with the few settings a resume may change."""
    from pprs_mpi.trace import TraceError, load as load_trace
    path = given["resume"]
    changed = sorted(set(given) - RESUME_OVERRIDES)
    if changed:
        raise ConfigError(f"--resume continues the stored configuration; '{changed[0]}' cannot be changed")
    try:
        trace = load_trace(path)
    except TraceError as err:
        raise ConfigError(f"cannot resume: {err}") from None
    if not trace.has_checkpoint:
        raise ConfigError(f"cannot resume: {path} holds no checkpoint")
    stored = trace.config
    if set(DEFAULTS) - set(stored) - {"resume", "overwrite"} or not isinstance(stored.get("problem_params"), dict):
        raise ConfigError(f"cannot resume: {path} was written by an incompatible pprs_mpi")
    cfg = {**stored, "inject_fault": None, "overwrite": False, **given, "out": path, "given": sorted(given)}  # a fault is not replayed
    if cfg["problem"] not in registry():
        raise ConfigError(f"cannot resume: {path} names an unknown problem '{cfg['problem']}'")
    _check_problem_params(cfg["problem"], cfg["problem_params"])
    return _finish(cfg)


def _check_problem_params(problem: str, params: dict) -> None:
    """The stored parameters of `problem` are exactly its own, each of its type."""
    spec = registry()[problem].parameters
    if set(params) != set(spec):
        raise ConfigError(f"problem '{problem}' takes parameters {sorted(spec)}, got {sorted(params)}")
    for name, value in params.items():
        kind = (int, float) if spec[name].type is float else spec[name].type
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"problem parameter '{name}' must be {spec[name].type.__name__}, got {value!r}")


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config file '{path}': {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from None
    actions = {a.dest: a for a in parser()._actions if a.dest not in ("help", "config")}
    normalized = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        name = "K" if name in ("k", "samples") else name
        if name not in actions:
            raise ConfigError(f"unknown key '{key}' in config file '{path}'")
        normalized[name] = _typed(key, value, actions[name])
    return normalized


def _typed(key: str, value, action: argparse.Action):
    """A TOML value checked against what the matching flag accepts (TOML already gives it a type)."""
    if isinstance(action, argparse._StoreTrueAction):
        expected, ok = "true or false", isinstance(value, bool)
    elif action.type is int:
        expected, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif action.type in (float, _mu):
        expected = "a number" + (" or 'nesterov'" if action.type is _mu else "")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (action.type is _mu and value == "nesterov")
        value = float(value) if ok and value != "nesterov" else value
    else:
        expected, ok = "a string", isinstance(value, str)
    if ok and action.choices is not None and value not in action.choices:
        expected, ok = "one of " + ", ".join(map(str, action.choices)), False
    if not ok:
        raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
    return value


def validate(cfg: dict) -> None:
    """Raises ConfigError for values no run can use."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg["algo"] in optim.ALGORITHMS, f"unknown algo '{cfg['algo']}': choose one of {', '.join(optim.ALGORITHMS)}")
    checks = {"K": int, "iters": int, "seed": int, "microbatch_size": int, "eval_every": int,
              "gamma": (int, float), "lr": (int, float)}
    for key, kind in checks.items():
        need(isinstance(cfg[key], kind) and not isinstance(cfg[key], bool), f"{key} must be a number, got {cfg[key]!r}")
    need(cfg["K"] >= 1, f"K must be >= 1, got {cfg['K']}")
    need(math.isfinite(cfg["gamma"]) and cfg["gamma"] >= 0, f"gamma must be >= 0, got {cfg['gamma']}")
    need(math.isfinite(cfg["lr"]) and cfg["lr"] > 0, f"lr must be > 0, got {cfg['lr']}")
    need(cfg["iters"] >= 1, f"iters must be >= 1, got {cfg['iters']}")
    need(0 <= cfg["seed"] < 2**63, f"seed must be in [0, 2**63), got {cfg['seed']}")
    need(cfg["microbatch_size"] >= 1, f"microbatch-size must be >= 1, got {cfg['microbatch_size']}")
    need(cfg["eval_every"] >= 0, f"eval-every must be >= 0, got {cfg['eval_every']}")
    mu = cfg["mu"]
    need(mu == "nesterov" or (isinstance(mu, (int, float)) and 0 <= mu < 1),
         f"mu must be in [0, 1) or 'nesterov', got {mu!r}")
    if cfg["algo"] in ("gd", "agd"):
        need(cfg["gamma"] == 0, f"{cfg['algo']} uses no smoothing: gamma must be 0, got {cfg['gamma']}")
    for key, choices in (("schedule", SCHEDULES), ("engine", ENGINES), ("device", DEVICES),
                         ("dtype", DTYPES), ("preset", PRESETS), ("balance", BALANCES),
                         ("noise_source", NOISE_SOURCES)):
        need(cfg[key] in choices, f"{key} must be one of {', '.join(choices)}, got {cfg[key]!r}")
    need(isinstance(cfg["checkpoint_every"], int) and cfg["checkpoint_every"] >= 0,
         f"checkpoint-every must be >= 0, got {cfg['checkpoint_every']!r}")
    for key in ("stages", "simulated_depth", "progress_every", "timeline_every", "expect_ranks"):
        need(cfg[key] is None or (isinstance(cfg[key], int) and cfg[key] >= 1), f"{key} must be >= 1, got {cfg[key]!r}")
    need(cfg["comm_timeout"] is None or cfg["comm_timeout"] > 0, f"comm-timeout must be > 0, got {cfg['comm_timeout']}")
    need(isinstance(cfg["out"], str) and cfg["out"] != "", "out must be a file path")
    if cfg["inject_fault"] is not None:
        try:
            Fault.parse(str(cfg["inject_fault"]))
        except ValueError as err:
            raise ConfigError(str(err)) from None
