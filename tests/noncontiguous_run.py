"""Run under mpirun -n 2 by tests/test_engines.py: the MPI engine on the chain a -> b -> c placed as
stages [("a", "c"), ("b",)], not contiguous in topological order. Rank 0 prints one JSON line: the
gradient and the values of one pass and f at one point, as hex floats (bitwise comparable)."""

import json

from mpi4py import MPI

from noncontiguous import STAGES, chain, point, sampling
from pprs_mpi.api import engine_for

comm = MPI.COMM_WORLD
engine = engine_for(chain(), STAGES, sampling(), schedule="1f1b", comm=comm)
if comm.rank != 0:
    engine.serve()
else:
    grad, values = engine.gradient(point(), 2)
    f = engine.evaluate(point(), 2)
    engine.stop()
    print(json.dumps({"grad": [float(g).hex() for g in grad], "values": [float(v).hex() for v in values],
                      "f": float(f).hex()}))
