"""The MPI engine: one stage per rank, activations and cotangents as non-blocking messages.

Deadlock freedom. Every rank executes its own row of a *legal* schedule in time order, so each
message it waits for is produced by an action of another rank at a strictly earlier time unit.
Sends never block (`Isend`, completed only at the end of the pass) and every receive is posted
(a persistent receive started; one tag per channel, matched in order) at the latest when it is
waited for. By induction on the time unit, the earliest action not yet done always has its inputs
delivered, so every rank finishes the pass, whatever the DAG and the placement.

Memory. Receives are posted RECEIVE_WINDOW messages ahead per channel, in the order the rank
needs them (the stage's plan lists them), into the channel's own ring of buffers, allocated once,
copied out and reused at once; completed sends (in any order) release their buffers as the pass
goes, and rank 0 draws each noisy copy when it is first needed and adds in root cotangents as they
arrive. So a rank's message buffers and pending sends do not grow with K, and under 1F1B the
activations a rank keeps are bounded by the depth.

Shapes. On the first pass of each kind, every message's element count (from its MPI status) is
checked against the shape the receiver's graph gives it, and a longer one's truncation error is
named: a ShapeError naming the rank, the edge and the microbatch (the sender checked its arrays).

Failures. Rank 0 drives the others with a small broadcast command per pass. The engine talks on its own
duplicate of the communicator, so that whatever a failed pass leaves unmatched cannot reach the next
solve in the same processes. From the command line (the default), a rank that fails
tells rank 0 (tag FAILURE) and aborts the job if rank 0 has not done so within a grace period;
rank 0 watches for such notices while it waits, marks its trace failed, reports the error once
and aborts. A `comm_timeout` turns any wait longer than that into an error naming the peer and
the message. A rank 0 that does not take the notice (hung itself) is blamed in the one report,
which the lowest failing rank prints (the others wait a little longer and are ended by its abort);
that rank then sends a SIGTERM to rank 0 (on the same host), whose handler finds the pending notice
and marks the trace failed, if rank 0 still runs Python code.

With `recover` (the Python API, `minimize`, where a sweep in one process must go on to its next solve)
no rank aborts: rank 0 takes a failing rank's notice as above, or fails itself, marks its trace failed
and sends the one error line (tag FAILURE) to every other rank, whose waits watch for it; each rank then
cancels and frees its receives, keeps its pending sends (with their buffers) until MPI completes them and
raises (see `settle_failure`). Only a rank 0 that takes no notice within the grace period still ends the job.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

from pprs_mpi import pending_sends
from pprs_mpi.backend import Backend, Staging
from pprs_mpi.faults import Fault
from pprs_mpi.engines.plan import Channel, channels
from pprs_mpi.engines.runner import ShapeError, StageRunner
from pprs_mpi.engines.stage import Sampling, Wiring
from pprs_mpi.engines.timeline import MEMORY_KEYS, WAIT_PHASE, Timeline, sampled_ranks
from pprs_mpi.schedule import Schedule

FAILURE_TAG, CLOCK_TAG, GATHER_TAG, FIRST_DATA_TAG = 0, 1, 2, 3  # reserved tags, then one per channel
GRADIENT, EVALUATE, GATHER, STOP = range(4)
FAILURE_GRACE_SECONDS = 5.0
TRACE_WRITE_SECONDS = 60.0  # how long one commit of rank 0's trace may take between passes
COMMAND_SLACK_SECONDS = 2 * TRACE_WRITE_SECONDS  # beyond --comm-timeout, for rank 0's trace writes between passes
STAGGER_SECONDS, MAX_STAGGERED_RANKS = 2.0, 8  # see report_failure_and_abort; an abort takes over 0.5 s
# to reach the ranks of another host, so the next-lowest failing rank waits longer before it reports too
SIGTERM_PROBE_SECONDS = 0.05  # how long rank 0 looks for a failure notice when a SIGTERM comes
ABORT_FLUSH_SECONDS = 0.2  # between our error line and MPI_Abort
WAKE_SECONDS = 3.0  # how long a stuck rank 0 is given to mark its trace failed and abort the job
_rank0_process: tuple[str, int] | None = None  # rank 0's (host, pid), set by the Poller
RECEIVE_WINDOW = 4  # receives posted ahead per channel: transfers overlap compute, memory stays bounded
FIRST_REAP = 8  # pending sends before completed ones are first looked for; then twice those still pending
YIELDING_SECONDS = 2e-3  # how long a wait polls with sched_yield before it starts sleeping, where ranks share cores
OWN_CORE_YIELDING_SECONDS = 0.5  # the same where every rank of the host has a core of its own (see polling_seconds)


class RemoteFailure(RuntimeError):
    """Another rank reported an error; the message already names that rank."""


class JobAborted(RemoteFailure):
    """Raised on rank 0 by the SIGTERM of a job that another rank is aborting after reporting its error."""


class CommTimeout(RuntimeError):
    """A wait exceeded --comm-timeout."""


class LostRank(RuntimeError):
    """MPI reported a process failure (Open MPI run with `mpirun --with-ft ulfm`): a rank exited or its host
    became unreachable. The message names the lost rank(s) and their hosts."""


PROCESS_FAILURES = (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED)


def lost_rank_error(comm, err: Exception, hosts: dict[int, str], waiting_for: str) -> Exception:
    """`err` as a LostRank naming the failed ranks of `comm` and their hosts (where `hosts` has them, see
    host_table), if MPI reported a process failure; any other error as it is."""
    if not isinstance(err, MPI.Exception) or err.Get_error_class() not in PROCESS_FAILURES:
        return err
    try:
        group = comm.Get_failed()
        ranks = [r for r in MPI.Group.Translate_ranks(group, range(group.Get_size()), comm.Get_group())
                 if r != MPI.UNDEFINED]
    except (MPI.Exception, NotImplementedError):
        ranks = []
    lost = ", ".join(f"rank {r} (host {hosts[r]})" if r in hosts else f"rank {r}" for r in ranks) or "a rank"
    return LostRank(f"{lost} was lost: it exited or its host became unreachable (rank {comm.rank} was waiting "
                    f"for {waiting_for})")


def host_table(comm, links: Sequence[Channel] = ()) -> dict[int, str]:
    """Rank -> host name, for the ranks this rank may have to name as lost: every rank on rank 0 (which
    prints the job's error line), and elsewhere this rank, rank 0 and the ranks it
    exchanges messages with (the `links` between stages), whose failures it is the one to see. Rank 0
    gathers the names and sends each rank its few: O(P) bytes at rank 0 and in all, where every rank
    receiving every name was O(P^2). Collectives, like the rest of the engine's set-up: nothing before
    them can fail on one rank alone."""
    host = socket.gethostname()
    if comm.size == 1:
        return {0: host}
    hosts = comm.gather(host, root=0)
    tables = None
    if comm.rank == 0:
        peers = [{0, rank} for rank in range(comm.size)]
        for link in links:
            peers[link.source].add(link.destination)
            peers[link.destination].add(link.source)
        tables = [{r: hosts[r] for r in sorted(peers[rank])} for rank in range(comm.size)]
    table = comm.scatter(tables, root=0)
    return dict(enumerate(hosts)) if comm.rank == 0 else table


def polling_seconds(comm) -> float:
    """How long a wait polls before it backs off to sleeping: OWN_CORE_YIELDING_SECONDS where the ranks on this
    host, times their intra-op threads (OMP_NUM_THREADS, which `threads.use` sets), fit in the cores they may run
    on together (the union of their affinities), else YIELDING_SECONDS. A sleeping rank wakes up to a millisecond
    late, and the last stage of a pipeline waits longer than 2 ms at the start of every pass: with a core of its
    own, polling costs no other rank anything. A collective, on the ranks of each host."""
    host = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        cores = set().union(*host.allgather(_usable_cores()))
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        return OWN_CORE_YIELDING_SECONDS if host.size * threads <= len(cores) else YIELDING_SECONDS
    finally:
        host.Free()


def _usable_cores() -> set[int]:
    """The CPUs this process may run on (every CPU where the system does not say, as on macOS)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return set(range(os.cpu_count() or 1))


class Poller:
    """Waits on MPI requests without blocking inside MPI, so that rank 0 can notice failures elsewhere
    and any rank can give up after `timeout` seconds. `links`: the engine's channels (see host_table)."""

    def __init__(self, comm, timeout: float | None, recover: bool = False, links: Sequence[Channel] = ()):
        self.comm, self.timeout = comm, timeout
        self.hosts = host_table(comm, links)
        self._listen = recover and comm.rank != 0  # watch for rank 0's verdict on a failure elsewhere
        self._status = MPI.Status()
        self.yielding_seconds = polling_seconds(comm)
        if comm.size > 1:  # where rank 0 runs, for report_failure_and_abort to wake a stuck rank 0
            global _rank0_process
            _rank0_process = comm.bcast((socket.gethostname(), os.getpid()), root=0)
        if comm.rank == 0 and comm.size > 1 and threading.current_thread() is threading.main_thread():
            self._on_sigterm = signal.signal(signal.SIGTERM, self._sigterm)

    def wait(self, request, describe, slack: float = 0.0, status=None) -> None:
        """Waits for `request`, at most the poller's timeout plus `slack` seconds; `status`, if given,
        receives the completed request's status."""
        timeout = None if self.timeout is None else self.timeout + slack
        start, pause = time.perf_counter(), 0.0
        while not self._test(request, status, describe):
            if self.comm.rank == 0:
                self.check_failures()
            elif self._listen:
                self.check_verdict()
            waited = time.perf_counter() - start
            if timeout is not None and waited > timeout:
                raise CommTimeout(f"rank {self.comm.rank} waited more than {timeout:g} s for {describe()}")
            if waited < self.yielding_seconds:  # low latency, yet a rank sharing this core can run meanwhile
                os.sched_yield()
            else:  # a long wait: back off to sleeping, so idle ranks cost no CPU
                pause = min(1e-3, pause + 5e-5)
                time.sleep(pause)

    def _test(self, request, status, describe) -> bool:
        try:
            return request.Test(status)
        except MPI.Exception as err:
            raise lost_rank_error(self.comm, err, self.hosts, describe()) from None

    def check_failures(self, error=RemoteFailure) -> None:
        if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=FAILURE_TAG, status=self._status):
            raise error(self.comm.recv(source=self._status.Get_source(), tag=FAILURE_TAG))

    def check_verdict(self) -> None:
        """A rank other than 0 (recover mode): raises RemoteFailure if rank 0 has sent the run's error line."""
        if self.comm.Iprobe(source=0, tag=FAILURE_TAG):
            raise RemoteFailure(self.comm.recv(source=0, tag=FAILURE_TAG))

    def receive(self, source: int, tag: int, describe, slack: float = 0.0):
        """A pickled message from `source`, waited for like `wait` (watching for failures meanwhile)."""
        timeout = None if self.timeout is None else self.timeout + slack
        start = time.perf_counter()
        while (message := self.comm.improbe(source=source, tag=tag)) is None:
            if self.comm.rank == 0:
                self.check_failures()
            elif self._listen:
                self.check_verdict()
            if timeout is not None and time.perf_counter() - start > timeout:
                raise CommTimeout(f"rank {self.comm.rank} waited more than {timeout:g} s for {describe()}")
            time.sleep(1e-3)
        return message.recv()

    def _sigterm(self, signum, frame) -> None:
        """Rank 0: a SIGTERM while another rank's failure notice is pending is that rank aborting the
        job (rank 0 did not take the notice in time): end the run here, so the trace is marked failed.
        Any other SIGTERM goes to the handler that was there before."""
        deadline = time.monotonic() + SIGTERM_PROBE_SECONDS  # one probe may not yet see a notice sent long ago
        while time.monotonic() < deadline:
            self.check_failures(JobAborted)
        if callable(self._on_sigterm):
            self._on_sigterm(signum, frame)
        elif self._on_sigterm == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class _Inbox:
    """One incoming channel: its ring of persistent receives (at most RECEIVE_WINDOW buffers, allocated once),
    and for the pass the microbatches expected, in the order needed, and those posted, oldest first."""

    __slots__ = ("channel", "queue", "next", "posted", "free", "head_done")

    def __init__(self, channel: Channel, ring: list):
        self.channel, self.queue, self.next, self.posted = channel, (), 0, deque()
        self.free = deque(ring)  # (persistent request, buffer) pairs not posted
        self.head_done = False  # the oldest posted receive was found complete by `arrived`


class MpiTransport:
    """Point-to-point messages of one rank: each incoming channel receives through a ring of persistent
    requests and buffers made once (Recv_init, then Start per message), a window ahead; sends are non-blocking,
    their buffers released as they complete and all completed by the end of the pass.

    A message's tag is its channel's: MPI delivers the messages of one sender and tag in the order they were
    sent, into the receives in the order they were posted, and each channel's messages are sent and received
    in increasing microbatch order (the plan's tests check it).
    """

    def __init__(self, comm, channels: list[Channel], sampling: Sampling, staging: Staging, timeline: Timeline,
                 poller: Poller):
        self.comm, self.staging, self.timeline, self.poller = comm, staging, timeline, poller
        M = sampling.n_microbatches
        self._rows = [len(sampling.samples(mb)) for mb in range(M)] + [1]  # the evaluation microbatch: one point
        size = 1 + max((c.id for c in channels), default=0)
        if FIRST_DATA_TAG + size > MPI.COMM_WORLD.Get_attr(MPI.TAG_UB):  # an attribute of COMM_WORLD only
            raise ValueError(f"too many channels ({size}) for this MPI's tag range")
        self._inboxes: list = [None] * size
        self._outboxes: list = [None] * size  # channel -> (destination, tag)
        for c in channels:
            if c.destination == comm.rank:
                ring = [self._persistent_receive(c, max(self._rows)) for _ in range(min(RECEIVE_WINDOW, M))]
                self._inboxes[c.id] = _Inbox(c, ring)
            if c.source == comm.rank:
                self._outboxes[c.id] = (c.destination, FIRST_DATA_TAG + c.id)
        self.idle = None  # see Transport.idle: stage 0 draws noise ahead
        self._send_requests: list = []
        self._send_buffers: list = []
        self._send_bytes, self.peak_send_bytes, self._reap_at = 0, 0, FIRST_REAP
        self.checking = True  # whether this pass's receives are checked against their shapes
        self._status, self._datatype = MPI.Status(), from_numpy_dtype(staging.backend.dtype)

    def _persistent_receive(self, channel: Channel, rows: int) -> tuple:
        """A buffer for `rows` samples of the channel and a persistent receive into it (a message may fill
        fewer rows: the evaluation point's, or a last microbatch's)."""
        buffer = self.staging.receive_buffer((rows, *channel.shape))
        return self.comm.Recv_init(buffer, source=channel.source, tag=FIRST_DATA_TAG + channel.id), buffer

    def expect(self, receives, check_shapes: bool = True) -> None:
        """This pass's receives, (channel, microbatches in the order needed) pairs: the first of each
        channel are posted; with `check_shapes` each one is checked to have exactly its shape."""
        self.checking = check_shapes
        for channel, mbs in receives:
            inbox = self._inboxes[channel]
            inbox.queue, inbox.next = mbs, 0
            for _ in range(min(len(inbox.free), len(mbs))):
                self._post(inbox)

    def send(self, channel: int, mb: int, array) -> None:
        if len(self._send_requests) >= self._reap_at:
            self._release_completed_sends()
        destination, tag = self._outboxes[channel]
        buffer = self.staging.outgoing(array)
        self._send_requests.append(self.comm.Isend(buffer, dest=destination, tag=tag))
        self._send_buffers.append(buffer)
        self._send_bytes += buffer.nbytes
        if self._send_bytes > self.peak_send_bytes:
            self.peak_send_bytes = self._send_bytes

    def arrived(self, channel: int, mb: int) -> bool:
        """Whether `recv(channel, mb)` would return without waiting."""
        inbox = self._inboxes[channel]
        request = self._head(inbox, mb)[1]
        if inbox.head_done:
            return True
        try:
            if not request.Test(self._status):
                return False
        except MPI.Exception as err:
            raise self._named(err, inbox, mb) from None
        if self.checking:  # the completed request keeps no status: checked now, while it is at hand
            self._check_count(inbox, mb)
        inbox.head_done = True
        return True

    def recv(self, channel: int, mb: int):
        inbox = self._inboxes[channel]
        _, request, buffer = self._head(inbox, mb)
        inbox.posted.popleft()
        start = time.perf_counter()
        if inbox.head_done:
            inbox.head_done = False
        else:
            try:
                done = request.Test(self._status)
                while not done and self.idle is not None and self.idle():  # work ahead rather than wait
                    start, done = time.perf_counter(), request.Test(self._status)
                if not done:
                    self.poller.wait(request, lambda: self.describe(inbox, mb), status=self._status)
            except MPI.Exception as err:
                raise self._named(err, inbox, mb) from None
            if self.checking:
                self._check_count(inbox, mb)
        if self.timeline.active:
            self.timeline.record(mb, WAIT_PHASE, -1, start, time.perf_counter())
        rows = self._rows[mb]
        array = self.staging.incoming(buffer if rows == buffer.shape[0] else buffer[:rows])
        inbox.free.append((request, buffer))
        if inbox.next < len(inbox.queue):
            self._post(inbox)
        return array

    def close(self) -> None:
        """Frees the persistent receives (all inactive between passes): the engine has stopped."""
        for inbox in filter(None, self._inboxes):
            for request, _ in inbox.free:
                request.Free()
            inbox.free.clear()

    def abandon(self) -> None:
        """After a failure mid-pass: cancels and frees the posted receives, frees the others, and lets go of
        the pending sends, kept with their buffers until MPI completes them (their peers may never take them; the
        engine's communicator is not used again)."""
        for inbox in filter(None, self._inboxes):
            for _, request, buffer in inbox.posted:
                request.Cancel()
                request.Wait()
                inbox.free.append((request, buffer))
            inbox.posted.clear()
        self.close()
        pending_sends.keep(self._send_requests, self._send_buffers)  # MPI may still read them: never freed early
        self._send_requests, self._send_buffers, self._send_bytes = [], [], 0

    def complete_sends(self) -> None:
        for request in self._send_requests:
            self.poller.wait(request, lambda: "its own sends to complete")
        for buffer in self._send_buffers:
            self.staging.sent(buffer)
        self._send_requests, self._send_buffers, self._send_bytes, self._reap_at = [], [], 0, FIRST_REAP

    def _release_completed_sends(self) -> None:
        """Hands back the buffers of every completed send, not only the oldest ones (a send to a rank
        that reads late must not hold back the others); amortised O(1) per send."""
        done = set(MPI.Request.Testsome(self._send_requests) or ())
        for i in done:
            self._send_bytes -= self._send_buffers[i].nbytes
            self.staging.sent(self._send_buffers[i])
        self._send_requests = [r for i, r in enumerate(self._send_requests) if i not in done]
        self._send_buffers = [b for i, b in enumerate(self._send_buffers) if i not in done]
        self._reap_at = max(FIRST_REAP, 2 * len(self._send_requests))

    def describe(self, inbox: _Inbox, mb: int) -> str:
        return (f"{inbox.channel.name} (microbatch {mb}, iteration {self.timeline.iteration}, "
                f"from rank {inbox.channel.source})")

    def _head(self, inbox: _Inbox, mb: int) -> tuple:
        """The oldest posted receive of `inbox`, which must be microbatch mb's."""
        if not inbox.posted or inbox.posted[0][0] != mb:
            raise RuntimeError(f"rank {self.comm.rank} needs {self.describe(inbox, mb)} out of its channel's order")
        return inbox.posted[0]

    def _post(self, inbox: _Inbox) -> None:
        mb = inbox.queue[inbox.next]
        inbox.next += 1
        request, buffer = inbox.free.popleft()
        request.Start()
        inbox.posted.append((mb, request, buffer))

    def _check_count(self, inbox: _Inbox, mb: int) -> None:
        """Raises ShapeError unless the message just completed (its status at hand) has exactly microbatch
        mb's elements: a shorter message would otherwise go unnoticed."""
        count = self._status.Get_count(self._datatype)
        if count != self._expected_size(inbox, mb):
            raise self._shape_error(inbox, mb, f"{count} elements")

    def _named(self, err, inbox: _Inbox, mb: int) -> Exception:
        """MPI's truncation error (a message longer than its buffer) as a ShapeError naming the message, and
        a process failure as a LostRank."""
        if err.Get_error_class() != MPI.ERR_TRUNCATE:
            return lost_rank_error(self.comm, err, self.poller.hosts, self.describe(inbox, mb))
        return self._shape_error(inbox, mb, "more elements")

    def _expected_size(self, inbox: _Inbox, mb: int) -> int:
        return self._rows[mb] * math.prod(inbox.channel.shape)

    def _shape_error(self, inbox: _Inbox, mb: int, received: str) -> ShapeError:
        shape = (self._rows[mb], *inbox.channel.shape)
        return ShapeError(f"rank {self.comm.rank} received {received} as {self.describe(inbox, mb)}, "
                          f"expected shape {shape} ({self._expected_size(inbox, mb)} elements)")


class MpiEngine:
    """Rank 0 calls `gradient`, `evaluate`, `gather` and `stop`; every other rank calls `serve`."""

    name = "mpi"

    def __init__(self, comm, wiring: Wiring, schedule: Schedule, sampling: Sampling, backend: Backend,
                 comm_timeout: float | None = None, fault: Fault | None = None, timeline_every: int = 1,
                 cuda_aware: bool = False, recover: bool = False):
        if comm.size != len(wiring.stages):
            raise ValueError(f"{comm.size} MPI ranks for {len(wiring.stages)} stages")
        comm = self.comm = comm.Dup()  # this engine's own: a failed pass's leftovers never reach another solve
        comm.Set_errhandler(MPI.ERRORS_RETURN)  # MPI errors as exceptions: a lost rank is named, not fatal
        self.recover = recover
        self.timeline = Timeline(comm.rank, timeline_every, detailed=comm.rank in sampled_ranks(comm.size))
        self.timeline.origin = _rank0_origin_on_local_clock(comm)
        links = channels(wiring)
        self.poller = Poller(comm, comm_timeout, recover, links)
        self.staging = backend.staging(cuda_aware)
        self.transport = MpiTransport(comm, links, sampling, self.staging, self.timeline, self.poller)
        self.runner = StageRunner(wiring, schedule, comm.rank, sampling, backend, self.transport, self.timeline, fault)
        self._command_buffer = np.zeros(2, dtype=np.int64)

    def gradient(self, x, t: int):
        self._command(GRADIENT, t)
        return self.runner.run(t, x)

    def evaluate(self, y, t: int) -> float:
        self._command(EVALUATE, t)
        return self.runner.run(t, y, evaluation=True)

    def gather(self) -> tuple[np.ndarray, list[dict]]:
        """The sampled ranks' timeline records since the last gather, and every rank's summary and memory
        figures (off the hot path). Point to point rather than a collective, so that rank 0 notices a rank
        that failed meanwhile; taken in the order they arrive, not rank after rank."""
        self._command(GATHER, 0)
        gathered = {0: self._report()}
        for _ in range(1, self.comm.size):
            rank, report = self.poller.receive(MPI.ANY_SOURCE, GATHER_TAG, lambda: self._missing(gathered),
                                               COMMAND_SLACK_SECONDS)
            gathered[rank] = report
        reports = [gathered[rank] for rank in range(self.comm.size)]
        return np.concatenate([records for records, _ in reports]), [figures for _, figures in reports]

    def _missing(self, gathered: dict) -> str:
        missing = [rank for rank in range(self.comm.size) if rank not in gathered]
        return f"the timeline of rank(s) {', '.join(map(str, missing[:10]))}" + (" ..." if len(missing) > 10 else "")

    def stop(self) -> None:
        self._command(STOP, 0)
        self._close()

    def _close(self) -> None:
        self.transport.close()
        self.comm.Free()

    def settle_failure(self, text: str, remote: bool, prefix: str = "") -> str:
        """Recover mode, after an exception on this rank: agrees with every rank on one error line and
        leaves the engine; returns that line, for every rank to raise. `remote`: the exception was another
        rank's failure (on rank 0 a notice, elsewhere rank 0's verdict), whose line is `text`.

        Rank 0 sends the line to every other rank (waiting for the sends at most the grace period: a rank
        that takes nothing is stuck elsewhere). Another rank that failed itself sends its line to rank 0
        and waits for the verdict, which names the first failure rank 0 took; if none comes within the
        grace period, rank 0 is stuck and the job is aborted as from the command line."""
        comm = self.comm
        if comm.rank == 0:
            requests = [comm.isend(text, dest=rank, tag=FAILURE_TAG) for rank in range(1, comm.size)]
            deadline = time.monotonic() + FAILURE_GRACE_SECONDS
            while not MPI.Request.Testall(requests) and time.monotonic() < deadline:
                time.sleep(1e-3)
            pending_sends.keep(requests)  # a rank stuck elsewhere may take its line later, or never
        elif not remote:
            notice = comm.isend(text, dest=0, tag=FAILURE_TAG)  # kept (with its buffer) until rank 0 answers
            deadline = time.monotonic() + FAILURE_GRACE_SECONDS
            while not comm.Iprobe(source=0, tag=FAILURE_TAG):
                if time.monotonic() > deadline:
                    report_failure_and_abort(comm, text, prefix, notified=True)
                time.sleep(1e-3)
            text = comm.recv(source=0, tag=FAILURE_TAG)
            pending_sends.keep([notice])  # rank 0 may have failed itself and never take it
        self.transport.abandon()
        return text

    def serve(self) -> None:
        """The loop of a rank other than 0: execute rank 0's commands until it says stop."""
        while True:
            command, t = self._command()
            if command == STOP:
                self._close()
                return
            if command == GATHER:
                request = self.comm.isend((self.comm.rank, self._report()), dest=0, tag=GATHER_TAG)
                self.poller.wait(request, lambda: "rank 0 to take this rank's timeline", slack=COMMAND_SLACK_SECONDS)
            else:
                self.runner.run(t, evaluation=command == EVALUATE)

    def _report(self) -> tuple[np.ndarray, dict]:
        """This rank's records (none unless sampled), its summary and memory figures."""
        figures = (self.runner.peak_stash, self.staging.allocated_bytes, self.transport.peak_send_bytes)
        records, summary = self.timeline.take()
        return records, {**dict(zip(MEMORY_KEYS, figures)), **summary}

    def _command(self, command: int | None = None, t: int = 0) -> tuple[int, int]:
        if self.comm.rank == 0:
            self._command_buffer[:] = (command, t)
        request = self.comm.Ibcast(self._command_buffer, root=0)
        # Between passes rank 0 may legitimately be busy for a while (a checkpoint waiting for a reader
        # to release the trace), hence the slack; a rank 0 stuck beyond it still ends the job.
        self.poller.wait(request, lambda: "the next command from rank 0", slack=COMMAND_SLACK_SECONDS)
        return int(self._command_buffer[0]), int(self._command_buffer[1])


def _rank0_origin_on_local_clock(comm, exchanges: int = 8) -> float:
    """Rank 0's time origin expressed on this rank's clock, so that all timelines share one time axis.

    Each rank estimates its clock's offset to rank 0 by Cristian's method (rank 0 replies with its
    clock; the exchange with the shortest round trip is kept), which also holds across nodes whose
    monotonic clocks differ.
    """
    origin = comm.bcast(time.perf_counter() if comm.rank == 0 else None, root=0)
    offset = 0.0  # rank 0's clock minus this rank's
    if comm.rank == 0:  # answers whichever rank asks, so that the ranks' exchanges overlap
        status = MPI.Status()
        for _ in range(exchanges * (comm.size - 1)):
            comm.recv(source=MPI.ANY_SOURCE, tag=CLOCK_TAG, status=status)
            comm.send(time.perf_counter(), dest=status.Get_source(), tag=CLOCK_TAG)
        return origin
    best = float("inf")
    for _ in range(exchanges):
        sent = time.perf_counter()
        comm.send(None, dest=0, tag=CLOCK_TAG)
        theirs = comm.recv(source=0, tag=CLOCK_TAG)
        received = time.perf_counter()
        if received - sent < best:
            best, offset = received - sent, theirs - (sent + received) / 2
    return origin - offset


def report_failure_and_abort(comm, text: str, prefix: str = "", exit_code: int = 1, notified: bool = False) -> None:
    """Ends the whole job because of an error on this rank, reporting `prefix + text` once.

    Rank 0 prints and aborts at once. Another rank hands `text` to rank 0, which prints it, marks its
    trace and aborts the job. If rank 0 does not within the grace period, rank 0 is stuck and is the
    one to blame: this rank reports that, after a further STAGGER_SECONDS per rank below it, so that
    of several failing ranks (all waiting on rank 0) the lowest reports and its abort ends the rest.
    A stuck rank 0 on this host is sent SIGTERM first, so that it can still mark its trace failed.
    `notified`: rank 0 has been sent `text` and given the grace period already.
    """
    if comm.rank != 0 and comm.size > 1:
        if not notified:
            request = comm.isend(text, dest=0, tag=FAILURE_TAG)
            time.sleep(FAILURE_GRACE_SECONDS)
            request.Test()
        time.sleep(STAGGER_SECONDS * min(comm.rank - 1, MAX_STAGGERED_RANKS))
        text = (f"rank 0 did not end the job within {FAILURE_GRACE_SECONDS:g} s of this report (is it hung?); "
                f"the report: {text}")
        print(prefix + text, file=sys.stderr, flush=True)
        _wake_rank0()
    else:
        print(prefix + text, file=sys.stderr, flush=True)
    time.sleep(ABORT_FLUSH_SECONDS)  # mpirun forwards the line before its abort banner, not inside it
    comm.Abort(exit_code)


def _wake_rank0() -> None:
    """SIGTERM to a stuck rank 0 on this host, which then marks its trace failed and aborts the job
    (see Poller._sigterm); returns after WAKE_SECONDS if that did not end this process."""
    host, pid = _rank0_process or ("", 0)
    if host != socket.gethostname():
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    time.sleep(WAKE_SECONDS)
