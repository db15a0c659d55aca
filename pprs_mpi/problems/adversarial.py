"""The paper's experiment (§6, eq. 17): a targeted adversarial example against a pretrained classifier.

    min over x̃   Σ_{i≠y} max(0, 1 − f(x̃)_y + f(x̃)_i) + λ ‖x̃ − x‖∞

θ = x̃ is the flattened image, started at the clean held-out image x; y is the target class. The graph
is θ → Reshape → one node per network layer → MultiMargin(y), and θ → LInfDistance(x, λ); an Add node
joins the two, so Δ = network layers + 3 and the root and the leaf both have two neighbours.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi import classifier
from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Add, LInfDistance, MultiMargin, Reshape
from pprs_mpi.problems import Parameter, Problem, ProblemSpec
from pprs_mpi.problems.pretrained import PRETRAINED, images_for, pretrained

PARAMETERS = {
    "image_index": Parameter(int, 0, "adversarial: index of the attacked image in the held-out split"),
    "target": Parameter(int, -1, "adversarial: target class y; -1 = (true label + 1) mod classes"),
    "lam": Parameter(float, 300.0, "adversarial: weight λ of the l∞ distance to the clean image"),
    **PRETRAINED,
}


def adversarial(image_index: int, target: int, lam: float, network: str, dataset: str, data_dir: str) -> Problem:
    net = pretrained(network, dataset)
    if not -1 <= target < net.classes:
        raise ValueError(f"target must be a class in [0, {net.classes}) or -1, got {target}")
    if not 0 <= lam < np.inf:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    split = images_for(net, dataset, data_dir)
    n_images = len(split.test_labels)
    if not 0 <= image_index < n_images:
        raise ValueError(f"image-index must be in [0, {n_images}) (the held-out split of {dataset}), got {image_index}")
    label = int(split.test_labels[image_index])
    target = (label + 1) % net.classes if target == -1 else target
    if target == label:
        raise ValueError(f"target {target} is the true class of held-out image {image_index}: choose another one")
    image = split.test_images[image_index]
    clean = image.ravel()

    def describe_point(theta: np.ndarray) -> dict:
        predicted = int(net.logits(np.reshape(theta, (1, *net.input_shape))).argmax())
        return {"attack_success": predicted == target, "linf_distance": float(np.abs(theta - clean).max()),
                "predicted_class": predicted, "target": target}

    return Problem("adversarial", attack_graph(net, image, target, lam), clean.copy(), describe_point=describe_point)


def attack_graph(net: classifier.Network, image: np.ndarray, target: int, lam: float) -> Graph:
    """Eq. (17) as a graph over θ = the flattened image (see the module docstring)."""
    names = net.names
    layers = [Node(name, op, (parent,)) for name, op, parent in zip(names, net.ops(), ["image", *names[:-1]])]
    return Graph(image.size, [
        Node("image", Reshape(net.input_shape), ("theta",)),
        *layers,
        Node("margin", MultiMargin(target), (names[-1],)),
        Node("linf", LInfDistance(image.ravel(), weight=lam), ("theta",)),
        Node("objective", Add(), ("margin", "linf")),
    ])


PROBLEMS = {
    "adversarial": ProblemSpec(adversarial, PARAMETERS,
                               "targeted attack on a pretrained CNN, multi-margin + λ‖x̃ − x‖∞ (paper eq. 17)"),
}
