"""Run under `mpirun -n 4` by tests/test_mpi.py: the engine's table of host names (engines.mpi.host_table)
for four stages in a ring of links 0 -> 1 -> 2 -> 3 -> 0. Each rank prints 'RANK: the ranks it can name'."""

import socket

from mpi4py import MPI

from pprs_mpi.engines.mpi import host_table
from pprs_mpi.engines.plan import Channel

comm = MPI.COMM_WORLD
links = [Channel(stage, stage, (stage + 1) % comm.size, (1,), f"link {stage}") for stage in range(comm.size)]
table = host_table(comm, links)
assert set(table.values()) == {socket.gethostname()}, table
print(f"{comm.rank}: {' '.join(map(str, sorted(table)))}", flush=True)
