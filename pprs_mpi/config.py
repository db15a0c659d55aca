"""The run configuration, declared once: every option's type, default, choices, help, validity rule and
whether a resumed run may change it. The argparse flags, the TOML keys, the Python API's keyword
arguments, the validation and the resume rules are all derived from `OPTIONS`.

Sources, later ones winning: defaults, a TOML file (--config), command-line flags (or the keyword
arguments of `pprs_mpi.minimize`). Every mistake becomes a `ConfigError` whose message is one line
naming the problem; `solve` prints it and exits with code 2, the API raises it.

The result is a frozen `RunConfig`: one generated dataclass per section of `SECTIONS` (problem,
algorithm, pipeline, device, output), and beside them `meta`, what resolving found out (`given`,
`problem_params`, `preset_source`). A later change (a preset's parameters) is a validated `replace`.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
from dataclasses import dataclass, make_dataclass
from typing import Callable, Collection

from pprs_mpi import averaging, layout, optim, parameters, problems
from pprs_mpi.backend import DEVICES, DTYPES
from pprs_mpi.faults import Fault
from pprs_mpi.schedule import AUTO, ScheduleNames

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """Bad user input; the message is one line."""


ENGINES = ("auto", "serial", "mpi")
PRESETS = ("none", "theorem3", "theorem4")
BALANCES = ("auto", "declared", "measured")
NOISE_SOURCES = ("device", "host")
NOISES = ("gaussian", "antithetic")
MAX_CONFIG_BYTES = 1 << 20  # a run's TOML file is a few lines; more is a mistake (e.g. --config /dev/zero)


def _mu(text: str):
    return text if text == "nesterov" else float(text)


def _microbatch_size(text: str) -> int | str:
    try:
        return layout.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass(frozen=True)
class Option:
    """One run setting. `kind` converts a flag's text (int, float, str, bool for a switch, or `_mu`);
    `valid` and `rule` say which values a run can use; `resumable` settings may differ on --resume
    because they change how the run is done, not its iterates."""

    name: str
    kind: Callable
    default: object
    help: str
    choices: Collection | None = None  # a live view for registries (schedules, optimizers)
    valid: Callable[[object], bool] | None = None
    rule: str = ""
    resumable: bool = False
    flags: tuple[str, ...] = ()  # extra spellings of the flag, e.g. -K

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """The name used in error messages: K, lr, microbatch-size."""
        return self.name.replace("_", "-")


def _at_least(low: int):
    return lambda v: v is None or v >= low


OPTIONS = (
    Option("problem", str, "lad", "built-in problem name, FILE.py:FUNCTION or package.module:FUNCTION (a builder "
           "returning a Problem or a Graph; its arguments as --problem-arg NAME=VALUE)"),
    Option("algo", str, "pprs", "pprs (default), gd, or agd", choices=optim.ALGORITHMS),
    Option("optimizer", str, optim.DEFAULT, "the update rule: algorithm1 (default: the paper's, for pprs, gd and "
           "agd) or one registered with pprs_mpi.optim.register", choices=optim.OPTIMIZERS.keys()),
    Option("K", int, None, "noisy samples per iteration (pprs default 8)", valid=_at_least(1), rule=">= 1",
           flags=("-K", "--samples")),
    Option("gamma", float, None, "smoothing γ ≥ 0 (pprs default 0.01; gd/agd: 0)",
           valid=lambda v: v is None or (math.isfinite(v) and v >= 0), rule=">= 0"),
    Option("lr", float, 0.01, "step size η > 0 (default 0.01)", valid=lambda v: math.isfinite(v) and v > 0,
           rule="> 0"),
    Option("mu", _mu, None, "momentum μ in [0, 1) or 'nesterov' (pprs/gd 0, agd 0.99)",
           valid=lambda v: v is None or v == "nesterov" or (not isinstance(v, str) and 0 <= v < 1),
           rule="in [0, 1) or 'nesterov'"),
    Option("gamma_schedule", str, "constant", "γ_t: constant (default), theorem3 (Theorem 3's γ with T = t: "
           "γ/(1 + t), γ by default R d^(-1/4)) or decay (γ (1 + t/τ)^(-p))", choices=parameters.SCHEDULES),
    Option("lr_schedule", str, "constant", "η_t: constant (default), theorem3 (η/(1 + t), η by default "
           "R d^(-1/4)/L) or decay (η (1 + t/τ)^(-p))", choices=parameters.SCHEDULES),
    Option("decay_tau", float, parameters.DEFAULT_TAU, f"τ of the decay schedules (default {parameters.DEFAULT_TAU:g})",
           valid=lambda v: math.isfinite(v) and v > 0, rule="> 0"),
    Option("decay_power", float, parameters.DEFAULT_POWER, "p of the decay schedules (default "
           f"{parameters.DEFAULT_POWER:g})", valid=lambda v: math.isfinite(v) and v > 0, rule="> 0"),
    Option("noise", str, "gaussian", "gaussian (default: K independent X_k) or antithetic (X_{2j+1} = -X_{2j}; "
           "K even)", choices=NOISES),
    Option("average", str, "none", "also evaluate an averaged iterate: none (default), polyak (the mean of "
           "y_1..y_t) or suffix:F (the mean of the last fraction F of the T iterates)", valid=averaging.valid,
           rule="none, polyak or suffix:F with F in (0, 1]"),
    Option("iters", int, 200, "iterations T (default 200)", valid=_at_least(1), rule=">= 1", resumable=True),
    Option("seed", int, 0, "noise seed (default 0)", valid=lambda v: 0 <= v < 2**63, rule="in [0, 2**63)"),
    Option("preset", str, "none", "theorem3: K, γ, η, μ from the problem's L, R and T (or --eps); theorem4: γ, η, "
           "K, T from L, D, --eps, --smoothing-radius", choices=PRESETS),
    Option("eps", float, None, "target precision ε for the presets",
           valid=lambda v: v is None or (math.isfinite(v) and v > 0), rule="> 0"),
    Option("smoothing_radius", float, None, "r of Theorem 4",
           valid=lambda v: v is None or (math.isfinite(v) and v > 0), rule="> 0"),
    Option("schedule", str, AUTO, "pipeline schedule: auto (default: gpipe or 1f1b, whichever the layout planner "
           "predicts faster; gpipe on a tie), gpipe (the paper's fill-drain) or 1f1b", choices=ScheduleNames()),
    Option("microbatch_size", _microbatch_size, layout.AUTO, "noisy copies per message b: a count, auto (default: "
           "the b that minimises the predicted time per iteration from the ops' declared costs; K in one process) "
           "or measured (the same from timings on this machine)", valid=layout.valid, rule=">= 1, auto or measured"),
    Option("eval_every", int, 10, "evaluate f(y_t) every N iterations and at the end, 0 = only at the end "
           "(default 10)", valid=_at_least(0), rule=">= 0", resumable=True),
    Option("simulated_depth", int, None, "count pipeline time as if the graph had this depth (labelled simulated)",
           valid=lambda v: v is None or 1 <= v <= 10**9, rule="between 1 and 10**9"),
    Option("out", str, "run.h5", "trace file to write (default run.h5); an existing file is refused unless "
           "--overwrite (or --resume it)", valid=lambda v: v != "", rule="a file path"),
    Option("overwrite", bool, False, "replace an existing --out file", resumable=True),
    Option("engine", str, "auto", "auto (default): mpi when run on several ranks", choices=ENGINES, resumable=True),
    Option("balance", str, "auto", "group nodes into stages with the microbatch size's cost model (auto, default: "
           "each node's per-action and per-multiply-add cost), by the ops' declared costs, or by measured times",
           choices=BALANCES, resumable=True),
    Option("stages", int, None, "serial engine: pipeline stages to emulate (default: one per node)",
           valid=_at_least(1), rule=">= 1", resumable=True),
    Option("device", str, "cpu", "cpu (default), gpu, or auto", choices=DEVICES),
    Option("noise_source", str, "device", "GPU ranks: draw X_k on the device (default) or on the host, bitwise as "
           "on a CPU run", choices=NOISE_SOURCES),
    Option("dtype", str, "float64", "float64 (default) or float32", choices=DTYPES),
    Option("threads", int, 1, "intra-op threads of PyTorch and NumPy's BLAS on every rank (default 1, so that "
           "serial and MPI runs, on any machine, are bitwise equal)", valid=_at_least(1), rule=">= 1"),
    Option("expect_ranks", int, None, "fail unless the job has exactly N MPI ranks (job scripts pass the tasks "
           "Slurm granted)", valid=_at_least(1), rule=">= 1", resumable=True),
    Option("comm_timeout", float, None, "abort if a rank waits longer than S seconds",
           valid=lambda v: v is None or v > 0, rule="> 0", resumable=True),
    Option("checkpoint_every", int, 0, "write a checkpoint into the trace every N iterations (default 0: only on "
           "SIGTERM/SIGUSR1/SIGINT)", valid=_at_least(0), rule=">= 0", resumable=True),
    Option("timeline_every", int, None, "record the per-rank timeline every N iterations (default: about 100 "
           "iterations in all)", valid=_at_least(1), rule=">= 1", resumable=True),
    Option("check_gradients", bool, False, "before the first iteration, check every node's VJP against finite "
           "differences (as python -m pprs_mpi.check does) and refuse to run if one is wrong", resumable=True),
    Option("resume", str, None, "continue the run of this trace from its last checkpoint, with its stored "
           "configuration (flags equal to the stored ones may be repeated)", resumable=True),
    Option("inject_fault", str, None, "testing: make RANK raise, exit or hang at iteration ITER (also env "
           "PPRS_FAULT)", resumable=True),
    Option("progress_every", int, None, "iterations between progress lines", valid=_at_least(1), rule=">= 1",
           resumable=True),
    Option("quiet", bool, False, "no progress lines", resumable=True),
)
BY_NAME = {option.name: option for option in OPTIONS}
# The sections of a RunConfig: every option is in exactly one (checked below).
SECTIONS = {
    "problem": ("problem", "check_gradients"),
    "algorithm": ("algo", "optimizer", "K", "gamma", "lr", "mu", "gamma_schedule", "lr_schedule", "decay_tau",
                  "decay_power", "noise", "average", "iters", "seed", "preset", "eps", "smoothing_radius"),
    "pipeline": ("schedule", "microbatch_size", "simulated_depth", "engine", "balance", "stages", "expect_ranks",
                 "comm_timeout", "inject_fault"),
    "device": ("device", "noise_source", "dtype", "threads"),
    "output": ("eval_every", "out", "overwrite", "checkpoint_every", "timeline_every", "resume", "progress_every",
               "quiet"),
}
SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}
assert sorted(SECTION_OF) == sorted(BY_NAME) and len(SECTION_OF) == len(OPTIONS), "SECTIONS must partition OPTIONS"
DEFAULTS = {option.name: option.default for option in OPTIONS}
# What each algorithm means when the user leaves K, γ or μ unset (Algorithm 1 with other settings).
ALGORITHM_DEFAULTS = {
    "pprs": {"K": 8, "gamma": 0.01, "mu": 0.0},
    "gd": {"K": 1, "gamma": 0.0, "mu": 0.0},
    "agd": {"K": 1, "gamma": 0.0, "mu": optim.AGD_DEFAULT_MU},
}
OBJECT_PREFIX = "python:"  # the stored `problem` of a run given a Problem or Graph object (the API)
PROBLEM_ARGS = "problem_args"  # NAME=VALUE pairs (flags), a table (TOML) or a dict (API) of builder arguments


@dataclass(frozen=True)
class RunMeta:
    """What resolving the options found out, beside them: not options, never flags, not validated."""

    given: tuple[str, ...]  # the names the user set (a preset leaves these alone)
    problem_params: dict  # the builder's arguments
    preset_source: str | None = None  # the theorem whose parameters a preset filled in
    stored_microbatch_size: int | None = None  # a resumed run's chosen b (for --microbatch-size auto or measured)


# One frozen dataclass per section, its fields the section's options (generated from OPTIONS).
SECTION_TYPES = {section: make_dataclass(f"{section.title()}Config", [(name, object) for name in names], frozen=True)
                 for section, names in SECTIONS.items()}


@dataclass(frozen=True)
class RunConfig:
    """A resolved, validated run configuration: the options in sections (`cfg.algorithm.lr`), the metadata in
    `meta`. It never changes: `replace` returns a validated copy; `as_dict` is the flat form a trace stores."""

    problem: object
    algorithm: object
    pipeline: object
    device: object
    output: object
    meta: RunMeta

    @classmethod
    def of(cls, flat: dict) -> "RunConfig":
        """From a flat dict of every option and the metadata (`given`, `problem_params`, `preset_source`)."""
        sections = {section: kind(**{name: flat[name] for name in SECTIONS[section]})
                    for section, kind in SECTION_TYPES.items()}
        return cls(**sections, meta=RunMeta(tuple(flat["given"]), flat["problem_params"], flat.get("preset_source"),
                                            flat.get("stored_microbatch_size")))

    def as_dict(self) -> dict:
        """Every option and the metadata by name (`preset_source` only when a preset set it), as traces store it."""
        flat = {name: getattr(getattr(self, section), name) for name, section in SECTION_OF.items()}
        flat.update(given=list(self.meta.given), problem_params=self.meta.problem_params)
        if self.meta.preset_source is not None:
            flat["preset_source"] = self.meta.preset_source
        if self.meta.stored_microbatch_size is not None:
            flat["stored_microbatch_size"] = self.meta.stored_microbatch_size
        return flat

    def replace(self, **changes) -> "RunConfig":
        """A copy with `changes` (options or metadata), validated."""
        flat = {**self.as_dict(), **changes}
        validate(flat)
        return RunConfig.of(flat)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message):
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pprs_mpi.solve", argument_default=argparse.SUPPRESS,
                description="Minimise a computation graph with PPRS, GD or AGD; writes an HDF5 trace.")
    p.add_argument("--config", help="TOML file with any of the options below (flags override it); builder "
                   "arguments go in a [problem_args] table")
    p.add_argument("--problem-arg", dest=PROBLEM_ARGS, action="append", metavar="NAME=VALUE",
                   help="an argument of the problem's builder, typed from its defaults and annotations (repeatable)")
    for option in OPTIONS:
        spellings = option.flags or (option.flag,)
        if option.kind is bool:
            p.add_argument(*spellings, dest=option.name, action="store_true", help=option.help)
        else:
            p.add_argument(*spellings, dest=option.name, type=option.kind, choices=option.choices, help=option.help)
    group = p.add_argument_group("parameters of the built-in problems (also as --problem-arg NAME=VALUE)")
    for name, param in problems.builtin_parameters().items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=param.type, help=param.help)
    return p


def load(argv: list[str] | None = None) -> RunConfig:
    """The merged, validated configuration of a command line."""
    return resolve(given_by(argv))


def given_by(argv: list[str] | None) -> dict:
    """The settings a command line gives (its --config file's, then its flags'), by option name."""
    flags = vars(parser().parse_args(argv))
    from_file = _read_toml(flags.pop("config")) if "config" in flags else {}
    if PROBLEM_ARGS in flags:
        flags[PROBLEM_ARGS] = {**from_file.get(PROBLEM_ARGS, {}), **problem_arg_pairs(flags[PROBLEM_ARGS])}
    return {**from_file, **flags}


def resolve(given: dict, problem_object: bool = False) -> RunConfig:
    """The configuration for the settings the user gave (by name; unknown names are refused).

    The result is a frozen RunConfig of every option, with `problem_params` (the builder's arguments) and
    `given` (the names the user set) in its metadata. With `problem_object` the problem is a Python object
    the caller holds (the API): it has no builder, so no builder arguments."""
    given = dict(given)
    unknown = sorted(set(given) - set(BY_NAME) - {PROBLEM_ARGS} - set(problems.builtin_parameters()))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}")
    if given.get("resume"):
        return _resumed(given, problem_object)
    cfg = {**DEFAULTS, **{k: v for k, v in given.items() if k in BY_NAME}}
    _check_types(cfg)
    spec = None if problem_object else _spec(cfg["problem"])
    if spec is not None:
        cfg["problem"] = spec.reference
    cfg["problem_params"] = _problem_params(spec, given)
    if cfg["algo"] in ALGORITHM_DEFAULTS:
        for key, value in ALGORITHM_DEFAULTS[cfg["algo"]].items():
            cfg[key] = value if cfg[key] is None else cfg[key]
    cfg["given"] = sorted(given)
    return _finish(cfg)


def _spec(reference: str):
    try:
        return problems.spec_for(reference)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _problem_params(spec, given: dict) -> dict:
    """The builder's arguments: built-in problems' own flags, then --problem-arg pairs, then defaults."""
    builtin = {k: v for k, v in given.items() if k in problems.builtin_parameters()}
    if spec is None:
        if builtin or given.get(PROBLEM_ARGS):
            raise ConfigError("builder arguments were given, but the problem is an object, not a builder")
        return {}
    foreign = sorted(set(builtin) - set(spec.parameters))
    if foreign:
        raise ConfigError(f"option {foreign[0]!r} does not apply to problem {spec.reference!r}")
    try:
        return spec.arguments({**builtin, **given.get(PROBLEM_ARGS, {})})
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _finish(cfg: dict) -> RunConfig:
    """Validates the merged configuration, fills the defaults that depend on other settings and freezes it."""
    validate(cfg)
    if cfg["timeline_every"] is None:
        cfg["timeline_every"] = max(1, math.ceil(cfg["iters"] / 100))
    return RunConfig.of(cfg)


def _resumed(given: dict, problem_object: bool = False) -> RunConfig:
    """The stored configuration of the trace to resume, with the settings a resume may change. A setting
    that cannot change is accepted when it equals the stored value, refused naming both when it differs."""
    from pprs_mpi.trace import TraceError, load as load_trace
    path = given["resume"]
    try:
        trace = load_trace(path)
    except TraceError as err:
        raise ConfigError(f"cannot resume: {err}") from None
    if not trace.has_checkpoint:
        raise ConfigError(f"cannot resume: {path} holds no checkpoint")
    stored = trace.config
    newer = {"resume", "overwrite", "check_gradients", "optimizer", "threads", "gamma_schedule", "lr_schedule",
             "decay_tau", "decay_power", "noise", "average"}  # options older traces lack
    if set(DEFAULTS) - set(stored) - newer or not isinstance(stored.get("problem_params"), dict):
        raise ConfigError(f"cannot resume: {path} was written by an incompatible pprs_mpi")
    stored = {**DEFAULTS, **stored}
    if stored["problem"].startswith(OBJECT_PREFIX) and not problem_object:
        raise ConfigError(f"cannot resume {path} here: its problem was a Python object ({stored['problem']}); "
                          "resume it with pprs_mpi.minimize(problem, resume=PATH)")
    if problem_object:
        spec, stored_params = None, {}
        given.pop("problem", None)  # the caller's object, checked against the stored graph hash
    else:
        try:
            spec = problems.spec_for(stored["problem"])
            stored_params = spec.arguments(stored["problem_params"], exact=True)
        except ValueError as err:
            raise ConfigError(f"cannot resume {path}: {err}") from None
    _refuse_changes(given, stored, spec, stored_params, path)
    if str(stored["average"]).startswith("suffix") and not _equal(given.get("iters", stored["iters"]), stored["iters"]):
        raise ConfigError(f"--average {stored['average']} averages the last part of the stored run's "
                          f"{stored['iters']} iterations: a resume cannot change --iters")
    cfg = {**stored, "inject_fault": None, "out": path, "problem_params": stored_params, "given": sorted(given),
           "stored_microbatch_size": _stored_choice(trace.attrs, stored),
           **{k: v for k, v in given.items() if k in BY_NAME and BY_NAME[k].resumable}}
    _check_types(cfg)
    return _finish(cfg)


def _stored_choice(attrs: dict, stored: dict) -> int | None:
    """The microbatch size a stored `auto` or `measured` run chose (its trace's attribute), which its resume
    keeps: a timing or a newer cost model must not change a run's iterates halfway."""
    chosen = attrs.get("microbatch_size")
    if stored.get("microbatch_size") not in layout.REQUESTS or chosen is None:
        return None
    if not (isinstance(chosen, int) and not isinstance(chosen, bool) and chosen >= 1):
        raise ConfigError(f"cannot resume: the trace's microbatch_size {chosen!r} is not a count >= 1")
    return chosen


def _refuse_changes(given: dict, stored: dict, spec, stored_params: dict, path: str) -> None:
    """Raises ConfigError naming the first given setting whose value differs from the stored run's."""
    changes = {k: v for k, v in given.items() if k in BY_NAME and not BY_NAME[k].resumable}
    out = changes.pop("out", None)
    if out is not None and not _same_file(out, path):
        raise ConfigError(f"--resume {path} writes into that trace: --out {out!r} would be another file")
    if "problem" in changes:
        changes["problem"] = _spec(changes["problem"]).reference
    params = {k: v for k, v in given.items() if k in problems.builtin_parameters()}
    try:
        given_params = spec.arguments({**params, **given.get(PROBLEM_ARGS, {})}, partial=True) if spec else {}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for name, value in [*changes.items(), *given_params.items()]:
        before = stored[name] if name in changes else stored_params.get(name)
        if not _equal(value, before):
            raise ConfigError(f"--resume continues the stored run: {name!r} cannot be changed "
                              f"(the run has {before!r}, this command gives {value!r})")


def _equal(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def problem_arg_pairs(items: list[str]) -> dict[str, str]:
    """--problem-arg NAME=VALUE items as a dict of their (still textual) values."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--problem-arg must look like NAME=VALUE, got {item!r}")
        pairs[name.strip().replace("-", "_")] = problems.Text(value)
    return pairs


def _read_toml(path: str) -> dict:
    try:  # non-blocking, and checked on the open file: a FIFO would wait for a writer forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path!r}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"config file {path!r} is not a regular file (a FIFO, a device, a directory?)")
    with os.fdopen(fd, "rb") as handle:
        try:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as err:
            raise ConfigError(f"cannot read config file {path!r}: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path!r} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a run's settings")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path!r} is not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"config file {path!r} nests too deeply to be a run's settings") from None
    actions = {a.dest: a for a in parser()._actions if a.dest not in ("help", "config", PROBLEM_ARGS)}
    normalized = {}
    for key, value in data.items():
        if key in (PROBLEM_ARGS, "problem-args"):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} must be a table of builder arguments, got {value!r}")
            normalized[PROBLEM_ARGS] = {k.replace("-", "_"): v for k, v in value.items()}
            continue
        name = key.replace("-", "_")
        name = "K" if name in ("k", "samples") else name
        if name not in actions:
            raise ConfigError(f"unknown key {key!r} in config file {path!r}")
        normalized[name] = _typed(key, value, actions[name])
    return normalized


def _typed(key: str, value, action: argparse.Action):
    """A TOML value checked against what the matching flag accepts (TOML already gives it a type)."""
    if isinstance(action, argparse._StoreTrueAction):
        expected, ok = "true or false", isinstance(value, bool)
    elif action.type is int:
        expected, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif action.type is _microbatch_size:
        expected, ok = "a count, auto or measured", layout.valid(value)
    elif action.type in (float, _mu):
        expected = "a number" + (" or 'nesterov'" if action.type is _mu else "")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number or (action.type is _mu and value == "nesterov")
        value = float(value) if ok and value != "nesterov" else value
    else:
        expected, ok = "a string", isinstance(value, str)
    if ok and action.choices is not None and value not in action.choices:
        expected, ok = "one of " + ", ".join(map(str, action.choices)), False
    if not ok:
        raise ConfigError(f"config key {key!r} must be {expected}, got {value!r}")
    return value


def _check_types(cfg: dict) -> None:
    """Every option holds a value of its kind (values from the API or a stored trace are not parsed)."""
    for option in OPTIONS:
        value = cfg[option.name] = problems.plain(cfg[option.name])  # np.int64(16) from NumPy code is 16
        if value is None or option.kind is _mu and value == "nesterov":
            continue
        if option.kind is _microbatch_size:
            if not layout.valid(value):
                raise ConfigError(f"{option.label} must be {option.rule}, got {value!r}")
            continue
        kinds = {int: int, float: (int, float), _mu: (int, float), bool: bool, str: str}[option.kind]
        if not isinstance(value, kinds) or (option.kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{option.label} must be {_kind_name(option)}, got {value!r}")
        if option.kind in (float, _mu) and not isinstance(value, float):
            cfg[option.name] = float(value)


def _kind_name(option: Option) -> str:
    return {int: "an integer", float: "a number", _mu: "a number or 'nesterov'", bool: "true or false",
            str: "a string"}[option.kind]


def validate(cfg: dict) -> None:
    """Raises ConfigError for values no run can use."""
    for option in OPTIONS:
        value = cfg[option.name]
        if option.choices is not None and value not in option.choices:
            raise ConfigError(f"unknown {option.label} {value!r}: choose one of {', '.join(option.choices)}")
        if option.valid is not None and value is not None and not option.valid(value):
            raise ConfigError(f"{option.label} must be {option.rule}, got {value!r}")
    if cfg["algo"] in ("gd", "agd") and cfg["gamma"] != 0:
        raise ConfigError(f"{cfg['algo']} uses no smoothing: gamma must be 0, got {cfg['gamma']}")
    if cfg["noise"] == "antithetic" and cfg["K"] is not None and cfg["K"] % 2:
        raise ConfigError(f"--noise antithetic pairs each X_k with -X_k: K must be even, got K={cfg['K']}")
    if cfg["inject_fault"] is not None:
        try:
            Fault.parse(str(cfg["inject_fault"]))
        except ValueError as err:
            raise ConfigError(str(err)) from None
