"""Gaussian perturbations X_k keyed by (seed, iteration, sample) through a counter-based generator.

On the host each X_k is drawn from a Philox stream whose key is the seed and whose counter starts
at (0, 0, k, t): it depends on nothing else, so every engine, rank layout, microbatch size and
resumed run draws exactly the same noise. On a GPU, X_k is drawn on the device by CuPy's generator
(cuRAND Philox) seeded from the same (seed, t, k): reproducible with itself, though not bitwise equal to the host.
Which of the two a rank uses is its backend's choice (`Backend.noise_source`).

Antithetic noise (`--noise antithetic`) pairs the samples: X_{2j+1} = −X_{2j}, the odd sample being the
exact negation of its even partner's draw (counter 2j), so it too depends on (seed, t, k) alone. The pair's
mean gradient cancels f's linear part exactly, which lowers the variance of G_t on near-linear stretches.
"""

from __future__ import annotations

import collections
import functools

import numpy as np

_MAX_U64 = 2**64


def standard_normal(seed: int, iteration: int, sample: int, dim: int, dtype=np.float64) -> np.ndarray:
    """X_k ~ N(0, I_dim) for (seed, iteration t, sample k), as a NumPy array of `dtype`."""
    return perturbations(seed, iteration, range(sample, sample + 1), dim, dtype)[0]


def perturbations(seed: int, iteration: int, samples: range, dim: int, dtype=np.float64,
                  antithetic: bool = False) -> np.ndarray:
    """The stacked X_k, shape (len(samples), dim), for the samples of one microbatch, drawn on the host."""
    rows = Rows(seed, len(samples), dim, antithetic)
    return rows.draw(iteration, samples).astype(dtype, copy=False)


class Rows:
    """Host draws of one microbatch's X_k into rows allocated once and reused by every draw: the
    caller consumes them (x_t + γX) before the next draw."""

    def __init__(self, seed: int, rows: int, dim: int, antithetic: bool = False):
        _check("seed", seed)
        self._rows, self._antithetic = np.empty((rows, dim)), antithetic
        self._bits, self._generator, self._state = _philox(seed)
        self._counter = self._state["state"]["counter"]

    def draw(self, iteration: int, samples: range) -> np.ndarray:
        """The stacked X_k, shape (len(samples), dim), each row drawn from Philox keyed by the seed with
        counter (0, 0, k, t) (antithetic: row k is ±the draw of counter k rounded down to even, − for odd k);
        valid until the next draw."""
        _check("iteration", iteration)
        _check("sample", samples.stop - 1)
        out, counter, bits, state = self._rows[:len(samples)], self._counter, self._bits, self._state
        generator = self._generator
        pair = self._antithetic
        for row, k in zip(out, samples):
            counter[2], counter[3] = k - k % 2 if pair else k, iteration
            bits.state = state
            generator.standard_normal(out=row)
            if pair and k % 2:
                np.negative(row, out=row)
        return out


def _check(label: str, value: int) -> None:
    if not 0 <= int(value) < _MAX_U64:
        raise ValueError(f"{label} must be in [0, 2**64), got {value}")


@functools.lru_cache(maxsize=8)
def _philox(seed: int) -> tuple[np.random.Philox, np.random.Generator, dict]:
    """One Philox generator per seed, whose counter `Rows.draw` sets through the returned state (reused):
    4x cheaper than a new generator per draw, and the same numbers. The state holds Python ints, which the
    setter reads 2x faster than NumPy arrays' items."""
    bits = np.random.Philox(key=np.array([seed, 0], dtype=np.uint64))
    state = {"bit_generator": "Philox", "state": {"counter": [0, 0, 0, 0], "key": [seed, 0]},
             "buffer": [0, 0, 0, 0], "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return bits, np.random.Generator(bits), state


class HostNoise:
    """A microbatch's X_k drawn on the host (`Rows`) and moved to the backend: bitwise the same noise on
    every backend, engine, rank layout and microbatch size. Up to AHEAD microbatches can be drawn ahead
    (`draw_ahead`, while a rank would otherwise wait) and are then taken by `draw`: the same numbers."""

    AHEAD = 2

    def __init__(self, backend, sampling, dim: int):
        self._rows = Rows(sampling.seed, sampling.microbatch_size, dim, sampling.antithetic)
        self._asarray = backend.asarray
        self._ahead: collections.deque = collections.deque()  # ((iteration, samples), X), in drawing order

    def draw(self, iteration: int, samples: range):
        """The stacked X_k of `samples` at iteration t, an array of the backend."""
        ahead = self._ahead
        if ahead and ahead[0][0] == (iteration, samples):
            return self._asarray(ahead.popleft()[1])
        if ahead:
            ahead.clear()  # drawn ahead for a pass that did not come (the run's last, or a changed sequence)
        return self._asarray(self._rows.draw(iteration, samples))

    def draw_ahead(self, iteration: int, samples: range) -> bool:
        """Draws the X_k of `samples` at iteration t now, for a later `draw`; False if AHEAD are already waiting."""
        if len(self._ahead) >= self.AHEAD:
            return False
        self._ahead.append(((iteration, samples), self._rows.draw(iteration, samples).copy()))
        return True

    @property
    def drawn_ahead(self) -> int:
        return len(self._ahead)


class DeviceNoise:
    """A microbatch's X_k drawn on a GPU backend's device (`backend.standard_normal`), the generator reseeded
    per (seed, t, k), so that they do not depend on how the samples are grouped into microbatches."""

    def __init__(self, backend, seed: int, dim: int, antithetic: bool = False):
        self._backend, self._seed, self._dim, self._antithetic = backend, seed, dim, antithetic

    drawn_ahead = 0  # the device's generator runs asynchronously: nothing is gained by drawing ahead

    def draw_ahead(self, iteration: int, samples: range) -> bool:
        return False

    def draw(self, iteration: int, samples: range):
        """The stacked X_k of `samples` at iteration t, drawn on the device (antithetic: as on the host, the
        odd k negate the draw of k − 1)."""
        backend, seed, dim = self._backend, self._seed, self._dim
        if not self._antithetic:
            return backend.xp.stack([backend.standard_normal(device_key(seed, iteration, k), dim) for k in samples])
        return backend.xp.stack([(-1.0 if k % 2 else 1.0) * backend.standard_normal(
            device_key(seed, iteration, k - k % 2), dim) for k in samples])


def noisy_copies(backend, sampling, source, x, iteration: int, samples: range):
    """θ = x + γ_t X_k for `samples` (one microbatch), stacked along the batch axis: the engine's copies, the
    X_k drawn by `source` (the backend's `noise_source`: on the host or on the device), γ_t the sampling's
    schedule at this iteration."""
    xp = backend.xp
    gamma = sampling.gamma_at(iteration)
    if gamma == 0.0:
        return xp.array(xp.broadcast_to(x, (len(samples), x.shape[0])))
    batch = gamma * source.draw(iteration, samples)
    batch += x  # x + γX, broadcast along the batch axis, in one new array (addition commutes bitwise)
    return batch


def device_key(seed: int, iteration: int, sample: int) -> int:
    """A 63-bit generator seed for (seed, t, k), for device generators that take a seed but no counter."""
    return int(np.random.SeedSequence([seed, iteration, sample]).generate_state(1, np.uint64)[0] >> np.uint64(1))
