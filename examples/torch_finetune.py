"""Few-shot fine-tuning (paper §5) of a PyTorch model: θ is the weights of its last two layers.

The shipped digits CNN as a `torch.nn.Sequential`; `from_torch(..., params=[...], inputs=images)` runs the
frozen convolutional part once on the m shots and makes one TorchOp node per later layer, where each noisy
copy carries its own weights (`torch.func.functional_call` under `vmap`). The loss is the mean multi-margin
loss over the shots, as in the built-in `fewshot` problem.

    python -m pprs_mpi.solve --problem examples/torch_finetune.py:build --out finetune.h5
    mpirun -n 2 python -m pprs_mpi.solve --problem examples/torch_finetune.py:build --out finetune.h5
"""

import numpy as np
import torch

import pprs_mpi
from pprs_mpi import Problem
from pprs_mpi.problems.fewshot import choose_shots
from pprs_mpi.problems.pretrained import images_for, pretrained

HEAD = ["7.weight", "7.bias", "9.weight", "9.bias"]  # the last two Linear layers of Network.to_torch()


def build(shots: int = 10, problem_seed: int = 0, init_noise: float = 1.0) -> Problem:
    net = pretrained("", "digits")
    split = images_for(net, "digits", "")
    rng = np.random.default_rng(problem_seed)  # every rank builds the problem: seed it
    chosen = choose_shots(split.train_labels, shots, net.classes, rng)
    labels = torch.as_tensor(split.train_labels[chosen])[:, None]

    def loss(logits):  # mean over the shots of Σ_{i≠y} max(0, 1 − x_y + x_i), as the built-in fewshot's
        return ((1 - logits.gather(1, labels.to(logits.device)) + logits).clamp(min=0).sum(1) - 1).mean()

    head = pprs_mpi.from_torch(net.to_torch(), loss, params=HEAD, inputs=split.train_images[chosen])
    # the start: the pretrained head, each layer perturbed by init_noise × the std of its weights
    x0 = np.concatenate([array.ravel() + init_noise * np.std(layer.arrays["weight"]) * rng.standard_normal(array.size)
                         for layer in (net.layers[-3], net.layers[-1])
                         for array in (layer.arrays["weight"], layer.arrays["bias"])])
    return Problem("torch_finetune", head.graph, x0)
