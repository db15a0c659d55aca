"""`from_torch`: a PyTorch model and a loss as a pipeline problem: the model traced by `torch.fx` and cut into
`TorchOp` nodes at module boundaries (`pprs_mpi.torch_trace`), then a loss node.

Two uses, as in the paper:

- θ is the model's **input** (an adversarial example, an inverse problem): `from_torch(model, loss,
  input_shape=(1, 28, 28))` gives θ → input → the model's parts → loss;
- θ is the **weights** of chosen parameters (§5 fine-tuning on m examples): `from_torch(model, loss,
  params=["head.weight", "head.bias"], inputs=images)`. What does not depend on them (the frozen layers
  before them) is computed once, on `inputs`, when the problem is built; from there on each noisy copy
  carries its own weights (`torch.func.functional_call` under `vmap`), so a node's per-sample value holds
  all m examples.

Any model `torch.fx` can trace: skip connections and values used by several later parts are edges of the
DAG. By default there is one node per top-level child or block (the children of containers); `split=[...]`
names the submodules where nodes start (torch pipelining's `split_spec`), `nodes=N` groups the parts into N
nodes balanced by the floating-point operations torch counts in them, and `nodes=1` runs the model as one
node without tracing it (the way out for a model the tracer cannot go through). The user's model is never
changed: the nodes compute with copies.

`loss(output)` maps the model's output for one noisy copy to a scalar: the output for one input when θ is
the input, the (m, ...) outputs when θ is the weights; it is applied to every copy with `torch.func.vmap`.
Nodes are balanced over ranks by the floating-point operations torch counts in each (`--balance measured`
times them instead).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np

from pprs_mpi.graph import Graph, Node
from pprs_mpi.ops import Reshape, TorchOp
from pprs_mpi.ops.torch_op import _torch
from pprs_mpi.problems import Problem

torch = _torch()

# A loss of ops without a batching rule (multi_margin_loss) runs under vmap's per-copy loop, which is what it
# needs; torch would say so on every rank at every first call.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")


def from_torch(model, loss: Callable, *, input_shape: Sequence[int] | None = None, params: Sequence[str] | None = None,
               inputs=None, x0=None, name: str = "torch", f_star: float | None = None,
               split: Sequence[str] | None = None, nodes: int | None = None) -> Problem:
    """The problem min over θ of loss(model(...)) with θ the input (`input_shape`) or the weights named in
    `params` on `inputs`; `split` (submodule names where nodes start) or `nodes` (how many) choose the nodes.
    See the module docstring. x0 defaults to zeros (input) or the model's current values of `params` (weights)."""
    model = _module(model)
    if (input_shape is None) == (params is None):
        raise ValueError("from_torch: give input_shape (θ is the model's input) or params (θ is those weights)")
    if split is not None and nodes is not None:
        raise ValueError("from_torch: give split (where nodes start) or nodes (how many), not both")
    if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1):
        raise ValueError(f"from_torch: nodes must be an integer >= 1, got {nodes!r}")
    if isinstance(split, str):
        split = [split]
    if params is None:
        shape = tuple(int(s) for s in input_shape)
        graph = _graph(model, loss, shape, None, torch.zeros((1, *shape), dtype=torch.float64), split, nodes)
        return Problem(name, graph, x0, f_star=f_star)
    params = list(params)
    known = dict(model.named_parameters())
    for key in params:
        if key not in known:
            shown = ", ".join(list(known)[:12]) + (", ..." if len(known) > 12 else "")
            raise ValueError(f"from_torch: {type(model).__name__} has no parameter {key!r} (it has: {shown})")
    if len(set(params)) != len(params):
        raise ValueError("from_torch: a parameter is named twice in params")
    if inputs is None:
        raise ValueError("from_torch: params (θ is the weights) needs inputs, the m examples the model is applied to")
    examples = torch.as_tensor(np.asarray(inputs))
    if examples.is_floating_point():
        examples = examples.double()
    layout, start = {}, 0
    for key in params:
        layout[key] = (start, tuple(known[key].shape))
        start += math.prod(layout[key][1])
    graph = _graph(model, loss, None, layout, examples, split, nodes)
    start_point = np.concatenate([known[key].detach().double().numpy().ravel() for key in params])
    return Problem(name, graph, start_point if x0 is None else x0, f_star=f_star)


def _graph(model, loss, input_shape, layout, probe, split, count) -> Graph:
    """input (θ = the input) → the model's parts → loss, or the parts fed θ's slices (θ = the weights)."""
    input_mode = layout is None
    dim = math.prod(input_shape) if input_mode else sum(math.prod(shape) for _, shape in layout.values())
    first = [Node("input", Reshape(input_shape), ("theta",))] if input_mode else []
    if count == 1:  # the model as it is, untraced
        if input_mode:
            body, parent = TorchOp(model, name=type(model).__name__), "input"
        else:
            slices = {f"model.{key}": value for key, value in layout.items()}
            part = Part(Fixed(model, probe), [], False, slices, True)
            body, parent = TorchOp(part, name=type(model).__name__), "theta"
        last = type(model).__name__
        return Graph(dim, [*first, Node(last, body, (parent,)),
                           Node("loss", TorchOp(PerCopy(loss), name="loss"), (last,))])
    from pprs_mpi.torch_trace import segment_module, trace

    traced = trace(model, probe, input_mode=input_mode, params=list(layout or ()), split=split, nodes=count)
    submodules = dict(traced.module.named_modules())
    names, producer, made = [], {}, list(first)
    for index, segment in enumerate(traced.segments):
        kinds = [type(submodules[unit]).__name__ for unit in segment.units]
        label = (f"{segment.units[0]}_{kinds[0]}" if len(kinds) == 1 else
                 f"{segment.units[0]}..{segment.units[-1]}" if kinds else segment.nodes[0].name)
        names.append(label if label not in names else f"{label}#{index}")
        parents, takes = _inputs(traced, segment, names, producer)
        mine = set(segment.nodes)
        slices = {key: layout[key] for key, users in traced.chosen.items()
                  if any(u in mine or (u.op == "get_attr" and not mine.isdisjoint(u.users)) for u in users)}
        if slices:
            parents.append("theta")
        for position, value in enumerate(segment.outputs):
            producer[value] = (index, position)
        (node,) = segment.nodes if len(segment.nodes) == 1 else (None,)
        if input_mode and node is not None and node.op == "call_module" and node.args == (segment.inputs[0],) \
                and not node.kwargs and takes == [(0, None, traced.shapes[segment.inputs[0]])]:
            fn = submodules[node.target]  # a unit on the value before it: called as it is, without a wrapper
        else:
            fn = Part(segment_module(traced, segment), takes, len(segment.outputs) > 1, slices, not input_mode)
        made.append(Node(names[-1], TorchOp(fn, arity=len(parents), name=kinds[0] if len(kinds) == 1 else "Part"),
                         tuple(parents)))
    made.append(Node("loss", TorchOp(PerCopy(loss), name="loss"), (names[-1],)))
    return Graph(dim, made)


def _inputs(traced, segment, names: list[str], producer: dict) -> tuple[list[str], list]:
    """A segment's parent nodes, and for each value it reads: (its parent's position, the value's offset in
    that parent's packed output or None, its per-copy shape)."""
    parents, takes = [], []
    for value in segment.inputs:
        if value is traced.placeholder:
            parent, offset = "input", None
        else:
            source, position = producer[value]
            outputs = traced.segments[source].outputs
            parent = names[source]
            offset = sum(math.prod(traced.shapes[v]) for v in outputs[:position]) if len(outputs) > 1 else None
        if parent not in parents:
            parents.append(parent)
        takes.append((parents.index(parent), offset, traced.shapes[value]))
    return parents, takes


class Part(torch.nn.Module):
    """A part of a model as a node: (B, ...) values of its parent nodes (unpacked where a parent sends several)
    → its value(s), packed into one (B, n) tensor when several. `slices`: parameters that come from each noisy
    copy's θ row (the last parent), under `vmap`; `per_copy`: vmap over copies also without them (θ = weights)."""

    def __init__(self, body, takes: list, pack: bool, slices: dict, per_copy: bool):
        super().__init__()
        self.body, self.takes, self.pack, self.slices, self.per_copy = body, takes, pack, slices, per_copy

    def forward(self, *args):
        values = [args[parent] if offset is None else
                  args[parent][:, offset:offset + math.prod(shape)].reshape(args[parent].shape[0], *shape)
                  for parent, offset, shape in self.takes]
        if self.slices:
            out = torch.func.vmap(self._with_weights)(args[-1], *values)
        elif self.per_copy:
            out = torch.func.vmap(self.body)(*values)
        else:
            out = self.body(*values)
        return torch.cat([v.reshape(v.shape[0], -1) for v in out], 1) if self.pack else out

    def _with_weights(self, theta_row, *values):
        weights = {key: theta_row[start:start + math.prod(shape)].reshape(shape)
                   for key, (start, shape) in self.slices.items()}
        return torch.func.functional_call(self.body, weights, values)

    def extra_repr(self) -> str:
        """What the part computes (the traced code), so that the graph hash sees it besides the weights."""
        code = getattr(self.body, "code", "")
        return f"takes={self.takes}, pack={self.pack}, slices={self.slices}, per_copy={self.per_copy}\n{code}"


class Fixed(torch.nn.Module):
    """A model applied to constant examples (θ = its weights, the model untraced)."""

    def __init__(self, model, examples):
        super().__init__()
        self.model = model
        self.register_buffer("examples", examples)

    def forward(self):
        return self.model(self.examples)


class PerCopy(torch.nn.Module):
    """fn applied to each noisy copy's value on its own (`vmap` over the batch axis). The tensors fn closes over
    (labels, targets) are copied into buffers and its code into the repr, only so that the graph hash sees them."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn
        cells = getattr(fn, "__closure__", None) or ()
        for i, cell in enumerate(cells):
            if torch.is_tensor(cell.cell_contents):
                self.register_buffer(f"closure_{i}", cell.cell_contents.detach().clone())

    def extra_repr(self) -> str:
        code = getattr(self.fn, "__code__", None)
        return code.co_code.hex() if code is not None else type(self.fn).__qualname__

    def forward(self, batch):
        return torch.func.vmap(self.fn)(batch)


def _module(model):
    if isinstance(model, torch.nn.Module):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, torch.nn.Module) for m in model):
        return torch.nn.Sequential(*model)
    raise TypeError(f"from_torch takes an nn.Module (or a list of modules), got {type(model).__name__}")
