"""The reference engine: every stage in one process, executing the schedule time unit by time unit."""

from __future__ import annotations

import numpy as np

from pprs_mpi.backend import Backend
from pprs_mpi.engines.plan import n_channels
from pprs_mpi.engines.runner import StageRunner
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.engines.timeline import MEMORY_KEYS, Timeline, sampled_ranks
from pprs_mpi.engines.transport import LocalTransport
from pprs_mpi.faults import Fault
from pprs_mpi.schedule import Schedule


class SerialEngine:
    """Runs all stages' runners in lockstep over the schedule's time units; bitwise equal to the MPI engine."""

    name = "serial"

    def __init__(self, wiring: Wiring, schedule: Schedule, sampling: Sampling, backend: Backend,
                 fault: Fault | None = None, timeline_every: int = 1):
        transport = LocalTransport(n_channels(wiring), sampling.n_microbatches)
        detailed = set(sampled_ranks(len(wiring.stages)))  # as the MPI engine's ranks
        self.timelines = [Timeline(s, timeline_every, s in detailed) for s in range(len(wiring.stages))]
        self.runners = [StageRunner(wiring, schedule, s, sampling, backend, transport, self.timelines[s], fault)
                        for s in range(len(wiring.stages))]
        # Unit after unit, stage after stage: stage 0 at every unit (it draws noisy copies), the others
        # where a segment of their actions starts.
        self._steps = [(runner.step, unit) for unit in range(schedule.makespan) for runner in self.runners
                       if runner.stage == 0 or runner.plan.segments[unit] is not None]
        # The evaluation has no schedule: its segments run in the graph's topological order (that of
        # their first node, the only one that may read another segment), whatever stage owns them, so
        # that a placement whose stages are not contiguous in that order works too.
        self._eval_steps = [(runner, segment) for _, _, runner, segment in sorted(
            ((segment.steps[0].node, runner.stage, runner, segment)
             for runner in self.runners for segment in runner.plan.eval_segments), key=lambda item: item[:2])]

    def gradient(self, x, t: int):
        """(G_t, sample values) for iterate x_t at iteration t."""
        for runner in self.runners:
            runner.begin(t, x)
        for step, unit in self._steps:
            step(unit)
        return [runner.end() for runner in self.runners][0]

    def evaluate(self, y, t: int) -> float:
        """f(y): the evaluation's segments in topological order, across stages."""
        for runner in self.runners:
            runner.begin(t, y, evaluation=True)
        for runner, segment in self._eval_steps:
            runner.execute_evaluation((segment,))
        return [runner.end(evaluation=True) for runner in self.runners][0]

    def gather(self) -> tuple[np.ndarray, list[dict]]:
        """The sampled stages' timeline records since the last gather, and every stage's summary and memory
        figures, as if each stage were a rank (an in-process mailbox has no message buffers)."""
        taken = [timeline.take() for timeline in self.timelines]
        return np.concatenate([records for records, _ in taken]), [
            {**dict(zip(MEMORY_KEYS, (runner.peak_stash, 0, 0))), **summary}
            for runner, (_, summary) in zip(self.runners, taken)]

    def stop(self) -> None:
        pass
