"""Where a rank's arrays live: NumPy on the host, or CuPy on the rank's local GPU.

A `Backend` owns what differs between the two (host copies, contiguity, waiting for the device, where
the noise is drawn, how arrays cross MPI), so that no caller asks which array module it holds. This is
the only module that imports CuPy; everything else takes `backend.xp`.
"""

from __future__ import annotations

import ctypes
import os
from abc import ABC, abstractmethod

import numpy as np

from pprs_mpi import noise

DEVICES = ("cpu", "gpu", "auto")
DTYPES = ("float32", "float64")


class BackendError(RuntimeError):
    """The requested device cannot be used here."""


class Backend(ABC):
    """An array module (`xp`), the device it computes on, the floating dtype of a run and why that device
    was chosen (`choice`, shown in the banner), with one subclass per array module."""

    on_gpu = False  # whether the arrays live on a GPU, for what is shown and named; what differs is in the methods

    def __init__(self, xp, device: str, dtype, choice: str = ""):
        self.xp, self.device, self.dtype, self.choice = xp, device, np.dtype(dtype), choice

    def asarray(self, host_array):
        """A host array moved to this backend in the run's dtype."""
        return self.xp.asarray(host_array, dtype=self.dtype)

    def contiguous(self, array):
        """`array` in C order, copied only if it is not: what MPI and the staging copies read."""
        return self.xp.ascontiguousarray(array)

    def staging(self, cuda_aware: bool = False) -> Staging:
        """How this rank's arrays cross MPI, given whether MPI reads device memory (`cuda_awareness`)."""
        return self.staging_class(cuda_aware)(self, cuda_aware)

    @abstractmethod
    def to_host(self, array, out: np.ndarray | None = None) -> np.ndarray:
        """`array` as a host array; with `out`, copied into that (pinned) buffer, which is returned."""

    @abstractmethod
    def host_empty(self, shape) -> np.ndarray:
        """A host array of the run's dtype for staging this backend's data (pinned on a GPU, for fast copies)."""

    @abstractmethod
    def synchronize(self) -> None:
        """Waits for queued device work: before an action is timed or a buffer is handed to MPI."""

    @abstractmethod
    def noise_source(self, sampling, dim: int):
        """What draws a microbatch's X_k of dimension `dim` on this backend (`noise.HostNoise` or
        `noise.DeviceNoise`), as `sampling` asks."""

    @abstractmethod
    def cuda_awareness(self) -> tuple[bool, str]:
        """Whether MPI can read and write this backend's arrays in place, and how that was decided."""

    @abstractmethod
    def staging_class(self, cuda_aware: bool) -> type[Staging]:
        """The `Staging` subclass by which this backend's arrays cross MPI."""


class NumpyBackend(Backend):
    """NumPy arrays on the host: nothing to wait for, the host noise stream, arrays handed to MPI as they are."""

    def __init__(self, dtype, choice: str = ""):
        super().__init__(np, "cpu", dtype, choice)

    def to_host(self, array, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.asarray(array)
        out[...] = array
        return out

    def host_empty(self, shape) -> np.ndarray:
        return np.empty(shape, dtype=self.dtype)

    def synchronize(self) -> None:
        """Nothing to wait for: NumPy has finished when it returns."""

    def noise_source(self, sampling, dim: int):
        return noise.HostNoise(self, sampling, dim)

    def cuda_awareness(self) -> tuple[bool, str]:
        return False, "CPU rank"

    def staging_class(self, cuda_aware: bool) -> type[Staging]:
        return HostStaging


class CupyBackend(Backend):
    """CuPy arrays on one GPU: host copies through pinned memory, noise drawn on the device unless host noise
    is asked for, and MPI buffers on the device (CUDA-aware MPI) or staged through pinned host memory."""

    on_gpu = True

    def __init__(self, cupy, gpu: int, dtype, choice: str = ""):
        super().__init__(cupy, f"gpu:{gpu}", dtype, choice)
        self._generator = None  # cuRAND's, created by the first device draw

    def to_host(self, array, out: np.ndarray | None = None) -> np.ndarray:
        return array.get(out=out)

    def host_empty(self, shape) -> np.ndarray:
        import cupyx
        return cupyx.empty_pinned(shape, dtype=self.dtype)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def noise_source(self, sampling, dim: int):
        if sampling.noise_on_device:
            return noise.DeviceNoise(self, sampling.seed, dim, sampling.antithetic)
        return noise.HostNoise(self, sampling, dim)

    def standard_normal(self, key: int, size: int):
        """N(0, I_size) drawn on the device by a generator reseeded with `key` (a GPU rank's noise).

        The generator is cuRAND's Philox, created once: reseeding it is free, whereas the default
        XORWOW runs a setup kernel after every seed, that is for every sample of every iteration.
        """
        if self._generator is None:
            from cupy_backends.cuda.libs import curand
            self._generator = self.xp.random.RandomState(method=curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        self._generator.seed(key)
        return self._generator.standard_normal(size, dtype=self.dtype)

    def cuda_awareness(self) -> tuple[bool, str]:
        return cuda_aware_mpi()

    def staging_class(self, cuda_aware: bool) -> type[Staging]:
        return DirectStaging if cuda_aware else PinnedStaging


CUDA_AWARE_VARIABLE = "PPRS_CUDA_AWARE"


def cuda_aware_mpi() -> tuple[bool, str]:
    """Whether MPI can read and write device buffers, and how that was decided.

    The environment override PPRS_CUDA_AWARE=0|1 comes first, then Open MPI's MPIX_Query_cuda_support
    (looked up in the libmpi this process loaded); anything else is taken as not aware.
    """
    override = os.environ.get(CUDA_AWARE_VARIABLE, "").strip()
    if override in ("0", "1"):
        return override == "1", f"{CUDA_AWARE_VARIABLE}={override}"
    if override:
        raise BackendError(f"{CUDA_AWARE_VARIABLE} must be 0 or 1, got {override!r}")
    query = _open_mpi_cuda_query()
    if query is None:
        return False, "no CUDA-awareness query in this MPI"
    return bool(query()), "MPIX_Query_cuda_support"


def _open_mpi_cuda_query():
    """Open MPI's MPIX_Query_cuda_support from the libmpi loaded in this process, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libmpi.so" in line})
        for path in paths:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "MPIX_Query_cuda_support"):
                return lib.MPIX_Query_cuda_support
    except OSError:
        pass
    return None


class Staging:
    """How one rank's arrays cross MPI, chosen once by its backend (`Backend.staging_class`):
    `backend.staging(cuda_aware)`, or `Staging(backend, cuda_aware)` as pathlib's `Path` gives a `PosixPath`,
    is a `HostStaging` (NumPy ranks), a `DirectStaging` (device buffers handed to a CUDA-aware MPI after the
    stream is synchronised) or a `PinnedStaging` (through pinned host buffers).

    Receive buffers are allocated once per channel by the transport, which reuses them message after
    message; the pinned buffers of outgoing messages come from a pool and go back to it as soon as MPI
    is done with them. So a rank holds as many buffers as it has messages in flight, not one per
    message of a pass.
    """

    path = ""  # the path's name, shown in the banner and the trace

    def __new__(cls, backend: Backend, cuda_aware: bool = False):
        if cls is Staging:
            cls = backend.staging_class(cuda_aware)
        return super().__new__(cls)

    def __init__(self, backend: Backend, cuda_aware: bool = False):
        self.backend, self.cuda_aware = backend, cuda_aware
        self.allocated_bytes = 0

    def receive_buffer(self, shape):
        """A new buffer for receives to write into (host memory, but on the direct path)."""
        return self._counted(self.backend.host_empty(shape))

    def incoming(self, buffer):
        """The received data as an array of this backend that owns its memory, copied out of `buffer`
        (where MPI writes the next message) once the device has finished copying."""
        raise NotImplementedError

    def outgoing(self, array):
        """The buffer to Isend for `array`; device work is finished first."""
        raise NotImplementedError

    def sent(self, buffer) -> None:
        """MPI has finished sending `buffer` (what `outgoing` returned)."""

    def _counted(self, buffer):
        self.allocated_bytes += buffer.nbytes
        return buffer


class HostStaging(Staging):
    """NumPy ranks: arrays are sent as they are; a received buffer is copied out."""

    path = "host"

    def incoming(self, buffer):
        return buffer.copy()

    def outgoing(self, array):
        return array


class DirectStaging(Staging):
    """GPU ranks with a CUDA-aware MPI: device buffers go to MPI directly."""

    path = "direct"

    def receive_buffer(self, shape):
        """A new device buffer for MPI to write into. CuPy's pool may hand out memory that a queued
        kernel still reads (safe within one stream, but MPI writes outside it), so wait for the stream."""
        buffer = self.backend.xp.empty(shape, dtype=self.backend.dtype)
        self.backend.synchronize()
        return self._counted(buffer)

    def incoming(self, buffer):
        array = buffer.copy()
        self.backend.synchronize()
        return array

    def outgoing(self, array):
        self.backend.synchronize()
        return array


class PinnedStaging(Staging):
    """GPU ranks with an MPI that reads host memory only: through pinned host buffers, those of
    outgoing messages pooled."""

    path = "staged"

    def __init__(self, backend: Backend, cuda_aware: bool = False):
        super().__init__(backend, cuda_aware)
        self._free: dict = {}  # shape -> outgoing buffers ready for reuse

    def incoming(self, buffer):
        array = self.backend.asarray(buffer)
        self.backend.synchronize()
        return array

    def outgoing(self, array):
        self.backend.synchronize()
        free = self._free.get(array.shape)
        buffer = free.pop() if free else self._counted(self.backend.host_empty(array.shape))
        return self.backend.to_host(array, out=buffer)

    def sent(self, buffer) -> None:
        self._free.setdefault(buffer.shape, []).append(buffer)


def _cupy_devices():
    """(cupy module, number of visible GPUs, why there is none), the module being None without a GPU."""
    try:
        import cupy
    except ImportError:
        return None, 0, "CuPy is not installed (pip install 'pprs_mpi[gpu]')"
    except Exception as err:  # noqa: BLE001 — a broken CuPy install
        return None, 0, f"CuPy fails to import: {_first_line(err)}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001 — a CuPy wheel present, but no driver or device
        return None, 0, f"CUDA reports {_first_line(err)}"
    return (cupy, count, "") if count else (None, 0, "no CUDA device is visible")


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"


def select(device: str = "cpu", dtype: str = "float64", local_rank: int = 0) -> Backend:
    """The backend for `device` ('cpu', 'gpu' or 'auto'); a GPU rank uses GPU local_rank mod #GPUs.

    `Backend.choice` says why: what was asked for, and for 'auto' why the CPU was used.
    """
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if device == "cpu":
        return NumpyBackend(dtype, choice="--device cpu")
    cupy, count, missing = _cupy_devices()
    if count == 0:
        if device == "gpu":
            raise BackendError(f"--device gpu needs CuPy and a CUDA GPU: {missing}")
        return NumpyBackend(dtype, choice=f"--device auto chose the CPU: {missing}")
    gpu = local_rank % count
    cupy.cuda.Device(gpu).use()
    how = f"node-local rank {local_rank} mod {count} visible GPUs"
    return CupyBackend(cupy, gpu, dtype, choice=f"--device {device} chose GPU {gpu}: {how}")
