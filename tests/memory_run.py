"""Run under mpirun -n 3 by tests/test_mpi.py: message memory of the MPI engine for K = 16 and 64 on a
DAG whose root feeds a node on another rank, with messages large enough for MPI's rendezvous
protocol (sends complete only once the receiver has posted). Rank 0 prints one JSON line."""

import json

import numpy as np
from mpi4py import MPI

from pprs_mpi.api import engine_for
from pprs_mpi.backend import select
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.problems import build

DIM = 1000  # one sample's message: 8 kB
comm = MPI.COMM_WORLD
graph = build("branch", depth=4, dim=DIM, rows=DIM, radius=1.0, problem_seed=0).graph
stages = [("left0",), ("right0", "left1", "linf"), ("l1", "total")]  # root -> right0 crosses ranks
memory = {}
for K in (16, 64):
    sampling = Sampling(K=K, gamma=0.3, seed=2, microbatch_size=2)
    engine = engine_for(graph, stages, sampling, select("cpu"), "1f1b", comm=comm)
    if comm.rank != 0:
        engine.serve()
        continue
    for t in range(3):
        engine.gradient(np.linspace(-1.0, 1.0, DIM), t)
    memory[K] = engine.gather()[1]
    engine.stop()
if comm.rank == 0:
    print(json.dumps({"message_bytes": 2 * DIM * 8, "memory": memory}))
