"""GPU ranks (skipped without CuPy and a CUDA device): agreement with the CPU and self-reproducibility."""

import numpy as np
import pytest

from conftest import mpirun
from pprs_mpi.solve import main
from pprs_mpi.trace import load

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001 — a CuPy wheel without a driver
    HAVE_GPU = False
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device")]

RUN = ["--problem", "branch", "--depth", "5", "-K", "8", "--gamma", "0.05", "--lr", "0.02", "--iters", "20", "--quiet"]


def test_gpu_run_agrees_with_cpu_run_after_20_iterations(tmp_path):
    """Same (host-drawn) noise, so the only differences are float rounding on the device."""
    cpu, gpu = str(tmp_path / "cpu.h5"), str(tmp_path / "gpu.h5")
    assert main([*RUN, "--device", "cpu", "--out", cpu]) == 0
    assert main([*RUN, "--device", "gpu", "--noise-source", "host", "--out", gpu]) == 0
    a, b = load(cpu), load(gpu)
    assert b.attrs["device"].startswith("gpu")
    np.testing.assert_allclose(b.result["y"], a.result["y"], rtol=1e-9, atol=1e-12)


def test_gpu_run_with_device_noise_reproduces_itself(tmp_path):
    runs = [str(tmp_path / f"run{i}.h5") for i in range(2)]
    for out in runs:
        assert main([*RUN, "--device", "gpu", "--out", out]) == 0
    assert np.array_equal(load(runs[0]).result["y"], load(runs[1]).result["y"])


@pytest.mark.mpi
def test_gpu_ranks_over_mpi_agree_with_the_cpu(tmp_path):
    """2 GPU ranks (sharing a GPU where there is one) exchange device data on the path the MPI
    library allows (staged through pinned memory with the PyPI wheel) and agree with the CPU."""
    cpu, gpu = str(tmp_path / "cpu.h5"), str(tmp_path / "gpu.h5")
    assert main([*RUN, "--device", "cpu", "--out", cpu]) == 0
    result = mpirun(2, *RUN, "--device", "gpu", "--noise-source", "host", "--out", gpu, timeout=180)
    assert result.returncode == 0, result.stderr
    a, b = load(cpu), load(gpu)
    assert b.attrs["rank_transport"] in ("staged,staged", "direct,direct")
    np.testing.assert_allclose(b.result["y"], a.result["y"], rtol=1e-9, atol=1e-12)


def test_gpu_float32_run_agrees_with_the_cpu_float32_run(tmp_path):
    """Loose: float32 rounding may move a sample across a kink of the nonsmooth objective."""
    cpu, gpu = str(tmp_path / "cpu.h5"), str(tmp_path / "gpu.h5")
    assert main([*RUN, "--dtype", "float32", "--device", "cpu", "--out", cpu]) == 0
    assert main([*RUN, "--dtype", "float32", "--device", "gpu", "--noise-source", "host", "--out", gpu]) == 0
    np.testing.assert_allclose(load(gpu).result["y"], load(cpu).result["y"], rtol=1e-3, atol=1e-4)


# -- PyTorch and JAX nodes on the GPU: tensors cross to CuPy by DLPack, on the rank's device -------------------

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"
FRAMEWORK_RUN = ["-K", "8", "--microbatch-size", "4", "--gamma", "0.02", "--lr", "0.001", "--iters", "5", "--quiet"]


@pytest.mark.parametrize("example, framework", [("torch_attack.py", "torch"), ("torch_finetune.py", "torch"),
                                                ("jax_chain.py", "jax")])
def test_framework_nodes_on_the_gpu_agree_with_the_cpu(example, framework, tmp_path):
    pytest.importorskip(framework, reason=f"{framework} is not installed")
    flags = ["--problem", f"{EXAMPLES / example}:build", *FRAMEWORK_RUN]
    cpu, gpu = str(tmp_path / "cpu.h5"), str(tmp_path / "gpu.h5")
    assert main([*flags, "--device", "cpu", "--out", cpu]) == 0
    assert main([*flags, "--device", "gpu", "--noise-source", "host", "--out", gpu]) == 0
    a, b = load(cpu), load(gpu)
    assert b.attrs["device"].startswith("gpu") and b.status == "completed"
    np.testing.assert_allclose(b.result["y"], a.result["y"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.columns["f_smoothed"], a.columns["f_smoothed"], rtol=1e-9)


def test_a_torch_op_on_the_gpu_shares_cupys_memory_without_copies():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from pprs_mpi.ops import TorchOp
    op = TorchOp(torch.nn.Linear(4, 3))
    op.output_shape((4,))
    x = cupy.random.standard_normal((5, 4))
    out, (leaves, tape_output) = op.forward_with_residuals(cupy, x)
    assert isinstance(out, cupy.ndarray) and out.device.id == x.device.id
    assert leaves[0].data_ptr() == x.data.ptr and tape_output.data_ptr() == out.data.ptr  # the same memory
    grad = op.vjp_with_residuals(cupy, (leaves, tape_output), out, cupy.ones_like(out))[0]
    weight = cupy.asarray(op.fn.weight.detach().double().numpy())
    cupy.testing.assert_allclose(grad, cupy.ones((5, 3)) @ weight, rtol=1e-12)
