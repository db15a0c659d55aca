"""pprs_mpi as its users run it, against the loop they would write instead: Algorithm 1 in one process.

What. The hand loop is Algorithm 1 written directly from the problem: per iteration, the K noisy copies
θ = x_t + γX_k (pprs_mpi's own noise, `pprs_mpi.noise.perturbations(seed, t, range(K), d)`) stacked as
one batch, one forward and one backward, the mean G_t, and Algorithm 1's step y_{t+1} = x_t − ηG_t,
x_{t+1} = (1 + μ)y_{t+1} − μy_t. It comes three ways: torch autograd at 1 and at 2 threads
(`torch.set_num_threads`), and a JAX `jit(vmap(value_and_grad))` step (XLA's own CPU threads). The
objective is written from the problem's data, not from pprs_mpi's engine: for `lad` and the MLPs, the
chain's matrices, ReLUs and the L1 norm; for the attack, the pretrained CNN (`Network.to_torch()`, and
`jax.lax` convolutions on the same weights) and eq. (17). pprs_mpi runs as a user runs it:
`python -m pprs_mpi.solve ...` with the default layout, serially and under `mpirun -n 2`, and, as a
reference, with `--microbatch-size K` (one microbatch of all K copies).

Cases: `lad` (the README job: depth 8, d = 16, K = 8, γ = 0.01, η = 0.01, μ = 0), `adversarial` (the
built-in attack with its defaults: K = 8, γ = 0.01, η = 0.01, λ = 300), and a deep MLP
(benchmarks/deep_mlp.py: 8 Affine layers of width 64 or 512 with ReLUs and an L1 loss, θ = its input)
at K = 16 and 64, and the same width-512 network as torch modules through `from_torch` (`torch_mlp`: one
TorchOp node per layer, which the engine runs as one call per stage) against the same hand loops.

How. Every variant runs as its own process, in interleaved rounds (A B C ... A B C ...), so that load
from elsewhere hits all alike. Per iteration = the gradient and the step (noise, copies, forward,
backward, mean, update): for pprs_mpi the trace's wall_time column, which counts exactly that; no
evaluation of f(y) in either (pprs_mpi runs with --eval-every 0, so it evaluates f(y_T) once, at the
end: part of its end-to-end time only). The figure is the median over the iterations after the first
SKIP (warm-up, JIT compiles), then the median over rounds. End-to-end is the command's wall time;
start-up is what is left of it besides T steady iterations (imports, MPI, building the problem, the
trace, and the first iterations' excess over the median: JAX's compile). To a target f: the target is
half the decrease of f (the mean of the K sample values at x_t, which both compute) that the first
torch run reaches, and the time is start-up plus the iteration where each run's own f first reaches it
times its per-iteration time; none when f does not decrease (the attack's defaults oscillate).
Asserted before any figure is kept: every run's f and ‖G_t‖ over the first CHECK iterations equal a
serial pprs_mpi run's to RTOL, and each hand loop's y_CHECK − x_0 equals that run's, so the ratios
compare the same computation. Ratios are to the torch loop at 1 thread. NumPy's BLAS gets one thread
per process (per rank), as the job scripts in jobs/ set it (--blas-threads; 0 leaves the environment's
setting: OpenBLAS's default of a thread per core, two ranks on two cores, oversubscribes them).
Results to benchmarks/results/vs_hand_loop.json (machine, versions, load average, raw rounds).

On a GPU (`--device gpu`, CuPy): pprs_mpi runs with `--device gpu` and its noise drawn on the host
(`--noise-source host`, so that its iterates are checked against the CPU run's like the others), and once more
with the GPU's default, noise drawn on the device (other numbers, so not checked; its time is what a user gets);
the hand loop is torch's on CUDA (the same host noise, copied over each iteration, as pprs_mpi's host noise is),
which the ratios are to. JAX is left out there. Results to benchmarks/results/vs_hand_loop_gpu.json.

    python benchmarks/vs_hand_loop.py                  # all cases, 3 rounds: about 8 minutes on 2 cores
    python benchmarks/vs_hand_loop.py --quick          # a smoke test: tiny runs, under a minute
    python benchmarks/vs_hand_loop.py --cases lad,mlp512_K64 --rounds 5
    python benchmarks/vs_hand_loop.py --device gpu     # CuPy nodes against torch's CUDA loop
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
sys.path.insert(0, str(REPOSITORY))  # this checkout's pprs_mpi, as `python -m pprs_mpi.solve` from it runs

import numpy as np

from pprs_mpi.noise import perturbations
from pprs_mpi.ops import Affine, L1Norm, ReLU
from pprs_mpi.problems import Problem, build

RESULTS = HERE / "results" / "vs_hand_loop.json"
MLP = str(HERE / "deep_mlp.py") + ":deep_mlp"
TORCH_MLP = str(HERE / "deep_mlp.py") + ":torch_mlp"
SKIP = 3  # first iterations left out of the per-iteration median (warm-up, JAX's compile)
CHECK, RTOL = 3, 1e-10  # iterations whose f, ‖G‖ and iterate must agree with pprs_mpi's, and how closely
TIMEOUT = 300  # seconds for any one command
ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
       # as the test suite: without its fabric, Open MPI's ofi BTL sleeps 1 s in every MPI_Init (unless the user
       # chose the BTLs), which is the machine's start-up, not pprs_mpi's
       "OMPI_MCA_btl": os.environ.get("OMPI_MCA_btl", "^ofi")}
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Case:
    """A problem (a reference and its builder arguments) with Algorithm 1's parameters and run lengths."""

    problem: str
    args: dict = field(default_factory=dict)
    K: int = 8
    gamma: float = 0.01
    lr: float = 0.01
    mu: float = 0.0
    seed: int = 0
    iters: int = 100
    quick_iters: int = 10
    hand_problem: str = ""  # the problem the hand loops read their weights from, if not `problem`

    def build(self) -> Problem:
        return build(self.problem, **self.args)

    def build_for_hand(self) -> Problem:
        return build(self.hand_problem or self.problem, **self.args)

    def solve_options(self) -> list[str]:
        """`python -m pprs_mpi.solve`'s options for this problem and these parameters."""
        options = ["--problem", self.problem]
        for name, value in self.args.items():
            options += ["--problem-arg", f"{name}={value}"]
        return options + ["-K", str(self.K), "--gamma", str(self.gamma), "--lr", str(self.lr), "--mu", str(self.mu),
                          "--seed", str(self.seed)]


CASES = {
    "lad": Case("lad", {"depth": 8, "dim": 16}, iters=400, quick_iters=20),
    "adversarial": Case("adversarial", iters=100, quick_iters=8),
    "mlp64_K16": Case(MLP, {"width": 64}, K=16, iters=200, quick_iters=8),
    "mlp64_K64": Case(MLP, {"width": 64}, K=64, iters=100),
    "mlp512_K16": Case(MLP, {"width": 512}, K=16, iters=60),
    "mlp512_K64": Case(MLP, {"width": 512}, K=64, iters=30),
    # the same network as torch modules through from_torch (one TorchOp per layer), the hand loops as above
    "torch_mlp512_K64": Case(TORCH_MLP, {"width": 512}, K=64, iters=30, hand_problem=MLP),
}
QUICK_CASES = ("lad", "adversarial", "mlp64_K16")
HAND = {"torch, 1 thread": ("torch", 1), "torch, 2 threads": ("torch", 2), "jax jit(vmap(grad))": ("jax", 0)}
PPRS = {"pprs_mpi serial": (1, False), "pprs_mpi serial, b = K": (1, True),
        "pprs_mpi mpirun -n 2": (2, False), "pprs_mpi mpirun -n 2, b = K": (2, True)}
BASE = "torch, 1 thread"
# on a GPU: torch's CUDA loop; pprs_mpi with host noise (checked) and with the device's own noise (not checked)
GPU_HAND = {"torch, CUDA": ("torch", 0)}
DEVICE_NOISE = "pprs_mpi serial, device noise"
GPU_PPRS = {**PPRS, DEVICE_NOISE: (1, False)}
GPU_BASE = "torch, CUDA"


# --- the hand loops --------------------------------------------------------------------------------------

def chain_layers(problem: Problem) -> list[tuple]:
    """The problem's chain θ → Affine / ReLU → ... → L1Norm as [("affine", W, b) or ("relu",)]."""
    graph, previous = problem.graph, problem.graph.root
    for name in graph.order:
        if graph.parents(name) != (previous,):
            raise ValueError(f"{problem.name}: not a chain ({name!r} takes {', '.join(graph.parents(name))})")
        previous = name
    layers, ops = [], [graph.op(name) for name in graph.order]
    for op in ops[:-1]:
        if isinstance(op, Affine):
            layers.append(("affine", op.W, op.b))
        elif isinstance(op, ReLU):
            layers.append(("relu",))
        else:
            raise ValueError(f"{problem.name}: not a chain of Affine and ReLU layers ({type(op).__name__})")
    if not isinstance(ops[-1], L1Norm):
        raise ValueError(f"{problem.name}: the chain must end in an L1 norm, not {type(ops[-1]).__name__}")
    return layers


def attack_parts(problem: Problem):
    """Eq. (17)'s data from the attack problem: the shipped network, the clean image, the target and λ."""
    from pprs_mpi import classifier
    graph = problem.graph
    return (classifier.load_network(classifier.default_network_path()), problem.x0,
            int(graph.op("margin").targets), graph.op("linf").weight)


def torch_values(problem: Problem, device: str = "cpu"):
    """θ (K, d) -> the K values of f, in torch on `device`, as a user would write the objective."""
    import torch
    import torch.nn.functional as F
    if problem.name == "adversarial":
        net, clean, target, lam = attack_parts(problem)
        model, anchor = net.to_torch().to(device), torch.from_numpy(clean).to(device)
        others = (torch.arange(net.classes) != target).to(device)

        def values(theta):
            logits = model(theta.view(-1, *net.input_shape))
            margin = torch.relu(1 - logits[:, target:target + 1] + logits)[:, others].sum(1)
            return margin + lam * (theta - anchor).abs().max(1).values
        return values
    layers = [(kind, *(None if a is None else torch.from_numpy(a).to(device) for a in rest)) for kind, *rest in
              chain_layers(problem)]

    def values(theta):
        h = theta
        for kind, *weights in layers:
            h = F.linear(h, *weights) if kind == "affine" else torch.relu(h)
        return h.abs().sum(1)
    return values


def torch_step(problem: Problem, case: Case, threads: int, device: str = "cpu"):
    """Algorithm 1's iteration t in torch on `device` ("cpu" or "cuda"): (x_t, y_t, t) -> (x_{t+1}, y_{t+1},
    the K values, G_t), the device waited for before it returns."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    values_of, dim = torch_values(problem, device), problem.graph.dim
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(x, y, t):
        noise = torch.from_numpy(perturbations(case.seed, t, range(case.K), dim)).to(device)
        theta = (case.gamma * noise + x).requires_grad_()
        values = values_of(theta)
        values.sum().backward()
        grad = theta.grad.mean(0)
        y_next = x - case.lr * grad
        x_next = (1 + case.mu) * y_next - case.mu * y
        wait()
        return x_next, y_next, values.detach(), grad
    return step, lambda array: torch.from_numpy(array).to(device), lambda tensor: tensor.cpu().numpy()


def jax_value(problem: Problem):
    """θ (d,) -> f(θ), in JAX, as a user would write the objective (vmapped over the copies)."""
    import jax
    import jax.numpy as jnp
    if problem.name == "adversarial":
        net, clean, target, lam = attack_parts(problem)
        others = np.arange(net.classes) != target

        def value(theta):
            h = theta.reshape(1, *net.input_shape)
            for layer in net.layers:
                a, k = layer.arrays, layer.attrs
                if layer.kind == "conv2d":
                    h = jax.lax.conv_general_dilated(h, a["weight"], tuple(k["stride"]),
                                                     [(int(p), int(p)) for p in k["padding"]],
                                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
                    h = h + a["bias"][None, :, None, None]
                elif layer.kind == "maxpool2d":
                    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, *k["kernel"]), (1, 1, *k["stride"]),
                                              "VALID")
                elif layer.kind == "affine":
                    h = h @ a["weight"].T + a["bias"]
                else:
                    h = jax.nn.relu(h) if layer.kind == "relu" else h.reshape(1, -1)
            logits = h[0]
            margin = jnp.where(others, jax.nn.relu(1 - logits[target] + logits), 0.0).sum()
            return margin + lam * jnp.abs(theta - clean).max()
        return value
    layers = chain_layers(problem)

    def value(theta):
        h = theta
        for kind, *weights in layers:
            if kind == "relu":
                h = jax.nn.relu(h)
            else:
                h = weights[0] @ h if weights[1] is None else weights[0] @ h + weights[1]
        return jnp.abs(h).sum()
    return value


def jax_step(problem: Problem, case: Case):
    """Algorithm 1's iteration t as one jitted JAX function of (x_t, y_t, X), the X_k drawn on the host."""
    import jax
    jax.config.update("jax_enable_x64", True)
    copies = jax.vmap(jax.value_and_grad(jax_value(problem)))
    dim = problem.graph.dim

    @jax.jit
    def jitted(x, y, noise):
        values, grads = copies(case.gamma * noise + x)
        grad = grads.mean(0)
        y_next = x - case.lr * grad
        return (1 + case.mu) * y_next - case.mu * y, y_next, values, grad

    def step(x, y, t):
        return jax.block_until_ready(jitted(x, y, perturbations(case.seed, t, range(case.K), dim)))
    return step, jax.numpy.asarray, np.asarray


def hand_step(kind: str, problem: Problem, case: Case, threads: int = 1, device: str = "cpu"):
    """(step, to the framework's arrays, to NumPy) of the torch (on `device`: cpu or gpu) or the JAX loop."""
    if kind == "torch":
        return torch_step(problem, case, threads, "cuda" if device == "gpu" else "cpu")
    return jax_step(problem, case)


def worker(args) -> None:
    """One hand-loop run: prints its per-iteration times, f and ‖G‖ per iteration, and y after CHECK
    iterations as one JSON line."""
    case = CASES[args.case]
    problem = case.build_for_hand()
    step, asarray, to_numpy = hand_step(args.worker, problem, case, args.threads, args.device)
    x = y = asarray(problem.x0.copy())
    times, f, norms, y_check = [], [], [], None
    for t in range(args.iters):
        tick = time.perf_counter()
        x, y, values, grad = step(x, y, t)
        times.append(time.perf_counter() - tick)
        f.append(float(to_numpy(values).mean()))
        norms.append(float(np.linalg.norm(to_numpy(grad))))
        if t + 1 == CHECK:
            y_check = to_numpy(y).tolist()
    print(json.dumps({"times": times, "f": f, "grad_norm": norms, "y_check": y_check}))


# --- the runs ----------------------------------------------------------------------------------------------

def command_output(command: list[str], what: str) -> tuple[str, float]:
    """Runs `command` from the checkout (under `timeout`): its stdout and wall seconds; exits on failure."""
    start = time.perf_counter()
    done = subprocess.run(["timeout", "-k", "10", str(TIMEOUT), *command], cwd=REPOSITORY,
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=TIMEOUT + 30)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return done.stdout, wall


def run_hand(name: str, case_name: str, iters: int, device: str) -> dict:
    kind, threads = {**HAND, **GPU_HAND}[name]
    out, wall = command_output([sys.executable, __file__, "--worker", kind, "--threads", str(threads),
                                "--case", case_name, "--iters", str(iters), "--device", device],
                               f"{case_name}: {name}")
    run = json.loads(out.strip().splitlines()[-1])
    return {**run, "wall_s": wall}


def run_pprs(name: str, case_name: str, iters: int, folder: str, device: str = "cpu") -> dict:
    ranks, whole = GPU_PPRS[name]
    case = CASES[case_name]
    out = os.path.join(folder, "run.h5")  # read and removed at once
    command = [sys.executable, "-m", "pprs_mpi.solve", *case.solve_options(), "--iters", str(iters),
               "--eval-every", "0", "--quiet", "--out", out]
    command += ["--microbatch-size", str(case.K)] if whole else []
    if device == "gpu":
        command += ["--device", "gpu", "--noise-source", "device" if name == DEVICE_NOISE else "host"]
    command = ["mpirun", "-n", str(ranks), *command] if ranks > 1 else command
    _, wall = command_output(command, f"{case_name}: {name}")
    return {**read_trace(out), "wall_s": wall}


def read_trace(path: str) -> dict:
    from pprs_mpi.trace import load
    trace = load(path)
    os.unlink(path)
    wall = np.asarray(trace.columns["wall_time"])
    return {"times": np.diff(wall, prepend=0.0).tolist(), "f": trace.columns["f_smoothed"].tolist(),
            "grad_norm": trace.columns["grad_norm"].tolist(), "y": trace.result["y"],
            "layout": {key: trace.attrs.get(key) for key in ("engine", "ranks", "n_microbatches", "makespan")}}


def check(case_name: str, name: str, run: dict, reference: dict, x0: np.ndarray) -> float:
    """The largest relative difference of `run`'s first CHECK f and ‖G‖ (and, for a hand loop, y_CHECK − x_0)
    from the reference pprs_mpi run's; exits naming the run if it exceeds RTOL."""
    worst = 0.0
    for key in ("f", "grad_norm"):
        ours, theirs = np.asarray(run[key][:CHECK]), np.asarray(reference[key][:CHECK])
        worst = max(worst, float(np.max(np.abs(ours - theirs) / np.abs(theirs))))
    if run.get("y_check") is not None:
        moved = reference["y"] - x0
        worst = max(worst, float(np.linalg.norm(np.asarray(run["y_check"]) - reference["y"]) / np.linalg.norm(moved)))
    if not worst <= RTOL:
        sys.exit(f"{case_name}: {name} differs from pprs_mpi's first {CHECK} iterations by {worst:.3g} "
                 f"(relative; at most {RTOL:g} allowed): the timings would not compare the same computation")
    return worst


def target_f(f: list[float]) -> float | None:
    """Half the decrease of f that a run reaches (None if f never drops below its start)."""
    best = min(f)
    return f[0] - 0.5 * (f[0] - best) if best < f[0] - 1e-6 * abs(f[0]) else None


def summary(run: dict, iters: int, target: float | None) -> dict:
    """Per-iteration (median after SKIP), end-to-end, start-up and time-to-target seconds of one run."""
    per_iteration = float(np.median(run["times"][SKIP:]))
    startup = run["wall_s"] - float(np.sum(run["times"][SKIP:])) - SKIP * per_iteration
    reached = None if target is None else next((t + 1 for t, f in enumerate(run["f"]) if f <= target), None)
    return {"per_iteration_s": per_iteration, "end_to_end_s": run["wall_s"], "startup_s": startup,
            "iterations_to_target": reached,
            "to_target_s": None if reached is None else startup + reached * per_iteration}


def measure(case_name: str, rounds: int, iters: int, folder: str, device: str = "cpu") -> dict:
    """The interleaved rounds of every variant on one case, checked against a serial pprs_mpi run on the CPU."""
    case = CASES[case_name]
    x0 = case.build().x0
    reference = run_pprs("pprs_mpi serial", case_name, CHECK, folder)
    hand, pprs, base_name = (GPU_HAND, GPU_PPRS, GPU_BASE) if device == "gpu" else (HAND, PPRS, BASE)
    target, table, worst = None, {name: [] for name in (*hand, *pprs)}, {}
    for r in range(rounds):
        for name in table:
            run = (run_hand(name, case_name, iters, device) if name in hand else
                   run_pprs(name, case_name, iters, folder, device))
            if name != DEVICE_NOISE:  # the device's noise is other numbers: timed, not compared
                worst[name] = max(worst.get(name, 0.0), check(case_name, name, run, reference, x0))
            if r == 0 and name == base_name:
                target = target_f(run["f"])
            table[name].append({**summary(run, iters, target), "layout": run.get("layout")})
            print(f"  {case_name:<12} round {r + 1}: {name:<28} {table[name][-1]['per_iteration_s'] * 1e3:9.3f} ms "
                  "per iteration", flush=True)
    medians = {name: {key: statistics.median(v[key] for v in runs) if all(v[key] is not None for v in runs) else None
                      for key in ("per_iteration_s", "end_to_end_s", "startup_s", "to_target_s")}
               for name, runs in table.items()}
    base = medians[base_name]
    for values in medians.values():
        values["per_iteration_vs_torch"] = values["per_iteration_s"] / base["per_iteration_s"]
        values["to_target_vs_torch"] = (None if values["to_target_s"] is None or base["to_target_s"] is None
                                        else values["to_target_s"] / base["to_target_s"])
    return {"problem": case.problem, "args": case.args, "K": case.K, "gamma": case.gamma, "lr": case.lr,
            "mu": case.mu, "seed": case.seed, "iterations": iters, "target_f": target,
            "max_relative_difference_first_iterations": worst, "median": medians, "rounds": table}


def machine() -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "jax"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    mpirun = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=60).stdout
    return {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "versions": versions, "mpirun": mpirun.strip().splitlines()[0],
            "environment": {name: {**os.environ, **ENV}.get(name) for name in (*BLAS_VARIABLES, *ENV)}}


def print_table(results: dict) -> None:
    print(f"\nmachine: {results['machine']['node']} ({results['machine']['cores']} cores); median of "
          f"{results['rounds']} interleaved rounds; ratios to the torch loop "
          f"{'on CUDA' if results['device'] == 'gpu' else 'at 1 thread'} (lower is faster)")
    for case_name, case in results["cases"].items():
        target = "" if case["target_f"] is None else f", target f = {case['target_f']:.4g}"
        print(f"{case_name}: K = {case['K']}, T = {case['iterations']}{target}; first {CHECK} iterations agree to "
              f"{max(case['max_relative_difference_first_iterations'].values()):.1e}")
        print(f"  {'':<28} {'ms/iter':>9} {'ratio':>6} {'end-to-end s':>13} {'start-up s':>11} {'to target s':>12} "
              f"{'ratio':>6} {'microbatches':>12}")
        for name, m in case["median"].items():
            to_target = "-" if m["to_target_s"] is None else f"{m['to_target_s']:.3f}"
            ratio = "-" if m["to_target_vs_torch"] is None else f"{m['to_target_vs_torch']:.2f}"
            layout = case["rounds"][name][0]["layout"]
            print(f"  {name:<28} {m['per_iteration_s'] * 1e3:>9.3f} {m['per_iteration_vs_torch']:>6.2f} "
                  f"{m['end_to_end_s']:>13.2f} {m['startup_s']:>11.2f} {to_target:>12} {ratio:>6} "
                  f"{'' if layout is None else layout['n_microbatches']:>12}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="", help=f"comma-separated, of {', '.join(CASES)} (default all; "
                                               f"--quick: {', '.join(QUICK_CASES)})")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny runs, for a smoke test (under a minute)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="NumPy's BLAS threads per process (OMP_NUM_THREADS, ...), as jobs/ set them: one core per "
                        "rank (default 1; 0: as the environment says)")
    p.add_argument("--out", default="", help=f"results file (default {RESULTS.relative_to(REPOSITORY)}, on a GPU "
                                             "vs_hand_loop_gpu.json; --quick: one in the temporary directory)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="gpu: pprs_mpi's CuPy nodes against torch's CUDA loop (needs CuPy, torch with CUDA, a GPU)")
    p.add_argument("--worker", choices=("torch", "jax"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    names = args.cases.split(",") if args.cases else list(QUICK_CASES if args.quick else CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}: choose from {', '.join(CASES)}")
    rounds = (1 if args.quick else 3) if args.rounds is None else args.rounds
    if rounds < 1 or args.blas_threads < 0:
        p.error(f"--rounds must be >= 1 and --blas-threads >= 0, got {rounds} and {args.blas_threads}")
    if args.blas_threads:
        ENV.update({name: str(args.blas_threads) for name in BLAS_VARIABLES})
    default = RESULTS.with_name("vs_hand_loop_gpu.json") if args.device == "gpu" else RESULTS
    out = Path(args.out or (Path(tempfile.gettempdir()) / "vs_hand_loop_quick.json" if args.quick else default))
    results = {"machine": machine(), "device": args.device, "rounds": rounds, "quick": args.quick, "skip": SKIP,
               "check": CHECK,
               "rtol": RTOL, "load_average_before": os.getloadavg(), "cases": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            case = CASES[name]
            results["cases"][name] = measure(name, rounds, case.quick_iters if args.quick else case.iters, folder,
                                             args.device)
    results.update(load_average_after=os.getloadavg(), seconds=time.perf_counter() - start)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"saved {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
