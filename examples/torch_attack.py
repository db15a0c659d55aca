"""The paper's adversarial attack (eq. 17) with the network as PyTorch modules: θ is the image.

    min over x̃   Σ_{i≠y} max(0, 1 − f(x̃)_y + f(x̃)_i) + λ ‖x̃ − x‖∞

The shipped digits CNN as a `torch.nn.Sequential` (`Network.to_torch`, the shipped weights), one TorchOp
node per layer (`from_torch`), a torch multi-margin loss towards the target class, and the ‖x̃ − x‖∞ term
from pprs_mpi's own ops joined by an Add node: the same graph as the built-in `adversarial` problem.

    python -m pprs_mpi.solve --problem examples/torch_attack.py:build --out attack.h5
    mpirun -n 3 python -m pprs_mpi.solve --problem examples/torch_attack.py:build --out attack.h5
"""


import pprs_mpi
from pprs_mpi import Graph, Node, Problem
from pprs_mpi.ops import Add, LInfDistance
from pprs_mpi.problems.pretrained import images_for, pretrained


def build(image_index: int = 0, lam: float = 300.0) -> Problem:
    net = pretrained("", "digits")
    split = images_for(net, "digits", "")
    image, label = split.test_images[image_index], int(split.test_labels[image_index])
    target = (label + 1) % net.classes

    def margin(logits):  # Σ_{i≠y} max(0, 1 − x_y + x_i); the term i = y is max(0, 1) = 1
        return (1 - logits[target] + logits).clamp(min=0).sum() - 1

    chain = pprs_mpi.from_torch(net.to_torch(), margin, input_shape=net.input_shape).graph
    graph = Graph(chain.dim, [*chain.nodes.values(),
                              Node("linf", LInfDistance(image.ravel(), weight=lam), ("theta",)),
                              Node("objective", Add(), ("loss", "linf"))])
    return Problem("torch_attack", graph, x0=image.ravel().copy())
