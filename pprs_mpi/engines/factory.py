"""Which engine runs a placement: the serial engine in one process, or the MPI engine, one stage per rank."""

from __future__ import annotations

from pprs_mpi.backend import Backend, select
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.faults import Fault
from pprs_mpi.graph import Graph
from pprs_mpi.schedule import Schedule, build as build_schedule


def engine_for(graph: Graph, stages: list[tuple[str, ...]], sampling: Sampling, backend: Backend | None = None,
               schedule: str = "gpipe", comm=None, **engine_options):
    """An engine running `graph` placed on `stages` (lists of node names) with `schedule`: the serial
    engine without `comm`, else the MPI engine, one stage per rank of `comm`. For tests and benchmarks
    that place nodes by hand; a run's own engine comes from the same `make_engine`."""
    wiring, plan = place(graph, stages, schedule, sampling.n_microbatches)
    return make_engine(wiring, plan, sampling, backend or select(), comm, **engine_options)


def place(graph: Graph, stages, schedule: str, n_microbatches: int) -> tuple[Wiring, Schedule]:
    """The wiring of `graph` placed on `stages`, and its schedule of `n_microbatches` microbatches."""
    wiring = Wiring(graph, stages)
    return wiring, build_schedule(schedule, wiring.stages, {n: graph.parents(n) for n in graph.order}, n_microbatches)


def make_engine(wiring: Wiring, schedule: Schedule, sampling: Sampling, backend: Backend, comm=None,
                fault: Fault | None = None, timeline_every: int = 1, comm_timeout: float | None = None,
                cuda_aware: bool = False, recover: bool = False):
    """The serial engine (no `comm`) or the MPI engine over `comm` for a placement and its schedule
    (`recover`: a failure is settled among the ranks instead of aborting the job)."""
    if comm is None:
        from pprs_mpi.engines.serial import SerialEngine
        return SerialEngine(wiring, schedule, sampling, backend, fault, timeline_every)
    from pprs_mpi.engines.mpi import MpiEngine
    return MpiEngine(comm, wiring, schedule, sampling, backend, comm_timeout, fault, timeline_every, cuda_aware,
                     recover)
