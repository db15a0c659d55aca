"""A small AlexNet-style image classifier made of the node library's ops: definition, weights file, training.

`Layer.op()` is the one builder of the ops: training runs them, and the paper's problems chain them into
graphs, so the network that is attacked or fine-tuned is exactly the network that was trained.

Weights file (HDF5), version 1
------------------------------
- root attributes: ``format = "pprs_mpi.classifier"``, ``version = 1``, ``input_shape`` = (C, H, W) of
  images scaled to [0, 1], ``classes`` = number of logits. Any other root attribute (the shipped file has
  ``dataset``, ``seed``, ``epochs``, ``batch_size``, ``lr``, ``held_out_accuracy``) is provenance, kept
  in `Network.meta`.
- group ``layers``: one subgroup per layer, applied in sorted name order (``00_conv2d``, ``01_relu``, …),
  each with the attribute ``type`` and, by type:

  ``conv2d``     datasets ``weight`` (F, C, kh, kw), ``bias`` (F,); attributes ``stride``, ``padding`` (2 ints)
  ``maxpool2d``  attributes ``kernel``, ``stride`` (2 ints)
  ``affine``     datasets ``weight`` (out, in), ``bias`` (out,)
  ``relu``, ``flatten``  nothing else

The layers map images (N, *input_shape) to logits (N, classes): conv2d is a cross-correlation with zero
padding, maxpool2d has no padding, affine computes x @ weight.T + bias.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass, field

import h5py
import numpy as np

from pprs_mpi.ops import Affine, Conv2d, Flatten, MaxPool2d, ReLU
from pprs_mpi.ops.base import Op
from pprs_mpi.trace_schema import check_links

FORMAT, VERSION = "pprs_mpi.classifier", 1
#: For each layer type: the datasets and the attributes its group must hold.
SCHEMA = {
    "conv2d": (("weight", "bias"), ("stride", "padding")),
    "maxpool2d": ((), ("kernel", "stride")),
    "relu": ((), ()),
    "flatten": ((), ()),
    "affine": (("weight", "bias"), ()),
}
#: Training defaults that reach >= 95 % held-out accuracy on digits in a few seconds.
EPOCHS, BATCH_SIZE, LEARNING_RATE = 20, 32, 2e-3


class ClassifierError(ValueError):
    """A network or weights file that cannot be used; the message is one line."""


@dataclass
class Layer:
    """One layer: its type (a key of SCHEMA), its weight arrays and its integer hyper-parameters."""

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, tuple[int, int]] = field(default_factory=dict)

    def op(self) -> Op:
        a, k = self.arrays, self.attrs
        if self.kind == "conv2d":
            return Conv2d(a["weight"], a["bias"], k["stride"], k["padding"])
        if self.kind == "maxpool2d":
            return MaxPool2d(k["kernel"], k["stride"])
        if self.kind == "affine":
            return Affine(a["weight"], a["bias"])
        return {"relu": ReLU, "flatten": Flatten}[self.kind]()


@dataclass
class Network:
    """Layers applied in turn to images of `input_shape`, ending in `classes` logits (checked on creation)."""

    input_shape: tuple[int, ...]
    classes: int
    layers: list[Layer]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.input_shape, self.classes = tuple(int(s) for s in self.input_shape), int(self.classes)
        shape = self.input_shape
        for name, layer in zip(self.names, self.layers):
            try:
                op = layer.op()
                shape = tuple(op.output_shape(shape))
            except ValueError as err:
                raise ClassifierError(f"layer {name!r} does not fit its input {shape}: {err}") from None
        if shape != (self.classes,):
            raise ClassifierError(f"the network maps {self.input_shape} to {shape}, not to {self.classes} logits")

    @property
    def names(self) -> list[str]:
        return [f"{i:02d}_{layer.kind}" for i, layer in enumerate(self.layers)]

    def ops(self) -> list[Op]:
        return [layer.op() for layer in self.layers]

    def to_torch(self):
        """The same network as a `torch.nn.Sequential` (float64, eval mode) holding these weights, one child per
        layer: what a PyTorch user would have written (needs torch)."""
        import torch
        layers = []
        for layer in self.layers:
            a, k = layer.arrays, layer.attrs
            if layer.kind == "conv2d":
                module = torch.nn.Conv2d(a["weight"].shape[1], a["weight"].shape[0], a["weight"].shape[2:],
                                         stride=k["stride"], padding=k["padding"])
            elif layer.kind == "affine":
                module = torch.nn.Linear(a["weight"].shape[1], a["weight"].shape[0])
            elif layer.kind == "maxpool2d":
                module = torch.nn.MaxPool2d(k["kernel"], k["stride"])
            else:
                module = {"relu": torch.nn.ReLU, "flatten": torch.nn.Flatten}[layer.kind]()
            for name, array in a.items():
                setattr(module, name, torch.nn.Parameter(torch.as_tensor(array, dtype=torch.float64)))
            layers.append(module)
        return torch.nn.Sequential(*layers).double().eval()

    def logits(self, images: np.ndarray) -> np.ndarray:
        return apply(self.ops(), images)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.logits(images).argmax(axis=1) == labels))


def apply(ops: list[Op], x: np.ndarray, chunk: int = 512) -> np.ndarray:
    """The ops applied in turn to a batch x (N, ...), `chunk` examples at a time to bound memory."""
    outputs = []
    for start in range(0, len(x), chunk):
        h = x[start:start + chunk]
        for op in ops:
            h = op.forward(np, h)
        outputs.append(h)
    return np.concatenate(outputs)


def alexnet(input_shape, classes: int, rng: np.random.Generator, channels=(16, 32), hidden: int = 64) -> Network:
    """[conv 3x3 (padding 1) → ReLU → max-pool 2x2] per entry of `channels`, then flatten → affine → ReLU → affine.

    He-initialised weights, zero biases. On 1x8x8 digits with the defaults: 10 layers, 128 features.
    """
    layers, (c, h, w) = [], input_shape
    for f in channels:
        layers += [Layer("conv2d", _he(rng, (f, c, 3, 3)), {"stride": (1, 1), "padding": (1, 1)}),
                   Layer("relu"), Layer("maxpool2d", attrs={"kernel": (2, 2), "stride": (2, 2)})]
        c, h, w = f, h // 2, w // 2
    layers += [Layer("flatten"), Layer("affine", _he(rng, (hidden, c * h * w))), Layer("relu"),
               Layer("affine", _he(rng, (classes, hidden)))]
    return Network(input_shape, classes, layers)


def _he(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    fan_in = math.prod(shape[1:])
    return {"weight": rng.standard_normal(shape) * math.sqrt(2.0 / fan_in), "bias": np.zeros(shape[0])}


def default_network_path() -> str:
    """The shipped weights: `alexnet` trained on digits by `python -m pprs_mpi.train --seed 0`."""
    return str(importlib.resources.files("pprs_mpi") / "data" / "digits_cnn.h5")


def save_network(network: Network, path: str) -> None:
    with h5py.File(path, "w") as f:
        f.attrs.update(network.meta)
        f.attrs.update(format=FORMAT, version=VERSION, input_shape=network.input_shape, classes=network.classes)
        layers = f.create_group("layers")
        for name, layer in zip(network.names, network.layers):
            group = layers.create_group(name)
            group.attrs["type"] = layer.kind
            for key, array in layer.arrays.items():
                group.create_dataset(key, data=array)
            group.attrs.update({key: np.asarray(value, dtype=np.int64) for key, value in layer.attrs.items()})


def load_network(path: str) -> Network:
    """A network from a weights file in the format above; ClassifierError (one line) if it is not one."""
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise ClassifierError(f"network file {path!r} does not exist") from None
    except OSError as err:
        raise ClassifierError(f"cannot read network file {path!r}: {str(err).splitlines()[0]}") from None
    with handle as f:
        try:  # an external link would make HDF5 open another file, named by whoever wrote this one
            check_links(f, "a weights file")
        except ValueError as err:
            raise ClassifierError(f"{path!r}: {err}") from None
        if f.attrs.get("format") != FORMAT or "layers" not in f:
            raise ClassifierError(f"{path!r} is not a {FORMAT} weights file (root attribute format is "
                                  f"{f.attrs.get('format')!r})")
        if int(f.attrs.get("version", 0)) > VERSION:
            raise ClassifierError(f"{path!r} has format version {f.attrs['version']}; this package reads {VERSION}")
        try:
            input_shape, classes = tuple(int(s) for s in f.attrs["input_shape"]), int(f.attrs["classes"])
        except (KeyError, TypeError, ValueError):
            raise ClassifierError(f"{path!r}: root attributes input_shape (C, H, W) and classes are required") from None
        layers = [_read_layer(path, name, group) for name, group in sorted(f["layers"].items())]
        meta = {k: _python(v) for k, v in f.attrs.items() if k not in ("format", "version", "input_shape", "classes")}
    try:
        return Network(input_shape, classes, layers, meta)
    except ClassifierError as err:
        raise ClassifierError(f"{path!r}: {err}") from None


def _read_layer(path: str, name: str, group) -> Layer:
    kind = _python(group.attrs.get("type"))
    if kind not in SCHEMA:
        raise ClassifierError(f"{path!r}: layer {name!r} has type {kind!r}; known types: {', '.join(SCHEMA)}")
    datasets, attrs = SCHEMA[kind]
    missing = [d for d in datasets if not isinstance(group.get(d), h5py.Dataset)] + \
              [a for a in attrs if a not in group.attrs]
    if missing:
        raise ClassifierError(f"{path!r}: {kind} layer {name!r} lacks {', '.join(missing)}")
    return Layer(kind, {d: np.asarray(group[d][()], dtype=np.float64) for d in datasets},
                 {a: tuple(int(v) for v in np.broadcast_to(group.attrs[a], (2,))) for a in attrs})


def _python(value):
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


# Training ---------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over the batch of −log softmax(logits)[label], and its gradient w.r.t. the logits (N, classes)."""
    rows = np.arange(len(labels))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    grad = np.exp(log_p)
    grad[rows, labels] -= 1
    return float(-log_p[rows, labels].mean()), grad / len(labels)


def gradients(network: Network, images: np.ndarray, labels: np.ndarray) -> tuple[float, list[dict]]:
    """Softmax cross-entropy on a batch and its gradient w.r.t. every layer's arrays, by backprop over the ops."""
    ops = network.ops()
    activations = [images]
    for op in ops:
        activations.append(op.forward(np, activations[-1]))
    loss, cotangent = softmax_cross_entropy(activations[-1], labels)
    grads = []
    for i in reversed(range(len(ops))):
        grads.append(_weight_gradients(network.layers[i], activations[i], cotangent))
        if i:
            cotangent = ops[i].vjp(np, [activations[i]], activations[i + 1], cotangent)[0]
    return loss, grads[::-1]


def _weight_gradients(layer: Layer, x: np.ndarray, cotangent: np.ndarray) -> dict[str, np.ndarray]:
    """Gradient w.r.t. the layer's arrays for input x and output cotangent (the ops only give the input's)."""
    if layer.kind == "affine":
        return {"weight": cotangent.T @ x, "bias": cotangent.sum(axis=0)}
    if layer.kind != "conv2d":
        return {}
    if layer.attrs["stride"] != (1, 1):
        raise ClassifierError(f"training supports stride-1 convolutions only, got stride {layer.attrs['stride']}")
    # dL/dW[f, c] = Σ_b x[b, c] ⋆ cotangent[b, f] is itself a cross-correlation: Conv2d computes it with the
    # batch and channel axes swapped, the cotangent acting as F filters over B channels.
    filters = cotangent.transpose(1, 0, 2, 3)
    dw = Conv2d(filters, padding=layer.attrs["padding"]).forward(np, x.transpose(1, 0, 2, 3))
    return {"weight": dw.transpose(1, 0, 2, 3), "bias": cotangent.sum(axis=(0, 2, 3))}


class Adam:
    """Adam (Kingma & Ba) updating a fixed list of arrays in place."""

    def __init__(self, params: list[np.ndarray], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        (b1, b2), self.t = self.betas, self.t + 1
        scale = self.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m += (1 - b1) * (g - m)
            v += (1 - b2) * (g * g - v)
            p -= scale * m / (np.sqrt(v) + self.eps)


def train(split, seed: int = 0, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float = LEARNING_RATE,
          log=None) -> Network:
    """`alexnet` trained with Adam on softmax cross-entropy over `split`'s training images.

    Deterministic for a seed: the seed fixes the initial weights and every epoch's shuffle. `log(epoch, loss,
    held_out_accuracy)` is called after each epoch when given.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ClassifierError(f"need epochs >= 0, batch size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    rng = np.random.default_rng(seed)
    network = alexnet(split.input_shape, split.classes, rng)
    adam = Adam([array for layer in network.layers for array in layer.arrays.values()], lr)
    n = len(split.train_labels)
    for epoch in range(epochs):
        order, losses = rng.permutation(n), []
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            loss, grads = gradients(network, split.train_images[batch], split.train_labels[batch])
            adam.step([g[key] for layer, g in zip(network.layers, grads) for key in layer.arrays])
            losses.append(loss)
        if log is not None:
            log(epoch + 1, float(np.mean(losses)), network.accuracy(split.test_images, split.test_labels))
    network.meta = {"dataset": split.name, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "held_out_accuracy": network.accuracy(split.test_images, split.test_labels)}
    return network
