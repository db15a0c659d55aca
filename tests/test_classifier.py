"""The classifier: weights file format, backprop against finite differences, deterministic training, data loaders."""

import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pprs_mpi import classifier, datasets, train
from pprs_mpi.classifier import ClassifierError


def small_network(seed=0, input_shape=(1, 8, 8)):
    return classifier.alexnet(input_shape, 10, np.random.default_rng(seed), channels=(2, 3), hidden=5)


def test_shipped_weights_reach_95_percent_on_the_held_out_split():
    network = classifier.load_network(classifier.default_network_path())
    split = datasets.load_digits()
    assert network.input_shape == (1, 8, 8) and network.classes == 10 and len(network.layers) == 10
    assert len(split.test_labels) == 359 and len(split.train_labels) == 1438
    assert network.accuracy(split.test_images, split.test_labels) >= 0.95


def test_training_is_deterministic_for_a_seed(tmp_path):
    paths = [str(tmp_path / f"run{i}.h5") for i in range(2)]
    for path in paths:
        assert train.main(["--out", path, "--seed", "3", "--epochs", "1", "--quiet"]) == 0
    first, second = (classifier.load_network(p) for p in paths)
    for a, b in zip(first.layers, second.layers):
        assert a.kind == b.kind and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert first.meta == second.meta


def test_full_training_command_reaches_95_percent(tmp_path):
    """The shipped weights' recipe, run in full (about 10 s on one core)."""
    out = str(tmp_path / "digits_cnn.h5")
    assert train.main(["--out", out, "--seed", "0", "--quiet"]) == 0
    assert classifier.load_network(out).meta["held_out_accuracy"] >= 0.95


def test_weights_file_round_trip(tmp_path):
    network, path = small_network(), str(tmp_path / "net.h5")
    network.meta = {"dataset": "digits", "seed": 7}
    classifier.save_network(network, path)
    loaded = classifier.load_network(path)
    assert (loaded.input_shape, loaded.classes, loaded.names, loaded.meta) == \
        (network.input_shape, network.classes, network.names, network.meta)
    x = np.random.default_rng(1).random((4, 1, 8, 8))
    assert np.array_equal(loaded.logits(x), network.logits(x))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "pprs_mpi.classifier" and f.attrs["version"] == 1
        conv = f["layers/00_conv2d"]
        assert conv.attrs["type"] == "conv2d" and list(conv.attrs["padding"]) == [1, 1]
        assert conv["weight"].shape == (2, 1, 3, 3) and f["layers/09_affine/bias"].shape == (10,)


def _corrupt(path, edit):
    with h5py.File(path, "a") as f:
        edit(f)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("format", "other"), "is not a pprs_mpi.classifier weights file"),
    (lambda f: f["layers/01_relu"].attrs.__setitem__("type", "gelu"), "has type 'gelu'"),
    (lambda f: f["layers/00_conv2d"].attrs.__delitem__("stride"), "lacks stride"),
    (lambda f: f.attrs.__setitem__("input_shape", (3, 32, 32)), "does not fit its input"),
    (lambda f: f.attrs.__setitem__("classes", 7), "not to 7 logits"),
    # issue 32: HDF5 would open the file an external link names; a weights file is one a trace may name
    (lambda f: f["layers"].__setitem__("99_other", h5py.ExternalLink(f.filename, "/layers/00_conv2d")),
     "/layers/99_other is an external link"),
    (lambda f: f["layers"].__setitem__("99_other", h5py.SoftLink("/layers/00_conv2d")),
     "a weights file holds no links"),
])
def test_bad_weights_files_give_one_line_errors(tmp_path, edit, message):
    path = str(tmp_path / "net.h5")
    classifier.save_network(small_network(), path)
    _corrupt(path, edit)
    with pytest.raises(ClassifierError, match=message) as err:
        classifier.load_network(path)
    assert "\n" not in str(err.value)


def test_missing_and_non_hdf5_network_files(tmp_path):
    with pytest.raises(ClassifierError, match="does not exist"):
        classifier.load_network(str(tmp_path / "nope.h5"))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ClassifierError, match="cannot read network file"):
        classifier.load_network(str(tmp_path / "text.h5"))


def test_weight_gradients_match_finite_differences():
    network, rng = small_network(seed=2), np.random.default_rng(3)
    images, labels = rng.random((5, 1, 8, 8)), rng.integers(0, 10, 5)
    _, grads = classifier.gradients(network, images, labels)
    for layer, grad in zip(network.layers, grads):
        for key, array in layer.arrays.items():
            for index in [tuple(rng.integers(0, s) for s in array.shape) for _ in range(3)]:
                old, h = array[index], 1e-6
                array[index] = old + h
                up = classifier.softmax_cross_entropy(network.logits(images), labels)[0]
                array[index] = old - h
                down = classifier.softmax_cross_entropy(network.logits(images), labels)[0]
                array[index] = old
                assert grad[key][index] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


def test_digits_split_is_fixed_and_scaled():
    a, b = datasets.load_digits(), datasets.load_digits()
    assert np.array_equal(a.test_labels, b.test_labels) and np.array_equal(a.train_images, b.train_images)
    assert a.input_shape == (1, 8, 8) and a.train_images.min() == 0 and a.train_images.max() == 1
    assert sorted(np.unique(a.test_labels)) == list(range(10))


def test_shipped_digits_are_scikit_learns_bitwise():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed: nothing to "
                                                                       "compare the shipped digits with")
    expected = sklearn_datasets.load_digits()
    images, target = datasets.digits_arrays()
    for shipped, theirs in ((images, expected.images), (target, expected.target)):
        assert shipped.dtype == theirs.dtype and shipped.shape == theirs.shape
        assert shipped.tobytes() == np.ascontiguousarray(theirs).tobytes()


def test_loading_digits_imports_no_scikit_learn():
    code = ("import sys; from pprs_mpi import datasets; datasets.load('digits'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def write_cifar10(folder, rng, n=3):
    """Six python batches of n random images each, in CIFAR-10's exact format; returns them."""
    return [_write_batch(folder / name, rng, n) for name in (*datasets.CIFAR10_TRAIN, datasets.CIFAR10_TEST)]


def _write_batch(path, rng, n):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    with open(path, "wb") as handle:
        pickle.dump({b"batch_label": b"synthetic", b"labels": labels, b"data": data, b"filenames": []}, handle)
    return data, labels


def test_cifar10_loader_reads_the_python_batches(tmp_path):
    *train_batches, (test_data, test_labels) = write_cifar10(tmp_path, np.random.default_rng(0), n=2)
    split = datasets.load("cifar10", str(tmp_path))
    assert split.train_images.shape == (10, 3, 32, 32) and split.test_images.shape == (2, 3, 32, 32)
    assert split.input_shape == (3, 32, 32) and split.classes == 10
    assert list(split.train_labels) == [label for _, labels in train_batches for label in labels]
    assert list(split.test_labels) == test_labels
    image = split.test_images[1]  # row-major planes R, G, B of 32x32
    assert image[0, 0, 0] == test_data[1, 0] / 255 and image[1, 0, 0] == test_data[1, 1024] / 255
    assert image[2, 31, 30] == test_data[1, 3070] / 255
    assert 0 <= split.train_images.min() <= split.train_images.max() <= 1


def test_cifar10_loader_errors_are_one_line(tmp_path):
    with pytest.raises(datasets.DatasetError, match="needs --data-dir"):
        datasets.load("cifar10", "")
    with pytest.raises(datasets.DatasetError, match="cannot read CIFAR-10 batch .*data_batch_1"):
        datasets.load("cifar10", str(tmp_path))
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(datasets.DatasetError, match="is not a CIFAR-10 python batch"):
        datasets.read_cifar10_batch(str(tmp_path / "data_batch_1"))
