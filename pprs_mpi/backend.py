"""Where a rank's arrays live: NumPy on the host, or CuPy on the rank's local GPU.

This is the only module that imports CuPy; everything else takes `backend.xp`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEVICES = ("cpu", "gpu", "auto")
DTYPES = ("float32", "float64")


class BackendError(RuntimeError):
    """The requested device cannot be used here."""


@dataclass
class Backend:
    """An array module, the device it computes on and the floating dtype of a run."""

    xp: object
    device: str  # 'cpu' or 'gpu:<id>'
    dtype: np.dtype

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("gpu")

    def asarray(self, host_array):
        """A host array moved to this backend in the run's dtype."""
        return self.xp.asarray(host_array, dtype=self.dtype)

    def to_host(self, array) -> np.ndarray:
        return array.get() if self.on_gpu else np.asarray(array)

    def synchronize(self) -> None:
        """Wait for queued device work, so that a buffer can be handed to MPI."""
        if self.on_gpu:
            self.xp.cuda.get_current_stream().synchronize()


def _cupy_devices():
    """(cupy module, number of visible GPUs), or (None, 0) when CuPy or a GPU is missing."""
    try:
        import cupy
        return cupy, cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, or CUDA present in the wheel but no driver/device
        return None, 0


def select(device: str = "cpu", dtype: str = "float64", local_rank: int = 0) -> Backend:
    """The backend for `device` ('cpu', 'gpu' or 'auto'); a GPU rank uses GPU local_rank mod #GPUs."""
    if device not in DEVICES:
        raise BackendError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    if device == "cpu":
        return Backend(np, "cpu", np.dtype(dtype))
    cupy, count = _cupy_devices()
    if count == 0:
        if device == "gpu":
            raise BackendError("--device gpu needs CuPy and a CUDA GPU; none found (install pprs_mpi[gpu])")
        return Backend(np, "cpu", np.dtype(dtype))
    gpu = local_rank % count
    cupy.cuda.Device(gpu).use()
    return Backend(cupy, f"gpu:{gpu}", np.dtype(dtype))
