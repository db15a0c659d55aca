"""pprs_mpi against torch.distributed.pipelining's ScheduleGPipe, a hand-written numpy + mpi4py GPipe and
an MPI ping-pong, on one reference pipeline, in one job and interleaved rounds.

The pipeline: 2 ranks, each a stage of 4 × (Linear(width) + ReLU), K microbatches of one row, loss
Σ|out|, float32, run by pprs_mpi twice (its own Affine/ReLU/L1Norm ops, and the torch modules as TorchOp
nodes through `from_torch`), γ = 0, the gradient taken with respect to the input θ (what PPRS needs; the weights
are constants, frozen in torch, so that the three systems do the same arithmetic). Cases: width 512
with K = 16, and width 1024 with K = 64. All three gradients are checked to agree before timing.
pprs_mpi runs through `pprs_mpi.minimize`, as a user runs it (its time: the trace's per-iteration
wall time, gradient and update); the others are timed around their own loops.

    python benchmarks/vs_torch_pipelining.py               # launches itself under mpirun -n 2
    python benchmarks/vs_torch_pipelining.py --rounds 6

torch is a benchmark-only dependency: without it the torch column is skipped with a message. The
table and the ratios go to benchmarks/results/vs_torch_pipelining.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per rank

import numpy as np

import pprs_mpi
from pprs_mpi.graph import Graph
from pprs_mpi.ops import Affine, L1Norm, ReLU
from pprs_mpi.problems import Problem
from pprs_mpi.trace import load
from pipeline_efficiency import ping_pong  # the same directory

RESULTS = Path(__file__).resolve().parent / "results" / "vs_torch_pipelining.json"
CASES = ((512, 16), (1024, 64))
LAYERS_PER_STAGE, RANKS = 4, 2


def layers(width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
             (0.1 * rng.standard_normal(width)).astype(np.float32)) for _ in range(RANKS * LAYERS_PER_STAGE)]


# -- the three systems: each gives its ms per iteration and its gradient at θ = 1 (on rank 0) ---------

def reference_graph(width: int) -> Graph:
    """The pipeline as a user builds it: Affine and ReLU nodes, an L1Norm leaf (placed 4 + 4 layers)."""
    ops, names = [], []
    for i, (W, b) in enumerate(layers(width)):
        ops += [Affine(W, b), ReLU()]
        names += [f"linear{i}", f"relu{i}"]
    return Graph.chain(width, [*ops, L1Norm()], names=[*names, "loss"])


class Pprs:
    """pprs_mpi through its public API, `pprs_mpi.minimize`, as a user runs it (γ = 0, GPipe, float32);
    the time per iteration is the median of the trace's per-iteration wall times."""

    name = "pprs_mpi"

    def __init__(self, comm, width: int, K: int):
        self.comm, self.K, self.runs = comm, K, 0
        self.problem = Problem("reference", reference_graph(width), x0=np.ones(width))
        self.folder = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0)

    def timed(self, iterations: int) -> float | None:
        result = self._minimize(iterations + 1, lr=1e-30)  # a step too small to move θ: the same work each time
        if result is None:
            return None
        wall = load(result.trace).columns["wall_time"]
        return float(np.median(np.diff(wall)[1:])) * 1e3  # the first iteration warms up

    def gradient(self):
        result = self._minimize(1, lr=1.0)  # x_1 = x_0 − G_0
        return None if result is None else (self.problem.x0 - result.x).astype(np.float32)

    def _minimize(self, iterations: int, lr: float):
        self.runs += 1
        return pprs_mpi.minimize(self.problem, comm=self.comm, K=self.K, gamma=0.0, lr=lr, mu=0.0, iters=iterations,
                                 schedule="gpipe", dtype="float32", eval_every=0, quiet=True,
                                 out=f"{self.folder}/run{self.runs}.h5")


class PprsTorch(Pprs):
    """pprs_mpi running the same pipeline as PyTorch modules, one TorchOp node per Linear and ReLU
    (`pprs_mpi.from_torch`), with the loss Σ|out| as a torch function too."""

    name = "pprs_mpi TorchOp"

    def __init__(self, comm, width: int, K: int):
        super().__init__(comm, width, K)
        self.problem = pprs_mpi.from_torch(torch_layers(width), lambda out: out.abs().sum(), input_shape=(width,),
                                           x0=np.ones(width))


class Timed:
    """A system timed by its own loop: one warm-up pass, then `iterations` passes between barriers."""

    def timed(self, iterations: int) -> float | None:
        self.one_pass()
        self.comm.Barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            self.one_pass()
        elapsed = (time.perf_counter() - start) / iterations * 1e3
        return elapsed if self.comm.rank == 0 else None

    def gradient(self):
        return self.one_pass()


class NumpyGPipe(Timed):
    """The same pipeline by hand: numpy layers, mpi4py messages, GPipe (all forwards, then all backwards)."""

    name = "numpy+mpi4py"

    def __init__(self, comm, width: int, K: int):
        self.comm, self.K, self.width = comm, K, width
        stage = comm.rank * LAYERS_PER_STAGE
        self.mine = layers(width)[stage:stage + LAYERS_PER_STAGE]
        self.theta = np.ones(width, dtype=np.float32)
        self.buffers = [np.empty((1, width), dtype=np.float32) for _ in range(K)]

    def one_pass(self):
        comm, K, first = self.comm, self.K, self.comm.rank == 0
        stash, sends = [], []
        for mb in range(K):  # forwards
            if first:
                h = self.theta[None].copy()
            else:
                comm.Recv(self.buffers[mb], source=0, tag=mb)
                h = self.buffers[mb]
            outputs = []
            for W, b in self.mine:
                h = np.maximum(h @ W.T + b, 0)
                outputs.append(h)
            stash.append(outputs)
            if first:
                sends.append(comm.Isend(h, dest=1, tag=mb))
        gradient = np.zeros(self.width, dtype=np.float32)
        for mb in range(K):  # backwards
            outputs = stash[mb]
            if first:
                g = self.buffers[mb]
                comm.Recv(g, source=1, tag=K + mb)
            else:
                g = np.sign(outputs[-1])
            for (W, _), out in zip(reversed(self.mine), reversed(outputs)):
                g = (g * (out > 0)) @ W
            if first:
                gradient += g[0]
            else:
                sends.append(comm.Isend(g, dest=0, tag=K + mb))
        for request in sends:
            request.Wait()
        return gradient / K if first else None


def torch_layers(width: int):
    """The pipeline's layers as torch modules (Linear + ReLU, weights frozen), as every torch system uses them."""
    import torch
    modules = []
    for W, b in layers(width):
        linear = torch.nn.Linear(width, width)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
        modules += [linear.requires_grad_(False), torch.nn.ReLU()]
    return torch.nn.Sequential(*modules)


class TorchGPipe(Timed):
    """torch.distributed.pipelining's ScheduleGPipe over gloo, θ a parameter added to zero inputs."""

    name = "torch ScheduleGPipe"

    def __init__(self, comm, width: int, K: int):
        import torch
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
        self.comm, self.K = comm, K
        modules = []
        if comm.rank == 0:
            self.theta = torch.nn.Parameter(torch.ones(1, width))
            modules.append(_add_theta(self.theta))
        stage = 2 * comm.rank * LAYERS_PER_STAGE
        modules += list(torch_layers(width))[stage:stage + 2 * LAYERS_PER_STAGE]
        stage_module = PipelineStage(torch.nn.Sequential(*modules), comm.rank, RANKS, torch.device("cpu"))
        self.schedule = ScheduleGPipe(stage_module, n_microbatches=K, loss_fn=lambda out, target: out.abs().sum(),
                                      scale_grads=True)  # the mean over microbatches, as PPRS's G_t
        self.inputs = torch.zeros(K, width)

    def one_pass(self):
        if self.comm.rank != 0:
            self.schedule.step(target=self.inputs)
            return None
        self.theta.grad = None
        self.schedule.step(self.inputs)
        return self.theta.grad[0].numpy().copy()


def _add_theta(theta):
    """A torch module x -> x + θ (θ the only parameter that takes a gradient)."""
    import torch

    class AddTheta(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = theta

        def forward(self, x):
            return x + self.theta

    return AddTheta()


def torch_available(comm) -> str:
    """'' when torch can run here (and its process group is up), else why not."""
    try:
        import torch
        import torch.distributed as dist
        from torch.distributed.pipelining import ScheduleGPipe  # noqa: F401
    except ImportError as err:
        return f"torch is not importable ({err}): pip install torch to add its column"
    torch.set_num_threads(1)
    port = comm.bcast(_free_port() if comm.rank == 0 else None, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=comm.rank, world_size=comm.size)
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> None:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    why_no_torch = torch_available(comm)
    systems = [Pprs, NumpyGPipe] + ([PprsTorch, TorchGPipe] if not why_no_torch else [])
    table = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
             "mpi": MPI.Get_library_version().split("\x00")[0].splitlines()[0].strip(),
             "torch": why_no_torch or __import__("torch").__version__, "rounds": args.rounds, "cases": []}
    if comm.rank == 0 and why_no_torch:
        print(f"skipping torch: {why_no_torch}", flush=True)
    for width, K in CASES:
        iterations = max(5, int(args.seconds / (0.5e-3 * K * (width / 512) ** 2)))  # ~0.5 ms per microbatch at 512
        built = {system: system(comm, width, K) for system in systems}
        gradients = {system.name: built[system].gradient() for system in systems}
        times = {system.name: [] for system in systems}
        latency = []
        for _ in range(args.rounds):  # interleaved: every system once per round
            latency.append(ping_pong(comm, np.zeros(width, dtype=np.float32), repeats=500))
            for system in systems:
                times[system.name].append(built[system].timed(iterations))
                comm.Barrier()
        if comm.rank == 0:
            reference = gradients[Pprs.name]
            agree = {name: bool(np.allclose(g, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max()))
                     for name, g in gradients.items()}
            median = {name: float(np.median(t)) for name, t in times.items()}
            case = {"width": width, "K": K, "iterations_per_round": iterations, "ms_per_iteration": times,
                    "median_ms": median, "gradients_agree": agree, "ping_pong_us": float(np.median(latency) * 1e6),
                    "pprs_vs_numpy": median[NumpyGPipe.name] / median[Pprs.name]}
            if TorchGPipe.name in median:
                case["pprs_vs_torch"] = median[TorchGPipe.name] / median[Pprs.name]
                case["torchop_vs_torch"] = median[TorchGPipe.name] / median[PprsTorch.name]
                case["torchop_vs_pprs"] = median[Pprs.name] / median[PprsTorch.name]
            table["cases"].append(case)
    if comm.rank == 0:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(table, indent=2))
        print_table(table)
        print(f"saved {RESULTS}")


def print_table(table: dict) -> None:
    print(f"machine: {table['machine']}; {table['mpi']}; torch {table['torch']}; {table['rounds']} interleaved rounds")
    for case in table["cases"]:
        print(f"\nwidth {case['width']}, K = {case['K']} (ms per iteration, median of rounds; "
              f"ping-pong of one activation {case['ping_pong_us']:.1f} us)")
        for name, ms in case["median_ms"].items():
            rounds = ", ".join(f"{t:.2f}" for t in case["ms_per_iteration"][name])
            agree = "" if case["gradients_agree"][name] else "  GRADIENT DIFFERS"
            print(f"  {name:<20} {ms:8.2f}   ({rounds}){agree}")
        ratios = f"pprs_mpi is {case['pprs_vs_numpy']:.2f}x the hand-written loop's speed"
        if "pprs_vs_torch" in case:
            ratios += f", {case['pprs_vs_torch']:.2f}x torch's"
        print("  " + ratios)
        if "torchop_vs_torch" in case:
            print(f"  pprs_mpi with TorchOp nodes is {case['torchop_vs_torch']:.2f}x torch's speed and "
                  f"{case['torchop_vs_pprs']:.2f}x pprs_mpi's own ops'")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    p.add_argument("--seconds", type=float, default=0.5, help="rough time per system and round")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}
    command = ["mpirun", "-n", str(RANKS), sys.executable, __file__, "--worker", "--rounds", str(args.rounds),
               "--seconds", str(args.seconds)]
    sys.exit(subprocess.run(command, env=env, timeout=1800).returncode)


if __name__ == "__main__":
    main()
