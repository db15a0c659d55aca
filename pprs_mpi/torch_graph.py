"""`from_torch`: a PyTorch model and a loss as a pipeline problem, one `TorchOp` node per child module.

Two uses, as in the paper:

- θ is the model's **input** (an adversarial example, an inverse problem): `from_torch(model, loss,
  input_shape=(1, 28, 28))` gives θ → input → child 0 → … → child n−1 → loss;
- θ is the **weights** of chosen parameters (§5 fine-tuning on m examples): `from_torch(model, loss,
  params=["4.weight", "4.bias"], inputs=images)`. The children before the first chosen parameter are
  constant and run once, on `inputs`, when the problem is built; from there on each noisy copy carries its
  own weights (`torch.func.functional_call` under `vmap`), so a node's per-sample value holds all m examples.

`loss(output)` maps the model's output for one noisy copy to a scalar: logits (classes,) when θ is the
input, (m, classes) when θ is the weights; it is applied to every copy with `torch.func.vmap`. Nodes are
balanced over ranks by the floating-point operations torch counts in each child (`--balance measured`
times them instead).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np

from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Reshape, TorchOp
from pprs_mpi.ops.torch_op import _torch
from pprs_mpi.problems import Problem

torch = _torch()


def from_torch(model, loss: Callable, *, input_shape: Sequence[int] | None = None, params: Sequence[str] | None = None,
               inputs=None, x0=None, name: str = "torch", f_star: float | None = None) -> Problem:
    """The problem min over θ of loss(model(...)) with θ the input (`input_shape`) or the weights named in
    `params` on `inputs`; see the module docstring. `model` is an `nn.Sequential` or a list of modules.
    x0 defaults to zeros (input) or the model's current values of `params` (weights)."""
    children = _children(model)
    if (input_shape is None) == (params is None):
        raise ValueError("from_torch: give input_shape (θ is the model's input) or params (θ is those weights)")
    if params is None:
        graph = input_graph(children, loss, tuple(int(s) for s in input_shape))
        start = None
    else:
        graph, start = weights_graph(children, loss, list(params), inputs)
    return Problem(name, graph, start if x0 is None else x0, f_star=f_star)


def input_graph(children: list[tuple[str, object]], loss: Callable, input_shape: tuple[int, ...]) -> Graph:
    """θ (the flattened input) → input (reshaped) → one node per child → loss."""
    nodes = [Node("input", Reshape(input_shape), ("theta",))]
    for child_name, child in children:
        nodes.append(Node(_node_name(child_name, child), TorchOp(child), (nodes[-1].name,)))
    nodes.append(Node("loss", TorchOp(PerCopy(loss), name="loss"), (nodes[-1].name,)))
    return Graph(math.prod(input_shape), nodes)


def weights_graph(children: list[tuple[str, object]], loss: Callable, params: list[str], inputs):
    """(graph, x0) with θ = the named parameters, flattened and laid end to end in the order given."""
    if inputs is None:
        raise ValueError("from_torch: params (θ is the weights) needs inputs, the m examples the model is applied to")
    owned = _owners(children, params)
    first = min(owned)
    with torch.no_grad():  # the frozen children before the first chosen parameter, applied once
        features = torch.as_tensor(np.asarray(inputs), dtype=torch.float64)
        for _, child in children[:first]:
            features = _converted(child)(features)
    offsets, start = {}, 0
    for key in params:
        offsets[key] = (start, tuple(dict(_named_parameters(children))[key].shape))
        start += math.prod(offsets[key][1])
    nodes, parent = [], None
    for index, (child_name, child) in enumerate(children[first:], start=first):
        node = _node_name(child_name, child)
        mine = {key.partition(".")[2]: offsets[key] for key in owned.get(index, [])}
        if mine:
            op = PerCopyWeights(child, mine, features.numpy() if parent is None else None)
            nodes.append(Node(node, TorchOp(op, arity=None, name=type(child).__name__),
                              ("theta",) if parent is None else (parent, "theta")))
        else:
            nodes.append(Node(node, TorchOp(PerExample(child), name=type(child).__name__), (parent,)))
        parent = node
    nodes.append(Node("loss", TorchOp(PerCopy(loss), name="loss"), (parent,)))
    x0 = np.concatenate([dict(_named_parameters(children))[key].detach().double().numpy().ravel() for key in params])
    return Graph(start, nodes), x0


class PerCopy(torch.nn.Module):
    """fn applied to each noisy copy's value on its own (`vmap` over the batch axis)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, batch):
        return torch.func.vmap(self.fn)(batch)


class PerExample(torch.nn.Module):
    """A module applied to (B, m, ...) activations as one batch of B·m examples."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, batch):
        out = self.module(batch.reshape(-1, *batch.shape[2:]))
        return out.reshape(*batch.shape[:2], *out.shape[1:])


class PerCopyWeights(torch.nn.Module):
    """A module whose chosen parameters come from each noisy copy's θ row: (activations, θ) → activations,
    or θ → activations on constant `features` (the first such module)."""

    def __init__(self, module, slices: dict[str, tuple[int, tuple[int, ...]]], features=None):
        super().__init__()
        self.module, self.slices = module, slices
        self.register_buffer("features", None if features is None else torch.as_tensor(features))

    def forward(self, *args):
        theta = args[-1]
        if self.features is None:
            return torch.func.vmap(self._one)(args[0], theta)
        return torch.func.vmap(self._one, in_dims=(None, 0))(self.features, theta)

    def _one(self, activations, theta_row):
        weights = {key: theta_row[start:start + math.prod(shape)].reshape(shape)
                   for key, (start, shape) in self.slices.items()}
        return torch.func.functional_call(self.module, weights, (activations,))


def _children(model) -> list[tuple[str, object]]:
    if isinstance(model, torch.nn.Sequential):
        return list(model.named_children())
    if isinstance(model, (list, tuple)) and all(isinstance(m, torch.nn.Module) for m in model):
        return [(str(i), m) for i, m in enumerate(model)]
    raise TypeError(f"from_torch takes an nn.Sequential or a list of modules, got {type(model).__name__}")


def _named_parameters(children):
    for child_name, child in children:
        for key, value in child.named_parameters():
            yield f"{child_name}.{key}", value


def _owners(children, params: list[str]) -> dict[int, list[str]]:
    """The index of the child owning each chosen parameter (named as in model.named_parameters())."""
    index = {child_name: i for i, (child_name, _) in enumerate(children)}
    known = dict(_named_parameters(children))
    owned: dict[int, list[str]] = {}
    for key in params:
        if key not in known:
            raise ValueError(f"from_torch: the model has no parameter {key!r} (it has: {', '.join(known)})")
        owned.setdefault(index[key.partition(".")[0]], []).append(key)
    if len(set(params)) != len(params):
        raise ValueError("from_torch: a parameter is named twice in params")
    return owned


def _converted(module):
    return copy.deepcopy(module).double().requires_grad_(False)


def _node_name(child_name: str, child) -> str:
    return f"{child_name}_{type(child).__name__}"
