"""A 'GPU' backend for testing device code paths on the CPU: its arrays are NumPy's, and it counts
what a real device would do (stream syncs, pinned allocations, device noise draws)."""

import numpy as np

from pprs_mpi.backend import Backend


class FakeDevice(Backend):
    def __init__(self):
        super().__init__(np, "gpu:0", np.dtype("float64"))
        self.syncs, self.pinned, self.noise_keys = 0, 0, []

    def synchronize(self):
        self.syncs += 1

    def asarray(self, host_array):
        return np.array(host_array, dtype=self.dtype)  # a copy, as a host-to-device transfer is

    def standard_normal(self, key, size):
        self.noise_keys.append(key)
        return np.random.default_rng(key).standard_normal(size)

    def host_empty(self, shape, dtype=None):
        self.pinned += 1
        return np.empty(shape, dtype=self.dtype)
