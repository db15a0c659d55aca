"""The collectives of a run's setup, which cannot hang: every rank's error reaches every rank, and a
rank that never arrives is named after a bounded wait. Messages and bytes grow linearly with the ranks.

Before the first iteration every rank sets the run up itself: it resolves the configuration (reading
the trace to resume), calls the builder, hashes its graph and picks its device. A plain collective
there (allgather, bcast) hangs the whole job when one rank fails before reaching it: the failing
rank returns and the others wait inside MPI forever, where no --comm-timeout looks. So every setup
collective goes through `SetupSync`:

- A *round*: each rank sends rank 0 its value (or its error), rank 0 collects one message per rank,
  polling with probes (never blocking inside MPI), and answers every rank with a short verdict: what
  rank 0's `judge` makes of all the values (that they agree, or the first rank that differs), or the
  first error it saw ("rank R: cause"; without the rank when every rank reports the same error, as a
  mistake in the configuration is found alike everywhere). Nobody receives everyone's values, so a
  round costs O(P) messages and bytes. A `bcast` is a round, then MPI's own broadcast, which cannot
  hang once every rank is known to have arrived.
- A rank that fails, wherever it is in the setup, sends its error as its message of the round it is
  in. Messages of one sender arrive in order and no rank passes a round before rank 0 answered it,
  so rank 0 finds the error in the round it waits in, and every rank gets the same one line.
- Every send is completed, or kept with its buffer until MPI has read it (`pending_sends`): a dropped
  request lets MPI read freed memory, and the receiver a garbled message. A message that arrives
  garbled anyway, or a rank that MPI reports lost, is named as such.
- With a timeout (the run's --comm-timeout), rank 0 names the ranks that did not arrive within it and
  aborts the job (exit 2); the others give rank 0 ANSWER_SLACK_SECONDS more, then name rank 0 and
  abort. Without one they wait as long as it takes, as the run's own waits do; a rank that failed
  waits at most FAILED_RANK_WAIT_SECONDS for the answer, then reports its own error and aborts.

The rounds use a duplicate of the communicator, so that their tags can never meet the engine's.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from pprs_mpi import pending_sends
from pprs_mpi.config import ConfigError

ANSWER_SLACK_SECONDS = 5.0  # beyond the timeout, so that rank 0 (which waits first) is the one to report
FAILED_RANK_WAIT_SECONDS = 30.0  # how long a rank that failed waits for rank 0 to share its error
SAME_ERROR_WAIT_SECONDS = 2.0  # how long rank 0, failing, waits to learn whether every rank failed alike
MAX_ERROR_CHARS = 2000  # an error line is kept short: its message then never waits for a receiver
MAX_NAMED_RANKS = 10  # ranks named in one line; the rest are counted
_STEP_TAG, _ANSWER_TAG = 1, 2
_SETUP_TIMEOUT = 2  # the exit code of a job aborted here: bad input, as for every setup error


class SetupFailed(ConfigError):
    """An error of the setup, already shared with every rank (the same one line on each)."""


def name_ranks(ranks: list[int]) -> str:
    """'3, 5, 9' for a few ranks; the first MAX_NAMED_RANKS and how many more for many."""
    shown = ", ".join(str(r) for r in ranks[:MAX_NAMED_RANKS])
    return shown + (f" and {len(ranks) - MAX_NAMED_RANKS} more" if len(ranks) > MAX_NAMED_RANKS else "")


class SetupSync:
    """Rounds of a setup over `comm` (see the module docstring); `timeout` (seconds or None) may be set
    once the configuration is known. Create it on every rank before anything can fail, and `close` it
    once the setup succeeded."""

    def __init__(self, comm, prefix: str = "", timeout: float | None = None):
        self.rank, self.size, self.prefix, self.timeout = comm.rank, comm.size, prefix, timeout
        self.comm = comm.Dup() if comm.size > 1 else comm

    def gather(self, value, check: Callable[[list], None] | None = None) -> list | None:
        """Every rank's `value`, in rank order, on rank 0 (None on the others); SetupFailed if any rank failed,
        or if `check(values)` on rank 0 raised a ConfigError (its line, on every rank)."""
        return self._round(("ok", value), check)[0]

    def agree(self, value, judge: Callable[[list], object]):
        """`judge(every rank's value, in rank order)`, computed on rank 0, on every rank: a short verdict. A
        ConfigError that `judge` raises fails the round on every rank with its line."""
        return self._round(("ok", value), judge)[1]

    def bcast(self, value):
        """Rank 0's `value` on every rank: a round, then MPI's broadcast (every rank has arrived)."""
        if self.size == 1:
            return value
        self._round(("ok", None), None)
        return self.comm.bcast(value, root=0)

    def fail(self, message: str):
        """Shares this rank's error with every rank and raises SetupFailed with the job's one line."""
        self._round(("error", message.replace("\n", " ")[:MAX_ERROR_CHARS]), None)

    def close(self) -> None:
        if self.size > 1:
            self.comm.Free()

    def _round(self, mine: tuple, judge) -> tuple[list | None, object]:
        """(every rank's value on rank 0, else None; `judge` of them on every rank, None without one)."""
        if self.size == 1:
            if mine[0] == "error":
                raise SetupFailed(mine[1])
            return [mine[1]], None if judge is None else judge([mine[1]])
        values = None
        if self.rank == 0:
            answer = self._collect(mine)
            if answer[0] == "ok":
                values = answer[1]
                try:
                    answer = "ok", None if judge is None else judge(values)
                except ConfigError as err:
                    answer = "error", str(err).replace("\n", " ")[:MAX_ERROR_CHARS]
            self._answer_everyone(answer)
        else:
            sent = self.comm.isend(mine, dest=0, tag=_STEP_TAG)
            answer = self._answer(mine)
            pending_sends.keep([sent])  # completed when rank 0 took it, as it did unless the round failed
        if answer[0] == "error":
            raise SetupFailed(answer[1])
        return values, answer[1]

    def _answer_everyone(self, answer: tuple) -> None:
        """Rank 0: sends `answer` to every rank. An agreed round's answers are waited for (every rank waits
        for one); a failed round's are kept (a rank still setting up may never take its answer)."""
        requests = [self.comm.isend(answer, dest=rank, tag=_ANSWER_TAG) for rank in range(1, self.size)]
        if answer[0] == "error":
            pending_sends.keep(requests)
            return
        start, pause = time.monotonic(), 0.0
        while not all(request.Test() for request in requests if request):
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                slow = [rank for rank, request in enumerate(requests, 1) if request]
                pending_sends.keep(requests)
                self._abort(f"rank(s) {name_ranks(slow)} did not take rank 0's answer within {self.timeout:g} s "
                            "during the setup (--comm-timeout): they exited or stopped answering")
            pause = min(0.01, pause + 0.0005)
            time.sleep(pause)

    def _collect(self, mine: tuple) -> tuple:
        """Rank 0: every rank's message of this round, or the first error (its own first)."""
        from mpi4py import MPI
        if mine[0] == "error":
            return "error", self._own_error(mine[1])
        values, start, pause, status = {0: mine[1]}, time.monotonic(), 0.0, MPI.Status()
        while len(values) < self.size:
            while (message := self._probe(status)) is not None:
                rank = status.Get_source()
                kind, value = self._unpickled(message, f"rank {rank}'s setup message")
                if kind == "error":
                    return "error", f"rank {rank}: {value}"
                values[rank] = value
                pause = 0.0
            waited = time.monotonic() - start
            if self.timeout is not None and waited > self.timeout and len(values) < self.size:
                missing = [r for r in range(self.size) if r not in values]
                self._abort(f"rank(s) {name_ranks(missing)} did not finish setting up within {self.timeout:g} s "
                            "(--comm-timeout): still building or loading there, or stopped")
            pause = min(0.01, pause + 0.0005)
            time.sleep(pause)
        return "ok", [values[rank] for rank in range(self.size)]

    def _probe(self, status):
        """Rank 0: the next step message from any rank, or None; a rank MPI reports lost ends the setup."""
        from mpi4py import MPI
        try:
            return self.comm.improbe(source=MPI.ANY_SOURCE, tag=_STEP_TAG, status=status)
        except MPI.Exception as err:
            self._abort(f"MPI reported an error while rank 0 waited for the other ranks during the setup (a rank "
                        f"exited or its host became unreachable?): {err.Get_error_string()}")

    def _unpickled(self, message, what: str):
        """`message` received; one that arrives garbled ends the setup with a line that says so."""
        try:
            return message.recv()
        except Exception as err:  # noqa: BLE001 — an unpickling error of any kind is the same fault
            self._abort(f"rank {self.rank}: {what} arrived garbled ({type(err).__name__}: {err}); a send whose "
                        "buffer was released early, or a fault of the MPI library or network")

    def _own_error(self, message: str) -> str:
        """Rank 0's error, named 'rank 0: ...' unless every rank reports the same (a mistake in the
        configuration, found alike everywhere), which SAME_ERROR_WAIT_SECONDS at most tells."""
        from mpi4py import MPI
        heard, deadline, pause, status = set(), time.monotonic() + SAME_ERROR_WAIT_SECONDS, 0.0, MPI.Status()
        while len(heard) < self.size - 1 and time.monotonic() < deadline:
            while (message_ := self._probe(status)) is not None:
                rank = status.Get_source()
                if self._unpickled(message_, f"rank {rank}'s setup message") != ("error", message):
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
        while (message := self.comm.improbe(source=0, tag=_ANSWER_TAG)) is None:
            if limit is not None and time.monotonic() - start > limit:
                if failed:
                    self._abort(f"rank {self.rank}: {mine[1]} (rank 0 did not take this error within {limit:g} s: "
                                "it is still setting up, or stopped)")
                self._abort(f"rank {self.rank}: rank 0 did not answer within {limit:g} s during the setup: it is "
                            "still setting up there (building, loading or checking), or stopped")
            pause = min(0.01, pause + 0.0005)
            time.sleep(pause)
        return self._unpickled(message, "rank 0's answer in the setup")

    def _abort(self, text: str) -> None:
        print(f"{self.prefix}error: {text}", file=sys.stderr, flush=True)
        self.comm.Abort(_SETUP_TIMEOUT)
