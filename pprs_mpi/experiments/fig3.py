"""The paper's Figure 3 (§6): PPRS against GD and AGD on adversarial attacks, at depths Δ = 20 and 200.

Protocol (tuned and reported on separate pairs).
  1. Pairs. Pair p attacks held-out image p towards the class after its label (`image_index p,
     target -1`), with noise seed p; on problems without images (e.g. the planted `lad`, `fewshot`) pair p
     is `problem_seed p`. Pairs that cannot be attacked (screen.py: the clean image is already
     stationary, ‖∇margin(x)‖₁ < λ, or the target is already reached) are counted, not run.
  2. Tuning. Every configuration of the grid runs on the tuning pairs (`--tune-pairs`): PPRS over
     K × μ × lr × γ (half-decade lrs), GD over lr, AGD over μ × lr (a finer lr grid, `--baseline-lrs`, so
     that each row has a comparable number of configurations). The methods (table rows) are PPRS K=k μ=0
     (the paper's), PPRS K=k +momentum (μ ≠ 0 of `--pprs-mus`, a constant or 'nesterov', Theorem 3's μ_t),
     GD and AGD; with Grid.preset (finitesum.py) also 'PPRS Theorem 3', the theorem's own parameters, untuned:
     one configuration per setting, the T its budget allows, scored in that setting only. Per setting (depth, budget)
     and method, the configuration kept is the one with the lowest mean final loss within the budget
     over the tuning pairs (`--select final`), or the fastest to reach a loss level (`--select LEVEL`,
     ties and never-reached by final loss). Where a kept configuration sits on its method's grid edge
     (lr or γ), the grid grows one step past it and tuning goes on (tuning.py; `--extend-rounds`).
  3. Reporting. The kept configurations run on the report pairs (`--report-pairs`), and only
     those runs make the table and the figure; choices between rows (verdict.py) read tuning losses only.

Time. The simulated depth changes only the time accounting, never the iterates, so each
configuration runs ONCE per pair and is re-timed for every setting: an iteration costs 2(K·m + Δ − 1)
time units (the paper's 2T(K + Δ − 1) with m = 1 example; `erm` pipelines K·m inputs, §5); GD and AGD
(K = 1) cost 2(m + Δ − 1). Each setting has its own budget (`--budget Δ=B,...`, pipeline units, the same
for every method; a depth may have two budgets); a configuration runs the most iterations any budget
allows it, and f(y_t) is evaluated often enough to give at least `--eval-points` points within every
budget. The runs use one microbatch of K copies and no --simulated-depth, so their traces' own
pipeline_time is not the paper's: the re-timing here is.
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pprs_mpi import problems
from pprs_mpi.experiments import screen
from pprs_mpi.experiments.runner import (ExperimentError, OneLineParser, Run, cost, parse_shard,
                                         solve_options, run_all, write_protocol)
from pprs_mpi.schedule import ideal_makespan


def per_decade(high: float, low: float, steps: int) -> tuple[float, ...]:
    """high, high·10^(−1/steps), ... down to low (two significant digits): e.g. 6 steps from 1e-3 to 1e-6."""
    count = round(steps * math.log10(high / low))
    return tuple(float(f"{high * 10 ** (-i / steps):.2g}") for i in range(count + 1))


def half_decades(high: float, low: float) -> tuple[float, ...]:
    """high, high/3.33 (rounded to 3·10^k), high/10, ... down to low: e.g. 1e-3, 3e-4, 1e-4, ..., 1e-6."""
    found, exponent = [], round(math.log10(high))
    while 10.0 ** exponent >= low * (1 - 1e-9):
        found.append(float(f"1e{exponent}"))
        if 3 * 10.0 ** (exponent - 1) >= low * (1 - 1e-9):
            found.append(float(f"3e{exponent - 1}"))
        exponent -= 1
    return tuple(found)


@dataclass(frozen=True)
class Grid:
    """What to run: PPRS over Ks × pprs_mus × lrs × gammas, GD over baseline_lrs, AGD over agd_mus × baseline_lrs,
    on the tuning pairs, grown past edges for up to extend_rounds rounds; then each setting's kept configurations
    on the report pairs. budgets: (depth, pipeline units), a depth possibly twice."""

    lrs: tuple[float, ...]
    baseline_lrs: tuple[float, ...]
    gammas: tuple[float, ...]
    Ks: tuple[int, ...]
    pprs_mus: tuple[float, ...]
    agd_mus: tuple[float, ...]
    budgets: tuple[tuple[int, int], ...]
    tune_pairs: tuple[int, ...]
    report_pairs: tuple[int, ...]
    eval_points: int
    select: str  # "final", or a loss level: fastest to reach it
    extend_rounds: int = 0
    baseline_rows: bool = True  # False: PPRS rows only, e.g. rows added to a finished run (reproduction's --momentum)
    preset: bool = False  # a 'PPRS Theorem 3' row: the theorem's parameters for each setting's T (untuned)


DEFAULT = Grid(lrs=half_decades(1e-3, 1e-6), baseline_lrs=per_decade(1e-3, 1e-6, 6), gammas=(1e-2, 1e-3, 1e-4),
               Ks=(2, 10, 100), pprs_mus=(0.0, 0.9, 0.99), agd_mus=(0.9, 0.99),
               budgets=((20, 12_000), (20, 30_000), (200, 30_000), (200, 60_000)), tune_pairs=tuple(range(40)),
               report_pairs=tuple(range(40, 110)), eval_points=50, select="final", extend_rounds=3)
QUICK = Grid(lrs=(1e-3, 1e-4), baseline_lrs=(1e-3, 1e-4), gammas=(1e-3,), Ks=(2, 10), pprs_mus=(0.0, 0.99),
             agd_mus=(0.99,), budgets=((20, 1_200), (200, 4_800)), tune_pairs=(0, 1), report_pairs=(2, 3),
             eval_points=8, select="final")


BASELINES = {"gd": "GD", "agd": "AGD"}


def protocol(grid: Grid, problem: str, extra: list[str], experiment: str = "fig3", examples: int = 1,
             baselines: dict | None = None) -> dict:
    """Everything that defines the experiment (written to OUT/protocol.json). examples: m, the inputs one copy of
    θ pipelines (an ERM over m examples); baselines: the rows' names of gd and agd."""
    proto = {"experiment": experiment, "problem": problem, "extra_args": list(extra), **asdict(grid),
             "examples": int(examples), "baselines": dict(baselines or BASELINES)}
    proto["budgets"] = [[int(depth), int(budget)] for depth, budget in grid.budgets]
    if grid.preset:
        own = problems.registry()[problem].parameters
        given = {k: v for k, v in solve_options(extra).items() if k in own}
        proto["dim"] = problems.build(problem, **given, **pair_options(problem)(grid.tune_pairs[0])).graph.dim
    if screen.applies(problem):
        proto["lam"] = screen.lam_of(problem, solve_options(extra))
    return proto


def settings(proto: dict) -> list[tuple[int, int]]:
    """The (depth, budget) settings of the protocol, in its order."""
    return [(int(depth), int(budget)) for depth, budget in proto["budgets"]]


def setting_key(depth: int, budget: int) -> str:
    """'20:30000': a setting as a JSON key."""
    return f"{depth}:{budget}"


PRESET = "PPRS Theorem 3"  # the row of Theorem 3's own parameters (Grid.preset)


def mu_text(mu) -> str:
    """A momentum as shown: '0.9', or 'nesterov' (Theorem 3's μ_t)."""
    return mu if isinstance(mu, str) else f"{mu:g}"


def method_of(algo: str, K: int, mu: float | str, baselines: dict = BASELINES) -> str:
    """The table row a configuration belongs to: PPRS per K, μ = 0 (the paper's) apart from μ ≠ 0 (a constant
    or Nesterov's μ_t); GD; AGD."""
    if algo != "pprs":
        return baselines[algo]
    return f"PPRS K={K} " + ("μ=0" if mu == 0 else "+momentum")


def families(proto: dict) -> dict[str, dict]:
    """method → its grid axes {algo, K, mus, lrs, gammas}, in the order the rows are shown."""
    found = {}
    for K in proto["Ks"]:
        for name, mus in (("μ=0", [mu for mu in proto["pprs_mus"] if mu == 0]),
                          ("+momentum", [mu for mu in proto["pprs_mus"] if mu != 0])):
            if mus:
                found[f"PPRS K={K} {name}"] = {"algo": "pprs", "K": K, "mus": mus, "lrs": proto["lrs"],
                                               "gammas": proto["gammas"]}
    for algo, mus in (("gd", [0.0]), ("agd", proto["agd_mus"])):
        if mus and proto.get("baseline_rows", True):
            found[method_of(algo, 1, 0.0, proto["baselines"])] = {"algo": algo, "K": 1, "mus": mus,
                                                                  "lrs": proto["baseline_lrs"], "gammas": [0.0]}
    return found


def config_name(algo: str, K: int, mu: float | str, lr: float, gamma: float) -> str:
    if algo == "pprs":
        return f"pprs_K{K}_mu{mu_text(mu)}_lr{lr:g}_g{gamma:g}"
    return f"gd_lr{lr:g}" if algo == "gd" else f"agd_mu{mu_text(mu)}_lr{lr:g}"


def configs(proto: dict, extensions: dict | None = None) -> dict[str, dict]:
    """name → {method, algo, K, lr, gamma, mu, inputs, iters, eval_every} for every configuration of the grid,
    with `extensions` (method → {'lr': values, 'gamma': values} added by tuning.grow)."""
    found = {}
    for method, axes in families(proto).items():
        more = (extensions or {}).get(method, {})
        lrs = sorted(set(axes["lrs"]) | set(more.get("lr", ())), reverse=True)
        gammas = sorted(set(axes["gammas"]) | set(more.get("gamma", ())), reverse=True)
        for mu in axes["mus"]:
            for lr in lrs:
                for gamma in gammas:
                    found[config_name(axes["algo"], axes["K"], mu, lr, gamma)] = {
                        "method": method, "algo": axes["algo"], "K": axes["K"], "lr": lr, "gamma": gamma, "mu": mu,
                        "inputs": axes["K"] * proto["examples"],
                        **schedule_of(axes["K"] * proto["examples"], settings(proto), proto["eval_points"])}
    return {**found, **preset_configs(proto)} if proto.get("preset") else found


def preset_configs(proto: dict) -> dict[str, dict]:
    """The PRESET row's configurations: per setting (Δ, B), Theorem 3 with the largest T whose T iterations of
    2(K·m + Δ − 1), K = ⌈(T+1)/√d⌉, fit in B; its γ, η (from the problem's own L and R) and μ_t are the solve's
    `--preset theorem3`. A configuration is scored only in the settings named in its 'settings'."""
    found = {}
    for depth, budget in settings(proto):
        T, K = preset_iters(proto["dim"], proto["examples"], depth, budget)
        name = f"pprs_theorem3_T{T}"
        if name in found:
            found[name]["settings"].append(setting_key(depth, budget))
            continue
        within = [(b // ideal_makespan(K * proto["examples"], dd)) for dd, b in settings(proto)]
        found[name] = {"method": PRESET, "algo": "pprs", "K": K, "lr": math.nan, "gamma": math.nan,
                       "mu": "nesterov", "inputs": K * proto["examples"], "iters": T, "preset": "theorem3",
                       "eval_every": max(1, min(T, *within) // proto["eval_points"]),
                       "settings": [setting_key(depth, budget)]}
    return found


def preset_iters(dim: int, examples: int, depth: int, budget: int) -> tuple[int, int]:
    """(T, K): the most iterations T of Theorem 3, K = ⌈(T+1)/√d⌉, that fit in `budget` at depth Δ."""
    def K_of(T):
        return math.ceil((T + 1) / math.sqrt(dim))
    T = 1
    while (T + 1) * ideal_makespan(K_of(T + 1) * examples, depth) <= budget:
        T += 1
    return T, K_of(T)


def schedule_of(inputs: int, budgets: list[tuple[int, int]], eval_points: int) -> dict:
    """Iterations (the most any setting's budget allows) and evaluation spacing (at least `eval_points`
    evaluations within every setting's budget, so every method is timed at the same resolution); `inputs`: what
    one iteration pipelines (K copies × m examples)."""
    within = [int(budget) // ideal_makespan(inputs, int(depth)) for depth, budget in budgets]
    return {"iters": max(within), "eval_every": max(1, min(within) // eval_points)}


def pair_options(problem: str) -> Callable[[int], dict]:
    """Pair p → its problem parameters: an image and the class after its label where the problem attacks images,
    else a problem seed (see the module docstring)."""
    spec = problems.registry().get(problem)
    if spec is None:
        raise ExperimentError(f"unknown problem '{problem}': choose one of {', '.join(sorted(problems.registry()))}")
    if {"image_index", "target"} <= set(spec.parameters):
        return lambda pair: {"image_index": pair, "target": -1}
    if "problem_seed" in spec.parameters:
        return lambda pair: {"problem_seed": pair}
    raise ExperimentError(f"problem '{problem}' has neither --image-index nor --problem-seed to vary over pairs")


def screened(out: Path, proto: dict) -> dict[int, dict]:
    """pair → {verdict, ...} for every tuning and report pair (all 'attackable' where the problem has no screen)."""
    pairs = sorted(set(proto["tune_pairs"]) | set(proto["report_pairs"]))
    if "lam" not in proto:
        return {pair: {"verdict": "attackable"} for pair in pairs}
    options, of_pair = solve_options(proto["extra_args"]), pair_options(proto["problem"])
    try:
        return screen.screen(out, proto["problem"], lambda pair: {**options, **of_pair(pair)}, pairs, proto["lam"])
    except ValueError as err:  # e.g. an image index beyond the held-out split
        raise ExperimentError(f"screening the pairs: {err}") from None


def attackable(pairs: list[int], verdicts: dict[int, dict]) -> list[int]:
    return [pair for pair in pairs if verdicts[pair]["verdict"] == "attackable"]


def runs_of(proto: dict, grid: dict, names: list[str], pairs: list[int]) -> list[Run]:
    """The solves of configurations `names` (of `grid`) on `pairs`, pairs varying fastest (a round-robin split over
    workers then gives each a similar mix)."""
    base, of_pair = solve_options(proto["extra_args"]), pair_options(proto["problem"])
    found = []
    for name in names:
        c = grid[name]
        tuned = {"preset": c["preset"]} if c.get("preset") else {"gamma": c["gamma"], "lr": c["lr"], "mu": c["mu"]}
        for pair in pairs:
            options = {**base, "problem": proto["problem"], "algo": c["algo"], "K": c["K"], **tuned,
                       "iters": c["iters"], "seed": pair, "eval_every": c["eval_every"],
                       "microbatch_size": c["K"], **of_pair(pair)}
            found.append(Run(f"{name}_pair{pair:03d}", options, cost(c["iters"], c["inputs"])))
    return found


def tune_runs(proto: dict, verdicts: dict) -> list[Run]:
    """Every configuration of the initial grid on every attackable tuning pair."""
    grid = configs(proto)
    return runs_of(proto, grid, list(grid), attackable(proto["tune_pairs"], verdicts))


def extend_runs(proto: dict, verdicts: dict, out: Path, round_: int) -> list[Run]:
    """The configurations growth round `round_` adds, on every attackable tuning pair (none once no kept
    configuration is on an edge); NotReady until the round before is complete."""
    from pprs_mpi.experiments.tuning import pending
    names, grid = pending(proto, verdicts, out / "runs", round_)
    return runs_of(proto, grid, names, attackable(proto["tune_pairs"], verdicts))


def report_runs(proto: dict, verdicts: dict, out: Path) -> list[Run]:
    """The kept configurations (any setting) on every attackable report pair; NotReady until tuning is complete."""
    from pprs_mpi.experiments.tuning import tuned
    tuning = tuned(proto, verdicts, out / "runs")
    names = list(dict.fromkeys(name for per_setting in tuning["kept"].values() for name in per_setting.values()))
    return runs_of(proto, tuning["grid"], names, attackable(proto["report_pairs"], verdicts))


def phases(proto: dict, verdicts: dict, out: Path) -> list:
    """The sweep's phases in order: tuning, the growth rounds, reporting (runner.run_all)."""
    return [("tune", lambda: tune_runs(proto, verdicts)),
            *[(f"extend {r}", lambda r=r: extend_runs(proto, verdicts, out, r))
              for r in range(1, proto["extend_rounds"] + 1)],
            ("report", lambda: report_runs(proto, verdicts, out))]


@dataclass(frozen=True)
class Experiment:
    """A Figure 3-style sweep: its command name, grids, default problem and baseline rows' names."""

    name: str
    description: str
    default: Grid
    quick: Grid
    problem: str
    baselines: dict


FIG3 = Experiment("fig3", __doc__.splitlines()[0], DEFAULT, QUICK, "adversarial", BASELINES)


def examples_of(problem: str, extra: list[str]) -> int:
    """m, the examples of a finite-sum problem (its `shots`, given or default); 1 for other problems."""
    spec = problems.registry().get(problem)
    if spec is None or "shots" not in spec.parameters:
        return 1
    return int(solve_options(extra).get("shots", spec.parameters["shots"].default))


def parser(experiment: Experiment = FIG3) -> argparse.ArgumentParser:
    d, quick = experiment.default, experiment.quick
    p = OneLineParser(prog=f"python -m pprs_mpi.experiments {experiment.name}", description=experiment.description,
                      allow_abbrev=False,
                      epilog="Other flags (e.g. --lam 300, --network PATH) go to every solve unchanged.")
    p.add_argument("--quick", action="store_true", help="tiny grid on 2+2 pairs: the whole path in seconds (CI)")
    p.add_argument("--tune-pairs", type=_pairs, help=f"pairs the configurations are chosen on, e.g. 0-9 (default "
                                                     f"{span(d.tune_pairs)}; --quick {span(quick.tune_pairs)})")
    p.add_argument("--report-pairs", type=_pairs, help=f"held-out pairs of the table and figure (default "
                                                       f"{span(d.report_pairs)}; --quick {span(quick.report_pairs)})")
    p.add_argument("--budget", dest="budgets", type=_budgets,
                   help="pipeline-time budgets DEPTH=UNITS, the same for every method; a depth may have several "
                        "(default " + ",".join(f"{depth}={b}" for depth, b in d.budgets) + ")")
    p.add_argument("--lrs", type=_floats, help="comma-separated learning rates of PPRS (default half-decades "
                                               "1e-3, 3e-4, ..., 1e-6)")
    p.add_argument("--baseline-lrs", type=_floats, help="comma-separated learning rates of GD and AGD (default: "
                                                        "--lrs where given, else 6 per decade 1e-3 ... 1e-6)")
    p.add_argument("--extend-rounds", type=int, help="rounds of growing a method's lr or γ grid past an edge its kept "
                                                     f"configuration sits on (default {d.extend_rounds}; 0: never)")
    p.add_argument("--gammas", type=_floats, help="comma-separated PPRS smoothings γ (default 1e-2,1e-3,1e-4; "
                                                  "images are in [0, 1])")
    p.add_argument("--Ks", type=_ints, help="comma-separated K (default 2,10,100); does not change the budget")
    p.add_argument("--pprs-mus", type=_mus, help="comma-separated PPRS momenta (default 0,0.9,0.99; μ = 0 is the "
                                                 "paper's row, μ ≠ 0 are tuned as one more row per K; 'nesterov': "
                                                 "Theorem 3's μ_t)")
    p.add_argument("--agd-mus", type=_mus, help="comma-separated AGD momenta (default 0.9,0.99; 'nesterov' too)")
    p.add_argument("--no-baselines", dest="baseline_rows", action="store_false", default=None,
                   help="PPRS rows only (no GD, AGD): rows to add to a finished run's table at report time")
    p.add_argument("--eval-points", type=int, help=f"evaluations of f(y_t) at least within every depth's budget "
                                                   f"(default {d.eval_points})")
    p.add_argument("--select", help="selection rule on the tuning pairs: 'final' (lowest mean final loss, default) "
                                    "or a loss level (fastest to reach it)")
    p.add_argument("--problem", default=experiment.problem, help=f"problem (default {experiment.problem})")
    p.add_argument("--out", default=experiment.name, help=f"output folder (default ./{experiment.name})")
    p.add_argument("--shard", default="0/1", help="I/N: do only runs I, I+N, ... (Slurm job arrays)")
    p.add_argument("--collect-only", action="store_true", help="only build summary, PNG and table from OUT")
    p.add_argument("--levels", type=_floats,
                   help="comma-separated loss levels of the table (default: where 50%%, 80%%, 95%% of the largest "
                        "decrease of the mean report loss that any kept method achieves is reached)")
    return p


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _mus(text: str) -> tuple[float | str, ...]:
    """'0,0.9,nesterov' → (0.0, 0.9, 'nesterov')."""
    return tuple(v if v == "nesterov" else float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _pairs(text: str) -> tuple[int, ...]:
    """'0-9' or '0,3,5-7' → the pair indices."""
    found = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        found += range(int(low), int(high or low) + 1)
    return tuple(found)


def span(pairs) -> str:
    """Pair indices as text: '10–39' when contiguous, else '0,3,5'."""
    pairs = list(pairs)
    return f"{pairs[0]}–{pairs[-1]}" if pairs == list(range(pairs[0], pairs[-1] + 1)) else ",".join(map(str, pairs))


def _budgets(text: str) -> tuple[tuple[int, int], ...]:
    """'20=12000,20=30000,200=60000' → ((20, 12000), (20, 30000), (200, 60000))."""
    try:
        found = tuple((int(depth), int(float(budget)))
                      for depth, budget in (part.split("=") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError("--budget is DEPTH=UNITS,... (e.g. 20=23800,200=59800), "
                                         f"got '{text}'") from None
    return found


def grid_of(args, base: Grid) -> Grid:
    """The grid the command line asks for, checked."""
    given = {k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None}
    if "lrs" in given and "baseline_lrs" not in given:
        given["baseline_lrs"] = given["lrs"]
    grid = Grid(**{**asdict(base), **given})
    if not (grid.lrs and grid.gammas and grid.Ks and grid.pprs_mus and grid.budgets and grid.tune_pairs
            and grid.report_pairs):
        raise ExperimentError("every grid option needs at least one value")
    if (min(grid.Ks) < 1 or min(grid.lrs + grid.baseline_lrs) <= 0 or min(grid.gammas) < 0 or grid.eval_points < 1
            or grid.extend_rounds < 0):
        raise ExperimentError("K and --eval-points must be >= 1, learning rates > 0, γ >= 0, --extend-rounds >= 0")
    if not all(mu == "nesterov" or (not isinstance(mu, str) and 0 <= mu < 1) for mu in grid.pprs_mus + grid.agd_mus):
        raise ExperimentError("momenta μ must be in [0, 1) or 'nesterov'")
    if min(grid.tune_pairs + grid.report_pairs) < 0:
        raise ExperimentError("pair indices must be >= 0")
    shared = sorted(set(grid.tune_pairs) & set(grid.report_pairs))
    if shared:
        raise ExperimentError(f"--tune-pairs and --report-pairs overlap (pairs {shared[:5]}): "
                              "the report must be on held-out pairs")
    if (min(min(pair) for pair in grid.budgets) < 1 or len(set(grid.budgets)) < len(grid.budgets)):
        raise ExperimentError("--budget needs distinct DEPTH=UNITS settings with depths and budgets >= 1")
    if grid.select != "final":
        try:
            float(grid.select)
        except ValueError:
            raise ExperimentError(f"--select is 'final' or a loss level, got '{grid.select}'") from None
    return grid


def main(argv: list[str], experiment: Experiment = FIG3) -> int:
    args, extra = parser(experiment).parse_known_args(argv)
    out = Path(args.out)
    from pprs_mpi.experiments.fig3_results import collect
    if args.collect_only:
        return collect(out, args.levels)
    pair_options(args.problem)  # an unknown problem: one line before anything is written
    proto = protocol(grid_of(args, experiment.quick if args.quick else experiment.default), args.problem, extra,
                     experiment.name, examples_of(args.problem, extra), experiment.baselines)
    verdicts = _screen_on_rank0(out, proto)
    command = f"python -m pprs_mpi.experiments {experiment.name} " + shlex.join(argv)
    return run_all(phases(proto, verdicts, out), out, proto, parse_shard(args.shard), experiment.name,
                   lambda: collect(out, args.levels), command=command)


def _screen_on_rank0(out: Path, proto: dict) -> dict[int, dict]:
    """The pairs' screening, done by rank 0 and shared, so that every rank runs the same pairs."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    verdicts, error = None, None
    if comm.rank == 0:
        try:
            write_protocol(out, proto)  # refuses another experiment's folder before its pairs.json is touched
            verdicts = screened(out, proto)
        except ExperimentError as err:
            error = str(err)
    verdicts, error = comm.bcast((verdicts, error), root=0) if comm.size > 1 else (verdicts, error)
    if error:
        raise ExperimentError(error)
    return verdicts
