"""A user's own PyTorch model for tests/test_torch_trace.py, never seen by `from_torch` before: residual blocks
(LayerNorm, Linear, GELU) in a ModuleList, a long skip around them, a classifier head; not an nn.Sequential.

    tests/resmlp.py:attack     θ = the model's input (the loss: a margin towards class 0)
    tests/resmlp.py:finetune   θ = the last block's second layer and the head, on m examples (cross-entropy)
"""

import torch

import pprs_mpi
from pprs_mpi import Problem


class Projection(torch.nn.Module):
    """x @ W, as a user writes it (with a long row, this product's last bits depend on torch's thread count)."""

    def __init__(self, features, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(features, width) / features**0.5)

    def forward(self, x):
        return x @ self.weight


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.fc1, self.fc2 = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class ResMLP(torch.nn.Module):
    def __init__(self, features=2048, width=48, depth=3, classes=5):
        super().__init__()
        self.embed = Projection(features, width)
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x):
        h = skip = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h + skip))


def model(seed: int = 0) -> ResMLP:
    torch.manual_seed(seed)  # every rank builds the model: seed it
    return ResMLP()


def attack(nodes: int = 0, split: str = "") -> Problem:
    """θ = the input; `nodes` > 0 groups the parts into that many nodes, `split` names split points (a,b)."""
    return pprs_mpi.from_torch(model(), lambda out: (1 - out[0] + out).clamp(min=0).sum(), input_shape=(2048,),
                               **_grouping(nodes, split))


def finetune(nodes: int = 0, split: str = "", examples: int = 6) -> Problem:
    """θ = the weights of blocks.2.fc2 and the head, on `examples` random inputs with random labels."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(examples, 2048, generator=generator)
    labels = torch.randint(0, 5, (examples,), generator=generator)
    return pprs_mpi.from_torch(model(), lambda out: torch.nn.functional.cross_entropy(out, labels),
                               params=["blocks.2.fc2.weight", "blocks.2.fc2.bias", "head.weight", "head.bias"],
                               inputs=inputs.numpy(), **_grouping(nodes, split))


def _grouping(nodes: int, split: str) -> dict:
    return {"nodes": nodes} if nodes else {"split": split.split(",")} if split else {}
