"""The README's PyTorch example: a small torch MLP whose input θ is optimised, as a pipeline of TorchOp nodes.

    python -m pprs_mpi.solve --problem examples/torch_quickstart.py:build --out mlp.h5
    mpirun -n 2 python -m pprs_mpi.solve --problem examples/torch_quickstart.py:build --out mlp.h5
"""

import torch

import pprs_mpi
from pprs_mpi import Problem


def build(width: int = 16) -> Problem:
    torch.manual_seed(0)  # every rank builds the model: seed it
    model = torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    target = torch.tensor([1.0, -1.0, 0.5, 0.0])
    return pprs_mpi.from_torch(model, lambda out: (out - target.to(out)).abs().sum(), input_shape=(width,))
