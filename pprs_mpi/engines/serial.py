"""The reference engine: every stage in one process, executing the schedule time unit by time unit."""

from __future__ import annotations

import numpy as np

from pprs_mpi.backend import Backend
from pprs_mpi.faults import Fault
from pprs_mpi.engines.stage import Message, Sampling, StageRunner, Timeline, Wiring
from pprs_mpi.schedule import Schedule
from pprs_mpi.trace import TIMELINE_DTYPE


class LocalTransport:
    """An in-process mailbox standing in for MPI: a send files the array, a receive takes it."""

    def __init__(self):
        self._mailbox: dict[Message, object] = {}

    def expect(self, messages: list[Message], check_shapes: bool = True) -> None:
        pass

    def send(self, message: Message, array) -> None:
        self._mailbox[message] = array

    def arrived(self, message: Message) -> bool:
        return message in self._mailbox

    def recv(self, message: Message):
        try:
            return self._mailbox.pop(message)
        except KeyError:
            raise RuntimeError(f"illegal schedule: {message} is needed before it is sent") from None

    def complete_sends(self) -> None:
        pass


class SerialEngine:
    """Runs all stages' runners in lockstep over the schedule's time units; bitwise equal to the MPI engine."""

    name = "serial"

    def __init__(self, wiring: Wiring, schedule: Schedule, sampling: Sampling, backend: Backend,
                 fault: Fault | None = None, timeline_every: int = 1):
        transport = LocalTransport()
        self.timelines = [Timeline(s, timeline_every) for s in range(len(wiring.stages))]
        self.runners = [StageRunner(wiring, schedule, s, sampling, backend, transport, self.timelines[s], fault)
                        for s in range(len(wiring.stages))]
        self.schedule = schedule

    def gradient(self, x, t: int):
        """(G_t, sample values) for iterate x_t at iteration t."""
        for runner in self.runners:
            runner.begin(t, x)
        for unit in range(self.schedule.makespan):
            for runner, row in zip(self.runners, self.schedule.actions):
                runner.step(unit, row[unit])
        return [runner.end() for runner in self.runners][0]

    def evaluate(self, y, t: int) -> float:
        """f(y), stage after stage (stages follow a topological order)."""
        for runner in self.runners:
            runner.begin(t, y, evaluation=True)
        for runner in self.runners:
            for action in runner.eval_actions:
                runner.execute(action)
        return [runner.end(evaluation=True) for runner in self.runners][0]

    def gather(self) -> tuple[np.ndarray, list[dict]]:
        """Every stage's timeline records since the last gather and its memory figures, as if each
        stage were a rank (an in-process mailbox has no message buffers)."""
        records = np.concatenate([timeline.take(TIMELINE_DTYPE) for timeline in self.timelines])
        return records, [{"peak_stash": runner.peak_stash, "buffer_bytes": 0, "peak_send_bytes": 0}
                         for runner in self.runners]

    def stop(self) -> None:
        pass
