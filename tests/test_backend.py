"""Device selection and the choice of MPI transport, tested on the CPU through the backend's interface.

No claim about GPU behaviour rests on these tests; tests/test_gpu.py runs where a GPU is present.
"""

import numpy as np
import pytest

from pprs_mpi import noise
from pprs_mpi.backend import Backend, BackendError, Staging, cuda_aware_mpi, select


class FakeDevice(Backend):
    """A 'GPU' backend whose arrays are NumPy's: it records syncs and hands out counted host buffers."""

    def __init__(self):
        super().__init__(np, "gpu:0", np.dtype("float64"))
        self.syncs, self.pinned = 0, 0

    def synchronize(self):
        self.syncs += 1

    def host_empty(self, shape, dtype=None):
        self.pinned += 1
        return np.empty(shape, dtype=self.dtype)


class DeviceArray(np.ndarray):
    """A NumPy array with CuPy's device-to-host `get(out=...)`."""

    def get(self, out):
        out[...] = self


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
    assert aware is False  # the PyPI Open MPI wheel is not CUDA-aware


def test_paths_follow_device_and_awareness():
    assert Staging(select("cpu"), cuda_aware=True).path == "host"
    assert Staging(FakeDevice(), cuda_aware=True).path == "direct"
    assert Staging(FakeDevice(), cuda_aware=False).path == "staged"


def test_staged_path_copies_through_one_reused_host_buffer_per_message():
    device = FakeDevice()
    staging = Staging(device, cuda_aware=False)
    first = staging.outgoing("edge-1", np.arange(4.0).view(DeviceArray))
    again = staging.outgoing("edge-1", (np.arange(4.0) * 2).view(DeviceArray))
    assert first is again and device.pinned == 1 and device.syncs == 2
    assert np.array_equal(again, [0, 2, 4, 6])
    received = staging.receive_buffer((2, 3))
    assert device.pinned == 2 and staging.incoming(received).shape == (2, 3)


def test_direct_path_hands_device_arrays_to_mpi_after_a_sync():
    device = FakeDevice()
    staging = Staging(device, cuda_aware=True)
    array = np.ones(3)
    assert staging.outgoing("edge", array) is array and device.syncs == 1 and device.pinned == 0
    buffer = staging.receive_buffer((3,))
    assert staging.incoming(buffer) is buffer and device.pinned == 0


def test_device_selection_falls_back_to_numpy_without_a_gpu():
    backend = select("auto", "float32")
    assert backend.xp is np and backend.dtype == np.float32
    with pytest.raises(BackendError, match="unknown device"):
        select("tpu")


def test_device_noise_keys_are_distinct_and_stable():
    keys = {noise.device_key(0, t, k) for t in range(20) for k in range(20)}
    assert len(keys) == 400 and noise.device_key(3, 4, 5) == noise.device_key(3, 4, 5)
