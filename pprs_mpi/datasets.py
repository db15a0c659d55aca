"""Image data for the paper's problems: the 8x8 digits (shipped in pprs_mpi/data) and CIFAR-10's python batches.

Every dataset comes as a fixed train / held-out `Split` of float images (N, C, H, W) in [0, 1] and
integer labels, so that a held-out index names the same image in every run and on every machine.
"""

from __future__ import annotations

import importlib.resources
import os
import pickle
from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "cifar10")
#: The digits split: a fixed permutation (seed 0) whose first 20 % is held out.
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message is one line."""


@dataclass(frozen=True)
class Split:
    """Training and held-out images (N, C, H, W) in [0, 1] with their labels (N,) int64."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def load(name: str, data_dir: str = "") -> Split:
    """The named dataset; `data_dir` is where CIFAR-10's batches are (digits needs none)."""
    check_name(name)
    return load_digits() if name == "digits" else load_cifar10(data_dir)


def load_digits() -> Split:
    """The 1797 8x8 grayscale digits shipped with the package, pixels 0..16 scaled to [0, 1].

    The arrays are scikit-learn's `load_digits()` (the UCI set; provenance and license in
    pprs_mpi/data/digits.txt), shipped so that a run does not import scikit-learn (1.8 s on every rank).
    """
    images, target = digits_arrays()
    images = (images / 16.0)[:, None, :, :]
    labels = target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, train = np.split(order, [round(HELD_OUT_FRACTION * len(labels))])
    return Split("digits", images[train], labels[train], images[test], labels[test], classes=10)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The shipped digits as scikit-learn gives them: images (1797, 8, 8) float64 0..16, target (1797,) int64."""
    with importlib.resources.files("pprs_mpi").joinpath("data", "digits.npz").open("rb") as handle, \
            np.load(handle) as arrays:
        return arrays["images"], arrays["target"]


def load_cifar10(data_dir: str) -> Split:
    """CIFAR-10 from the python version's batches in `data_dir`: data_batch_1..5 train, test_batch held out."""
    if not data_dir:
        raise DatasetError("dataset 'cifar10' needs --data-dir: the folder holding data_batch_1..5 and test_batch")
    train = [read_cifar10_batch(os.path.join(data_dir, name)) for name in CIFAR10_TRAIN]
    test_images, test_labels = read_cifar10_batch(os.path.join(data_dir, CIFAR10_TEST))
    return Split("cifar10", np.concatenate([images for images, _ in train]),
                 np.concatenate([labels for _, labels in train]), test_images, test_labels, classes=10)


def read_cifar10_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch {b"data": N×3072 uint8 (R, G, B planes, row-major), b"labels": N ints} as images and labels.

    The format is Python's pickle, which can run code: read only batches from a source you trust.
    """
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except OSError as err:
        raise DatasetError(f"cannot read CIFAR-10 batch {path!r}: {err.strerror}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path!r} is not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise DatasetError(f"{path!r} is not a CIFAR-10 python batch: data {data.shape} {data.dtype}, "
                           f"labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32) / 255.0, labels
