"""Device selection and the choice of MPI transport, tested on the CPU through the backend's interface.

No claim about GPU behaviour rests on these tests; tests/test_gpu.py runs where a GPU is present.
"""

import os

import numpy as np
import pytest

from pprs_mpi import noise
from fake_device import FakeDevice
from pprs_mpi.backend import (BackendError, DirectStaging, HostStaging, NumpyBackend, PinnedStaging, Staging,
                              cuda_aware_mpi, select)
from pprs_mpi.engines.stage import Sampling
from pprs_mpi.solve import main


@pytest.mark.parametrize("value, aware", [("1", True), ("0", False)])
def test_environment_override_decides_cuda_awareness_first(monkeypatch, value, aware):
    monkeypatch.setenv("PPRS_CUDA_AWARE", value)
    assert cuda_aware_mpi() == (aware, f"PPRS_CUDA_AWARE={value}")


def test_bad_override_is_an_error_and_no_override_asks_mpi(monkeypatch):
    monkeypatch.setenv("PPRS_CUDA_AWARE", "yes")
    with pytest.raises(BackendError, match="must be 0 or 1"):
        cuda_aware_mpi()
    monkeypatch.delenv("PPRS_CUDA_AWARE")
    from mpi4py import MPI  # noqa: F401 — loads libmpi, where the query lives
    aware, how = cuda_aware_mpi()
    assert how in ("MPIX_Query_cuda_support", "no CUDA-awareness query in this MPI")
    assert isinstance(aware, bool) and (aware is False or how == "MPIX_Query_cuda_support")


def test_cuda_awareness_is_asked_of_mpi_on_device_ranks_only(monkeypatch):
    monkeypatch.setenv("PPRS_CUDA_AWARE", "1")
    assert select("cpu").cuda_awareness() == (False, "CPU rank")
    assert FakeDevice().cuda_awareness() == (True, "PPRS_CUDA_AWARE=1")


@pytest.mark.parametrize("backend, cuda_aware, kind, path", [
    (select("cpu"), False, HostStaging, "host"), (select("cpu"), True, HostStaging, "host"),
    (FakeDevice(), False, PinnedStaging, "staged"), (FakeDevice(), True, DirectStaging, "direct")])
def test_the_backend_chooses_the_staging_path_from_the_cuda_awareness(backend, cuda_aware, kind, path):
    for staging in (backend.staging(cuda_aware), Staging(backend, cuda_aware)):
        assert type(staging) is kind and staging.path == path
        assert staging.backend is backend and staging.cuda_aware is cuda_aware


def test_numpy_backend_copies_only_what_is_not_already_a_host_array_in_c_order():
    backend = select("cpu", "float32")
    assert isinstance(backend, NumpyBackend) and not backend.on_gpu and backend.device == "cpu"
    rows = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    assert backend.contiguous(rows) is rows
    columns = backend.contiguous(rows.T)
    assert columns.flags.c_contiguous and np.array_equal(columns, rows.T)
    assert backend.to_host(rows) is rows
    out = backend.host_empty((2, 3))
    assert out.dtype == np.float32 and backend.to_host(rows * 2, out=out) is out and np.array_equal(out, rows * 2)
    assert backend.asarray(np.arange(3)).dtype == np.float32
    backend.synchronize()  # nothing queued: returns at once


def test_staged_path_reuses_pinned_buffers_once_mpi_is_done_with_them():
    device = FakeDevice()
    staging = Staging(device, cuda_aware=False)
    first = staging.outgoing(np.arange(4.0))
    second = staging.outgoing((np.arange(4.0) * 2))  # the first is still being sent
    assert first is not second and device.pinned == 2 and device.syncs == 2
    assert np.array_equal(first, [0, 1, 2, 3]) and np.array_equal(second, [0, 2, 4, 6])
    staging.sent(first)
    assert staging.outgoing(np.ones(4)) is first and device.pinned == 2
    buffer = staging.receive_buffer((2, 3))
    buffer[...] = 7.0
    received = staging.incoming(buffer)
    assert received is not buffer and device.syncs == 4  # copied out and synchronised: reusable at once
    buffer[...] = 0.0  # the channel's next message lands in the same buffer
    assert np.array_equal(received, np.full((2, 3), 7.0))
    assert device.pinned == 3 and staging.allocated_bytes == (4 + 4 + 6) * 8


def test_direct_path_hands_device_arrays_to_mpi_after_a_sync_and_copies_receives_out():
    device = FakeDevice()
    staging = Staging(device, cuda_aware=True)
    array = np.ones(3)
    assert staging.outgoing(array) is array and device.syncs == 1 and device.pinned == 0
    staging.sent(array)
    assert staging.receive_buffer((3,)) is not array  # a sent array never enters the pool
    assert device.syncs == 2  # a new device buffer waits for the stream (the pool may recycle memory)
    buffer = staging.receive_buffer((3,))
    buffer[...] = 5.0
    received = staging.incoming(buffer)
    assert received is not buffer and device.syncs == 4 and device.pinned == 0
    buffer[...] = 0.0  # the channel's next message lands in the same buffer
    assert np.array_equal(received, np.full(3, 5.0))


def test_host_path_copies_receives_out_so_that_buffers_are_reused():
    staging = Staging(select("cpu"), cuda_aware=False)
    buffer = staging.receive_buffer((2,))
    buffer[...] = (1.0, 2.0)
    received = staging.incoming(buffer)
    buffer[...] = 0.0  # the next message lands in the same buffer
    assert np.array_equal(received, [1.0, 2.0]) and staging.allocated_bytes == 16


@pytest.mark.mpi
def test_mpi_engine_on_fake_device_ranks_matches_the_cpu_over_both_device_paths():
    """The windowed transport (per-channel receive buffers) moves device data right over real MPI on either path; the
    staged path allocates its pinned buffers in the first pass and reuses them after, the direct none."""
    import json
    import sys
    from pathlib import Path
    from conftest import run
    here = Path(__file__).parent
    result = run(["mpirun", "-n", "3", sys.executable, str(here / "fake_device_run.py")],
                 env={"PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])})  # this checkout's pprs_mpi
    assert result.returncode == 0, result.stderr
    staged, direct = [json.loads(line) for line in result.stdout.splitlines()]
    assert staged["path"] == "staged" and staged["equal"] and min(staged["pinned"]) > 0
    assert staged["buffer_bytes"] == staged["buffer_bytes_after_one_pass"]  # pooled, not one per message
    assert direct["path"] == "direct" and direct["equal"] and direct["pinned"] == [0, 0, 0]
    assert min(direct["buffer_bytes"]) > 0  # device receive buffers


GPU_VISIBLE = select("auto").on_gpu


@pytest.mark.skipif(GPU_VISIBLE, reason="a GPU is visible: tests/test_gpu.py covers it")
def test_auto_falls_back_to_numpy_and_says_why_and_gpu_is_one_clear_error(tmp_path, capsys):
    backend = select("auto", "float32")
    assert backend.xp is np and backend.dtype == np.float32
    assert backend.choice.startswith("--device auto chose the CPU: ")
    assert main(["--device", "auto", "--iters", "2", "--out", str(tmp_path / "auto.h5")]) == 0
    assert f"devices 1 × cpu, transport 1 × host (rank 0: {backend.choice})" in capsys.readouterr().out
    assert main(["--device", "gpu", "--iters", "2", "--out", str(tmp_path / "gpu.h5")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--device gpu needs CuPy and a CUDA GPU: " in error


def test_unknown_device_or_dtype_is_an_error():
    with pytest.raises(BackendError, match="unknown device"):
        select("tpu")
    with pytest.raises(BackendError, match="unknown dtype"):
        select("cpu", "float16")


def test_device_noise_is_drawn_per_sample_so_microbatching_does_not_change_it():
    device = FakeDevice()
    source = device.noise_source(Sampling(6, 0.3, 3, 6), 4)
    assert isinstance(source, noise.DeviceNoise)
    whole = source.draw(7, range(6))
    part = source.draw(7, range(2, 5))
    assert np.array_equal(part, whole[2:5])
    assert device.noise_keys[:6] == [noise.device_key(3, 7, k) for k in range(6)]


@pytest.mark.parametrize("backend", [select("cpu"), select("cpu", "float32"), FakeDevice()])
def test_host_noise_is_the_philox_rows_on_every_backend_and_the_copies_add_them_bitwise(backend):
    """NumPy ranks, and GPU ranks asked for host noise, draw the reproducible host stream."""
    sampling = Sampling(5, 0.3, 9, 3, noise_on_device=False)
    source, x = backend.noise_source(sampling, 4), backend.asarray(np.linspace(-1.0, 1.0, 4))
    assert isinstance(source, noise.HostNoise)
    for samples in (range(0, 3), range(3, 5)):
        expected = noise.Rows(9, 3, 4).draw(2, samples).astype(backend.dtype)
        assert np.array_equal(source.draw(2, samples), expected)
        copies = noise.noisy_copies(backend, sampling, source, x, 2, samples)
        assert copies.dtype == backend.dtype and np.array_equal(copies, x + sampling.gamma * expected)
    assert getattr(backend, "noise_keys", []) == []


def test_without_smoothing_the_copies_are_the_point_and_nothing_is_drawn():
    device, x = FakeDevice(), np.array([1.0, -2.0])
    copies = noise.noisy_copies(device, Sampling(3, 0.0, 0, 3), None, x, 0, range(3))
    assert np.array_equal(copies, np.tile(x, (3, 1))) and copies.flags.writeable and device.noise_keys == []


def test_gpu_ranks_draw_noise_on_the_device_unless_asked_for_host_noise():
    """With host noise a GPU rank perturbs exactly as a CPU rank does (what tests/test_gpu.py compares)."""
    from pprs_mpi.api import engine_for
    from pprs_mpi.engines.stage import Sampling
    from pprs_mpi.problems import build
    graph = build("lad", depth=3, dim=4, rows=5, radius=1.0, problem_seed=0).graph

    def gradient(backend, on_device, timeline_every=1):
        sampling = Sampling(6, 0.3, 1, 2, noise_on_device=on_device)
        engine = engine_for(graph, graph.stages(2), sampling, backend, timeline_every=timeline_every)
        return engine.gradient(np.ones(4), 5)[0]

    cpu = gradient(select("cpu"), on_device=True)
    host_noise, device = FakeDevice(), FakeDevice()
    assert np.array_equal(gradient(host_noise, on_device=False), cpu) and host_noise.noise_keys == []
    assert not np.allclose(gradient(device, on_device=True), cpu)
    assert device.noise_keys == [noise.device_key(1, 5, k) for k in range(6)]
    actions = 2 * 3 * len(graph.order)  # forward and backward of every node for 3 microbatches
    assert device.syncs >= actions  # recorded actions wait for their kernels; iteration 5 is recorded
    unrecorded = FakeDevice()
    gradient(unrecorded, on_device=True, timeline_every=2)
    assert unrecorded.syncs == 0  # iteration 5 is not recorded: no waits on the hot path


def test_device_noise_keys_are_distinct_and_stable():
    keys = {noise.device_key(0, t, k) for t in range(20) for k in range(20)}
    assert len(keys) == 400 and noise.device_key(3, 4, 5) == noise.device_key(3, 4, 5)
