"""A 'GPU' backend for testing device code paths on the CPU: `CupyBackend` with NumPy arrays, whose CuPy
calls (stream syncs, pinned allocations, cuRAND draws) are stood in for and counted; what `CupyBackend`
decides itself (staging path, host or device noise) is its own."""

import numpy as np

from pprs_mpi.backend import CupyBackend, NumpyBackend


class FakeDevice(CupyBackend):
    to_host = NumpyBackend.to_host  # NumPy arrays have no .get()

    def __init__(self):
        super().__init__(np, 0, "float64")
        self.syncs, self.pinned, self.noise_keys = 0, 0, []

    def synchronize(self):
        self.syncs += 1

    def asarray(self, host_array):
        return np.array(host_array, dtype=self.dtype)  # a copy, as a host-to-device transfer is

    def standard_normal(self, key, size):
        self.noise_keys.append(key)
        return np.random.default_rng(key).standard_normal(size)

    def host_empty(self, shape):
        self.pinned += 1
        return np.empty(shape, dtype=self.dtype)
