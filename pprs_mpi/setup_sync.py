"""The collectives of a run's setup, which cannot hang: every rank's error reaches every rank, and a
rank that never arrives is named after a bounded wait.

Before the first iteration every rank sets the run up itself: it resolves the configuration (reading
the trace to resume), calls the builder, hashes its graph and picks its device. A plain collective
there (allgather, bcast) hangs the whole job when one rank fails before reaching it: the failing
rank returns and the others wait inside MPI forever, where no --comm-timeout looks. So every setup
collective goes through `SetupSync`:

- A *round* is an allgather done by hand: each rank sends rank 0 its value (or its error), rank 0
  collects one message per rank, polling with probes (never blocking inside MPI), and answers every
  rank with all the values, or with the first error it saw ("rank R: cause"; without the rank when
  every rank reports the same error, as a mistake in the configuration is found alike everywhere).
- A rank that fails, wherever it is in the setup, sends its error as its message of the round it is
  in. Messages of one sender arrive in order and no rank passes a round before rank 0 answered it,
  so rank 0 finds the error in the round it waits in, and every rank gets the same one line.
- With a timeout (the run's --comm-timeout), rank 0 names the ranks that did not arrive within it and
  aborts the job (exit 2); the others give rank 0 ANSWER_SLACK_SECONDS more, then name rank 0 and
  abort. Without one they wait as long as it takes, as the run's own waits do; a rank that failed
  waits at most FAILED_RANK_WAIT_SECONDS for the answer, then reports its own error and aborts.

The rounds use a duplicate of the communicator, so that their tags can never meet the engine's.
"""

from __future__ import annotations

import sys
import time

from pprs_mpi.config import ConfigError

ANSWER_SLACK_SECONDS = 5.0  # beyond the timeout, so that rank 0 (which waits first) is the one to report
FAILED_RANK_WAIT_SECONDS = 30.0  # how long a rank that failed waits for rank 0 to share its error
SAME_ERROR_WAIT_SECONDS = 2.0  # how long rank 0, failing, waits to learn whether every rank failed alike
MAX_ERROR_CHARS = 2000  # an error line is kept short: its message then never waits for a receiver
_STEP_TAG, _ANSWER_TAG = 1, 2
_SETUP_TIMEOUT = 2  # the exit code of a job aborted here: bad input, as for every setup error


class SetupFailed(ConfigError):
    """An error of the setup, already shared with every rank (the same one line on each)."""


class SetupSync:
    """Rounds of a setup over `comm` (see the module docstring); `timeout` (seconds or None) may be set
    once the configuration is known. Create it on every rank before anything can fail, and `close` it
    once the setup succeeded."""

    def __init__(self, comm, prefix: str = "", timeout: float | None = None):
        self.rank, self.size, self.prefix, self.timeout = comm.rank, comm.size, prefix, timeout
        self.comm = comm.Dup() if comm.size > 1 else comm

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank; SetupFailed if any rank failed."""
        return self._round(("ok", value)) if self.size > 1 else [value]

    def bcast(self, value):
        """Rank 0's `value` on every rank."""
        return self.gather(value if self.rank == 0 else None)[0]

    def fail(self, message: str):
        """Shares this rank's error with every rank and raises SetupFailed with the job's one line."""
        if self.size == 1:
            raise SetupFailed(message)
        self._round(("error", message.replace("\n", " ")[:MAX_ERROR_CHARS]))

    def close(self) -> None:
        if self.size > 1:
            self.comm.Free()

    def _round(self, mine: tuple) -> list:
        if self.rank == 0:
            answer = self._collect(mine)
            for rank in range(1, self.size):
                self.comm.isend(answer, dest=rank, tag=_ANSWER_TAG)
        else:
            sent = self.comm.isend(mine, dest=0, tag=_STEP_TAG)
            answer = self._answer(mine)
            if answer[0] == "ok":
                sent.wait()
        if answer[0] == "error":
            raise SetupFailed(answer[1])
        return answer[1]

    def _collect(self, mine: tuple) -> tuple:
        """Rank 0: every rank's message of this round, or the first error (its own first)."""
        if mine[0] == "error":
            return "error", self._own_error(mine[1])
        values, start, pause = {0: mine[1]}, time.monotonic(), 0.0
        while len(values) < self.size:
            for rank in range(1, self.size):
                if rank not in values and self.comm.iprobe(source=rank, tag=_STEP_TAG):
                    kind, value = self.comm.recv(source=rank, tag=_STEP_TAG)
                    if kind == "error":
                        return "error", f"rank {rank}: {value}"
                    values[rank] = value
            waited = time.monotonic() - start
            if self.timeout is not None and waited > self.timeout and len(values) < self.size:
                missing = ", ".join(str(r) for r in range(self.size) if r not in values)
                self._abort(f"rank(s) {missing} did not finish setting up within {self.timeout:g} s (--comm-timeout; "
                            "a builder that hangs or is much slower there?)")
            pause = min(0.01, pause + 0.0005)
            time.sleep(pause)
        return "ok", [values[rank] for rank in range(self.size)]

    def _own_error(self, message: str) -> str:
        """Rank 0's error, named 'rank 0: ...' unless every rank reports the same (a mistake in the
        configuration, found alike everywhere), which SAME_ERROR_WAIT_SECONDS at most tells."""
        heard, deadline, pause = set(), time.monotonic() + SAME_ERROR_WAIT_SECONDS, 0.0
        while len(heard) < self.size - 1 and time.monotonic() < deadline:
            for rank in range(1, self.size):
                if rank not in heard and self.comm.iprobe(source=rank, tag=_STEP_TAG):
                    if self.comm.recv(source=rank, tag=_STEP_TAG) != ("error", message):
                        return f"rank 0: {message}"
                    heard.add(rank)
            pause = min(0.01, pause + 0.0005)
            time.sleep(pause)
        return message if len(heard) == self.size - 1 else f"rank 0: {message}"

    def _answer(self, mine: tuple) -> tuple:
        """Another rank: rank 0's answer to this round, waiting a bounded time when there is a bound."""
        failed = mine[0] == "error"
        limit = FAILED_RANK_WAIT_SECONDS if failed else (
            None if self.timeout is None else self.timeout + ANSWER_SLACK_SECONDS)
        start, pause = time.monotonic(), 0.0
        while not self.comm.iprobe(source=0, tag=_ANSWER_TAG):
            if limit is not None and time.monotonic() - start > limit:
                own = f"{mine[1]}; " if failed else ""
                self._abort(f"rank {self.rank}: {own}rank 0 did not answer within {limit:g} s during the setup "
                            "(a builder that hangs on rank 0?)")
            pause = min(0.01, pause + 0.0005)
            time.sleep(pause)
        return self.comm.recv(source=0, tag=_ANSWER_TAG)

    def _abort(self, text: str) -> None:
        print(f"{self.prefix}error: {text}", file=sys.stderr, flush=True)
        self.comm.Abort(_SETUP_TIMEOUT)
