"""PPRS attacks a ResNet (paper eq. 17 on a model with skip connections): θ is the image.

    min over x̃   Σ_{i≠y} max(0, 1 − f(x̃)_y + f(x̃)_i) + λ ‖x̃ − x‖∞

A small ResNet written as torchvision writes resnet18 (BasicBlocks of two 3×3 convolutions with BatchNorm, a
shortcut that is the identity or a strided 1×1 convolution, global average pooling, a linear classifier), with
random weights and random BatchNorm statistics (in eval mode), on a random image. `from_torch` traces it and
makes one node per top-level layer and block (the shortcuts are edges), or `nodes` nodes balanced by their
floating-point operations; the ‖x̃ − x‖∞ term is pprs_mpi's own op, joined by an Add node.

    python -m pprs_mpi.check examples/torch_resnet.py:build
    mpirun -n 4 python -m pprs_mpi.solve --problem examples/torch_resnet.py:build --out resnet.h5
"""

import numpy as np
import torch

import pprs_mpi
from pprs_mpi import Graph, Node, Problem
from pprs_mpi.ops import Add, LInfDistance


class BasicBlock(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int = 1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(outputs)
        self.conv2 = torch.nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(outputs)
        self.downsample = None if stride == 1 and inputs == outputs else torch.nn.Sequential(
            torch.nn.Conv2d(inputs, outputs, 1, stride, bias=False), torch.nn.BatchNorm2d(outputs))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(torch.nn.Module):
    def __init__(self, widths=(8, 16), blocks=2, classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(widths[0])
        self.relu = torch.nn.ReLU()
        layers, inputs = [], widths[0]
        for i, width in enumerate(widths):
            layers.append(torch.nn.Sequential(*(BasicBlock(inputs if b == 0 else width, width, 2 if i and not b else 1)
                                                for b in range(blocks))))
            inputs = width
        self.layers = torch.nn.Sequential(*layers)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)  # every rank builds the model: seed it
    model = ResNet()
    for module in model.modules():  # random statistics, so that BatchNorm is not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()  # BatchNorm with its running statistics: each image on its own


def build(size: int = 12, target: int = 3, lam: float = 10.0, nodes: int = 0, seed: int = 0) -> Problem:
    """The attack on a random size × size image towards class `target`; `nodes` > 0 groups the layers."""
    image = np.random.default_rng(seed).uniform(0, 1, (3, size, size))

    def margin(logits):  # Σ_{i≠y} max(0, 1 − x_y + x_i); the term i = y is max(0, 1) = 1
        return (1 - logits[target] + logits).clamp(min=0).sum() - 1

    model = pprs_mpi.from_torch(resnet(seed), margin, input_shape=image.shape, nodes=nodes or None).graph
    graph = Graph(model.dim, [*model.nodes.values(), Node("linf", LInfDistance(image.ravel(), weight=lam), ("theta",)),
                              Node("objective", Add(), ("loss", "linf"))])
    return Problem("torch_resnet", graph, x0=image.ravel().copy())
