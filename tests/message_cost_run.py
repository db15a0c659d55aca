"""Run under mpirun by tests/test_setup_failures.py: a `--microbatch-size measured` solve (argv[2:]) in which the
rank named by argv[1] fails as the ranks time their messages. The deadline of a wait is set beyond the test's
timeout: every rank must learn of the failure from its neighbours."""

import sys

from mpi4py import MPI

from pprs_mpi import message_cost
from pprs_mpi.solve import main


def broken(*args):
    raise RuntimeError("its network card caught fire")


message_cost.DEADLINE_S = 600.0
if MPI.COMM_WORLD.rank == int(sys.argv[1]):
    message_cost._time_neighbours = broken
sys.exit(main(sys.argv[2:]))
