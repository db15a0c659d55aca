"""Fine-tuning the head of a small transformer encoder with PPRS (paper §5): θ is the head's weights.

An encoder block as in ViT (pre-LayerNorm multi-head self-attention and MLP, each with a residual) over a
sequence of tokens, a final LayerNorm, mean pooling and a two-layer MLP head, with random weights, on m random
sequences with random labels. `from_torch(..., params=<the head's weights>, inputs=sequences)` computes the
encoder once (it does not depend on θ) and makes one node per layer of the head, where each noisy copy carries
its own weights; the loss is the mean cross-entropy over the m sequences.

    python -m pprs_mpi.check examples/torch_transformer.py:build
    mpirun -n 4 python -m pprs_mpi.solve --problem examples/torch_transformer.py:build --out transformer.h5
"""

import torch

import pprs_mpi
from pprs_mpi import Problem


class EncoderBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Encoder(torch.nn.Module):
    def __init__(self, features: int = 6, tokens: int = 5, dim: int = 16, heads: int = 2, classes: int = 3):
        super().__init__()
        self.embed = torch.nn.Linear(features, dim)
        self.position = torch.nn.Parameter(0.1 * torch.randn(tokens, dim))
        self.block = EncoderBlock(dim, heads, 2 * dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, classes))

    def forward(self, x):
        h = self.norm(self.block(self.embed(x) + self.position))
        return self.head(h.mean(dim=1))


HEAD = ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]


def build(examples: int = 8, seed: int = 0) -> Problem:
    """The head of a random encoder fine-tuned on `examples` random sequences with random labels."""
    torch.manual_seed(seed)  # every rank builds the model and the data: seed them
    model = Encoder().eval()
    sequences = torch.randn(examples, 5, 6)
    labels = torch.randint(0, 3, (examples,))

    def loss(logits):  # the (m, classes) logits of one noisy copy's head
        return torch.nn.functional.cross_entropy(logits, labels)

    return pprs_mpi.from_torch(model, loss, params=HEAD, inputs=sequences.numpy(), name="torch_transformer")
