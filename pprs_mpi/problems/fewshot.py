"""Few-shot fine-tuning (paper §5, a finite sum over m examples): retrain a pretrained classifier's head.

Everything before the last two affine layers (the convolutional feature extractor) is frozen, and
the features of m training images (the shots) become constants; θ holds those two layers laid out as
[W1 row-major, b1, W2 row-major, b2]. The graph is θ → Slice(W1, b1) → ParamAffine(features) → ReLU →
ParamAffineInput ← Slice(W2, b2) ← θ, then MultiMarginMean over the m labels: the root has two children, Δ = 5.

The start x0 is the pretrained head perturbed by Gaussian noise, each layer's entries (weights and
biases) with standard deviation `init_noise` × the std of that layer's pretrained weights; with
init_noise = 0 the start is the pretrained head itself (whose loss on the shots is usually 0 already).
"""

from __future__ import annotations

import numpy as np

from pprs_mpi import classifier
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import MultiMarginMean, ParamAffine, ParamAffineInput, ReLU, Slice
from pprs_mpi.problems import Parameter, Problem, ProblemSpec
from pprs_mpi.problems.pretrained import PRETRAINED, images_for, pretrained

PARAMETERS = {
    "shots": Parameter(int, 10, "fewshot: number m of training images, taken from each class in turn"),
    "problem_seed": Parameter(int, 0, "seed of the problem's random data (planted: layers and θ*; fewshot: shots "
                                      "and start)"),
    "init_noise": Parameter(float, 1.0, "fewshot: std of the start's perturbation, relative to each layer's weights"),
    **PRETRAINED,
}
HEAD = ("affine", "relu", "affine")


def fewshot(shots: int, problem_seed: int, init_noise: float, network: str, dataset: str, data_dir: str) -> Problem:
    net = pretrained(network, dataset)
    if tuple(layer.kind for layer in net.layers[-3:]) != HEAD:
        raise ValueError(f"fewshot fine-tunes a network ending in {' → '.join(HEAD)}; this one ends in "
                         f"{' → '.join(layer.kind for layer in net.layers[-3:])}")
    if not 0 <= init_noise < np.inf:
        raise ValueError(f"init-noise must be finite and >= 0, got {init_noise}")
    split = images_for(net, dataset, data_dir)
    rng = np.random.default_rng(problem_seed)
    chosen = choose_shots(split.train_labels, shots, net.classes, rng)
    extractor = net.ops()[:-3]
    graph = head_graph(classifier.apply(extractor, split.train_images[chosen]), split.train_labels[chosen], net)
    held_out = head_graph(classifier.apply(extractor, split.test_images), split.test_labels, net)
    layers = (net.layers[-3], net.layers[-1])
    x0 = np.concatenate([array.ravel() + init_noise * np.std(layer.arrays["weight"]) * rng.standard_normal(array.size)
                         for layer in layers for array in (layer.arrays["weight"], layer.arrays["bias"])])

    def describe_point(theta: np.ndarray) -> dict:
        return {"shot_accuracy": _accuracy(graph, theta), "held_out_accuracy": _accuracy(held_out, theta)}

    return Problem("fewshot", graph, x0, describe_point=describe_point)


def choose_shots(labels: np.ndarray, shots: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """`shots` training indices taken from class 0, 1, …, classes − 1, 0, … in turn, at random within a class."""
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(classes)]
    most = classes * min(len(pool) for pool in pools)
    if not 1 <= shots <= most:
        raise ValueError(f"shots must be in [1, {most}] (taken from each of the {classes} classes in turn), "
                         f"got {shots}")
    return np.array([pools[i % classes][i // classes] for i in range(shots)])


def head_graph(features: np.ndarray, labels: np.ndarray, net: classifier.Network) -> Graph:
    """The network's last two affine layers, weights read from θ, on constant features (m, n), with their labels."""
    hidden = net.layers[-3].arrays["weight"].shape[0]
    n1, n2 = hidden * (features.shape[1] + 1), net.classes * (hidden + 1)
    return Graph(n1 + n2, [
        Node("w1", Slice(0, n1), ("theta",)),
        Node("w2", Slice(n1, n1 + n2), ("theta",)),
        Node("hidden", ParamAffine(features, hidden), ("w1",)),
        Node("relu", ReLU(), ("hidden",)),
        Node("logits", ParamAffineInput(net.classes), ("relu", "w2")),
        Node("loss", MultiMarginMean(labels), ("logits",)),
    ])


def _accuracy(graph: Graph, theta: np.ndarray) -> float:
    """Fraction of the graph's examples whose logits at θ pick their label."""
    values = {graph.root: np.asarray(theta)[None]}
    for name in graph.order:
        values[name] = graph.op(name).forward(np, *(values[p] for p in graph.parents(name)))
    return float(np.mean(values["logits"][0].argmax(axis=1) == graph.op("loss").targets))


PROBLEMS = {
    "fewshot": ProblemSpec(fewshot, PARAMETERS,
                           "fine-tune a pretrained CNN's last two layers on m shots, multi-margin loss (paper §5)"),
}
