"""Run under mpirun -n 2 by tests/test_message_checks.py: ranks that disagree on a node's width, so that
a message reaches rank 1 with more or fewer elements than its graph says (PPRS_RANK0_WIDTH: 5 or 3,
rank 1 expects 4). The receiver's check must name the edge; the job ends as the solver ends it."""

import os

import numpy as np
from mpi4py import MPI

from pprs_mpi.api import engine_for
from pprs_mpi.backend import select
from pprs_mpi.engines.mpi import RemoteFailure, report_failure_and_abort
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.graph import Graph
from pprs_mpi.ops import Abs, L1Norm, Op, Scale

DIM = 4


class Spread(Op):
    """y_j = Σ_i x_i for j < width: a node whose width the two ranks may see differently."""

    def __init__(self, width: int):
        self.width = width

    def output_shape(self, shape):
        return (self.width,)

    def forward(self, xp, x):
        return xp.ones((x.shape[0], self.width)) * x.sum(axis=1, keepdims=True)

    def vjp(self, xp, inputs, output, cotangent):
        return (xp.ones_like(inputs[0]) * cotangent.sum(axis=1, keepdims=True),)


comm = MPI.COMM_WORLD
width = int(os.environ["PPRS_RANK0_WIDTH"]) if comm.rank == 0 else DIM
graph = Graph.chain(DIM, [Scale(2.0), Spread(width), Abs(), L1Norm()], names=["scale", "spread", "abs", "l1"])
stages = [("scale", "spread"), ("abs", "l1")]
sampling = Sampling(K=4, gamma=0.1, seed=0, microbatch_size=1)
engine = engine_for(graph, stages, sampling, select("cpu"), comm=comm, comm_timeout=20.0)
try:
    if comm.rank == 0:
        engine.gradient(np.ones(DIM), 0)
        engine.stop()
    else:
        engine.serve()
except Exception as err:  # noqa: BLE001 — as the solver does: one report, every rank ended
    text = str(err) if isinstance(err, RemoteFailure) else f"error on rank {comm.rank}: {type(err).__name__}: {err}"
    report_failure_and_abort(engine.comm, text)  # the engine's communicator, where rank 0 takes failure notices
