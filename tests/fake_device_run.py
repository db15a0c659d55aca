"""Run under mpirun by tests/test_backend.py: the MPI engine on fake-device ranks, over the staged and
the direct path, against the serial CPU engine. Rank 0 prints one JSON line per path, with every
rank's pinned allocations and message-buffer bytes."""

import json

import numpy as np
from mpi4py import MPI

from fake_device import FakeDevice
from pprs_mpi.api import engine_for
from pprs_mpi.backend import select
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.problems import build

comm = MPI.COMM_WORLD
graph = build("branch", depth=4, dim=5, rows=6, radius=1.0, problem_seed=0).graph
stages = graph.stages(comm.size)
sampling = Sampling(K=9, gamma=0.3, seed=2, microbatch_size=2, noise_on_device=False)
x, iterations = np.linspace(-1.0, 1.0, 5), 3
for cuda_aware in (False, True):
    device = FakeDevice()
    engine = engine_for(graph, stages, sampling, device, "1f1b", comm=comm, cuda_aware=cuda_aware)
    if comm.rank != 0:
        engine.serve()  # the passes and gathers rank 0 commands, then its stop
        comm.gather(device.pinned, root=0)
        continue
    gradients = [engine.gradient(x, 0)[0]]
    after_one = [rank["buffer_bytes"] for rank in engine.gather()[1]]
    gradients += [engine.gradient(x, t)[0] for t in range(1, iterations)]
    after_all = [rank["buffer_bytes"] for rank in engine.gather()[1]]
    engine.stop()
    serial = engine_for(graph, stages, sampling, select("cpu"), "1f1b")
    expected = [serial.gradient(x, t)[0] for t in range(iterations)]
    print(json.dumps({"path": engine.staging.path, "pinned": comm.gather(device.pinned, root=0),
                      "buffer_bytes_after_one_pass": after_one, "buffer_bytes": after_all,
                      "equal": all(np.array_equal(a, b) for a, b in zip(gradients, expected))}), flush=True)
