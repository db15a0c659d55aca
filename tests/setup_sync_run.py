"""Run under mpirun by tests/test_setup_failures.py: setup rounds whose messages are far above MPI's eager
limit (rendezvous: MPI reads a send's buffer only once the receiver has matched it), so that a send whose
buffer is released early delivers garbage. Each rank prints 'ok <rank>' once every round checked out.
With the argument `garbled`, rank 1 sends bytes that are no message at all instead."""

import sys
import time

import numpy as np
from mpi4py import MPI

from pprs_mpi import pending_sends
from pprs_mpi.setup_sync import SetupSync

SIZE = 200_000  # bytes per rank's value, about 50 times the shared-memory eager limit


def value(rank: int, round_: int) -> bytes:
    return np.random.default_rng([rank, round_]).bytes(SIZE)


comm = MPI.COMM_WORLD
sync = SetupSync(comm, prefix="setup_sync_run: ", timeout=60)
if sys.argv[1:] == ["garbled"]:  # rank 1's message of the round is not a pickle at all
    if comm.rank == 1:
        sync.comm.Send(b"\x00 not a pickle", dest=0, tag=1)
        time.sleep(30)  # ended by rank 0's abort
    sync.gather(comm.rank)
for round_ in range(3):
    gathered = sync.gather(value(comm.rank, round_))
    if comm.rank == 0:
        assert gathered == [value(rank, round_) for rank in range(comm.size)], "rank 0 gathered other values"
    else:  # only rank 0 gets everyone's values: the others' answers stay short, O(P) bytes in all
        assert gathered is None, "a rank other than 0 was sent everyone's values"
    assert sync.bcast(value(0, round_) if comm.rank == 0 else None) == value(0, round_), "a garbled broadcast"
    assert sync.agree(value(comm.rank, round_), lambda values: sum(map(len, values))) == comm.size * SIZE
sync.close()
assert pending_sends.count() == 0, "a setup send left uncompleted"
print(f"ok {comm.rank}", flush=True)
sys.exit(0)
