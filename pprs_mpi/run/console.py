"""The lines a run prints for the user: the banner before the first iteration and the summary after the last."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pprs_mpi import __version__
from pprs_mpi.analysis import summary_fractions

if TYPE_CHECKING:
    from pprs_mpi.driver import Outcome
    from pprs_mpi.run.assemble import Setup


def banner(setup: Setup) -> str:
    """What is solved, with which algorithm and parameters, on which pipeline, devices and transport."""
    cfg, graph, algorithm = setup.cfg, setup.problem.graph, setup.cfg.algorithm
    simulated = f" (simulated Δ={cfg.pipeline.simulated_depth})" if cfg.pipeline.simulated_depth else ""
    return (f"pprs_mpi {__version__}: {setup.problem.name} d={graph.dim} Δ={graph.depth}{simulated} "
            f"nodes={len(graph.order)} "
            f"| {algorithm.algo} K={algorithm.K} γ={algorithm.gamma:g} η={algorithm.lr:g} μ={algorithm.mu} "
            f"T={algorithm.iters}{_anytime(algorithm)} "
            f"| {setup.engine_name} engine, {_count(len(setup.wiring.stages), 'stage', 'stages')}, "
            f"{setup.schedule_name}, "
            f"{_count(setup.sampling.n_microbatches, 'microbatch', 'microbatches')}, "
            f"{setup.makespan} time units/iteration\n"
            f"microbatch size {setup.layout.describe()}\n"
            f"devices {_per_rank(setup.placement['devices'])}, transport {_per_rank(setup.placement['transport'])} "
            f"(rank 0: {setup.backend.choice}), {cfg.device.threads} intra-op thread(s)" + _unpinned(graph)
            + _one_process(setup))


def _one_process(setup: Setup) -> str:
    """The planner's note where one process is predicted clearly faster than the run's pipeline."""
    note = setup.layout.one_process_note(len(setup.wiring.stages))
    return f"\n{note}" if note else ""


def _anytime(algorithm) -> str:
    """' (γ_t decay, antithetic noise, polyak average)': what the run changes from Algorithm 1's constants."""
    parts = [f"{name} {kind}" for name, kind in (("γ_t", algorithm.gamma_schedule), ("η_t", algorithm.lr_schedule))
             if kind != "constant"]
    parts += [f"{algorithm.noise} noise"] if algorithm.noise != "gaussian" else []
    parts += [f"{algorithm.average} average"] if algorithm.average != "none" else []
    return f" ({', '.join(parts)})" if parts else ""


def _unpinned(graph) -> str:
    """What --threads cannot pin: XLA's CPU kernels split sums by the cores a process sees (a serial run sees
    every core, an mpirun rank one), so a graph with JAX nodes may differ in the last bits between layouts."""
    jax_nodes = [name for name in graph.order if getattr(graph.op(name), "framework", "") == "jax"]
    if not jax_nodes:
        return ""
    return (f"\nnote: {len(jax_nodes)} JAX node(s): XLA's CPU kernels follow the cores each process sees, which "
            "--threads does not pin; serial and MPI runs may differ in the last bits")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _per_rank(values: list[str]) -> str:
    """'4 × cpu' when every rank has the same value, else the values in rank order."""
    return f"{len(values)} × {values[0]}" if len(set(values)) == 1 else ",".join(values)


def summary(setup: Setup, outcome: Outcome, figures: list[dict]) -> str:
    """The closing lines: f(y_T), where the trace is, and (MPI) each rank's compute and wait fractions from
    the `figures` this run gathered last (its summary of the sampled gradient passes)."""
    f_star = setup.problem.f_star
    lines = [f"done: f(y_T) = {outcome.f_final:.6g}" + (f", f* = {f_star:g}" if f_star is not None else "")
             + f"; trace {setup.cfg.output.out} (python -m pprs_mpi.report {setup.cfg.output.out})"]
    facts = setup.problem.describe_point(outcome.state.y)
    if facts:
        lines.append("  " + ", ".join(f"{key} {value}" for key, value in facts.items()))
    if setup.engine_name == "mpi" and any(rank["span_seconds"] for rank in figures):
        lines += [f"  rank {r['rank']}: compute {r['compute']:.0%}, wait {r['wait']:.0%}"
                  for r in summary_fractions(figures)]
    return "\n".join(lines)
