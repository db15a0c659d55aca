"""A PyTorch model traced by `torch.fx` and cut into pipeline nodes at module boundaries (for `from_torch`).

The tracer goes through the model's own `forward`, its containers (`Sequential`, `ModuleList`, `ModuleDict`)
and every module above a named split point; every other submodule is a *unit*, called as it is (its insides
are never traced, so a block with data-dependent control flow inside is fine). The traced operations that
depend on θ (the input, or the chosen parameters) are laid in the traced order and cut into *segments*:

- by default a new segment starts at each unit call (one node per top-level child or block);
- `split=["blocks.2", "head"]` starts one at the first operation inside each named submodule, as torch
  pipelining's `split_spec` does;
- `nodes=N` merges the default segments into N contiguous groups balanced by the floating-point operations
  torch counts in them.

The operations that do not depend on θ (the frozen layers before the chosen parameters, constants such as
position indices) are evaluated once, in float64, when the problem is built, and enter the segments that use
them as buffers. Each segment becomes one fx `GraphModule` over the model's own submodules; a value used by
several later segments is an edge to each of them (skip connections are edges, not copies), and a segment
whose several values are used later sends them packed in one tensor.
"""

from __future__ import annotations

import copy
import inspect
import os
import traceback
from dataclasses import dataclass, field

from pprs_mpi.graph import balanced_partition
from pprs_mpi.ops.torch_op import _torch, flop_counter

torch = _torch()
fx = torch.fx

CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
CONSTANT_PREFIX = "_pprs_const_"  # the buffers holding θ-independent values, in the model's private copy


@dataclass
class Segment:
    """A run of traced operations that becomes one node: `inputs` the θ-dependent values it reads from
    earlier segments (or the model's input), `outputs` those later segments (or the loss) read."""

    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    units: list = field(default_factory=list)
    flops: int = 0


@dataclass
class Traced:
    """The traced model cut into segments, with what the probe run learned about every value."""

    module: object  # the GraphModule over a private copy of the model
    segments: list[Segment]
    placeholder: object
    values: dict  # node -> its value in the probe run (float64), for the constants
    shapes: dict  # node -> the per-copy shape of a θ-dependent tensor value
    chosen: dict  # parameter name -> the nodes using it


def trace(model, probe, *, input_mode: bool, params=(), split=None, nodes=None) -> Traced:
    """`model` traced and cut (see the module docstring); `probe` is what the model is applied to once:
    a batch of one zero input (θ = the input) or the m examples (θ = the weights in `params`)."""
    split = list(split or ())
    _check_split(model, split)
    module = _traced(copy.deepcopy(model), split)
    module.graph.eliminate_dead_code()
    module.recompile()
    placeholder = next(n for n in module.graph.nodes if n.op == "placeholder")
    output = next(n for n in module.graph.nodes if n.op == "output")
    chosen = _users_of(module, params)
    dependent = _dependent(module, placeholder if input_mode else None, chosen)
    values, flops = _probe(module, probe)
    result = output.args[0]
    if not isinstance(result, fx.Node) or not torch.is_tensor(values.get(result)):
        kind = type(values.get(result) if isinstance(result, fx.Node) else result).__name__
        raise ValueError(f"from_torch: {type(model).__name__}.forward returns a {kind}, not a tensor: return the "
                         "one tensor the loss takes (wrap the model to pick it)")
    if result not in dependent:
        raise ValueError(f"from_torch: the output of {type(model).__name__} does not depend on θ")
    ops = [n for n in module.graph.nodes if n in dependent and n.op not in ("placeholder", "get_attr", "output")]
    segments = _cut(ops, split, nodes, flops, type(model).__name__)
    _connect(segments, placeholder if input_mode else None, result)
    shapes = {}
    for segment in segments:
        for value in segment.inputs + segment.outputs:
            if not torch.is_tensor(values.get(value)):
                raise ValueError(f"from_torch: the value {value.name!r} ({type(values.get(value)).__name__}) would "
                                 "cross between two nodes, and only tensors can: choose other split points")
            shapes[value] = tuple(values[value].shape[1:] if input_mode else values[value].shape)
    return Traced(module, segments, placeholder, values, shapes, chosen)


def segment_module(traced: Traced, segment: Segment):
    """The segment as a GraphModule: its inputs as placeholders, the θ-independent values it reads as buffers
    (parameters and buffers of the model as the model's own), its outputs as one tensor or a tuple."""
    graph = fx.Graph()
    env = {value: graph.placeholder(f"input_{i}") for i, value in enumerate(segment.inputs)}
    holder = traced.module

    def lookup(node):
        if node not in env:
            if node.op == "get_attr":
                env[node] = graph.get_attr(node.target)
            elif torch.is_tensor(traced.values[node]):  # a θ-independent tensor: computed once, in float64
                name = CONSTANT_PREFIX + node.name
                if not hasattr(holder, name):
                    holder.register_buffer(name, traced.values[node])
                env[node] = graph.get_attr(name)
            else:  # a θ-independent number or shape, written into the code
                env[node] = traced.values[node]
        return env[node]

    for node in segment.nodes:
        env[node] = graph.node_copy(node, lookup)
    outputs = [env[value] for value in segment.outputs]
    graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    return fx.GraphModule(holder, graph, class_name="Segment")


class _Tracer(fx.Tracer):
    """Traces through the model, its containers and the modules above split points; the rest are units."""

    def __init__(self, split: list[str]):
        super().__init__()
        self.split = split

    def is_leaf_module(self, module, qualname: str) -> bool:
        return not (isinstance(module, CONTAINERS) or any(s.startswith(qualname + ".") for s in self.split))


def _check_split(model, split: list[str]) -> None:
    known = dict(model.named_modules())
    for point in split:
        if not point or point not in known:
            names = [name for name in known if name]
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"from_torch: split point {point!r} names no submodule of {type(model).__name__} "
                             f"(its submodules: {shown or 'none'})")
    if len(set(split)) != len(split):
        raise ValueError("from_torch: a split point is named twice")


def _traced(model, split: list[str]):
    """The fx GraphModule of `model`; one line naming what stopped the tracer, and the fallback, if it cannot."""
    try:
        signature = inspect.signature(model.forward)
        rest = list(signature.parameters.values())[1:]
        concrete = {p.name: p.default for p in rest if p.default is not p.empty}
        if len(concrete) != len(rest):
            raise TypeError(f"forward takes more than one tensor ({', '.join(p.name for p in rest)} have no default)")
        graph = _Tracer(split).trace(model, concrete_args=concrete or None)
    except Exception as err:  # noqa: BLE001 — anything the tracer meets in the user's code is named in one line
        raise ValueError(f"from_torch: torch.fx cannot trace {type(model).__name__}: {_stopped_at(err)}; fallback: "
                         "from_torch(..., nodes=1) runs the model as one node, or build the Graph by hand from "
                         "TorchOp nodes") from None
    return fx.GraphModule(model, graph)


def _stopped_at(err: Exception) -> str:
    """The tracer's complaint and the deepest line of the user's code (outside torch) it came from."""
    text = " ".join(str(err).split()).split(". ")[0][:200]
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not os.path.abspath(f.filename).startswith(torch_dir) and "pprs_mpi" not in f.filename]
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
    return f"{type(err).__name__}: {text}{where}"


def _users_of(module, params) -> dict:
    """The traced nodes that use each chosen parameter: a unit owning it, or a `get_attr` of it."""
    users = {key: [] for key in params}
    for node in module.graph.nodes:
        for key in params:
            if (node.op == "call_module" and key.startswith(node.target + ".")) or (
                    node.op == "get_attr" and node.target == key):
                users[key].append(node)
    unused = [key for key, found in users.items() if not found]
    if unused:
        raise ValueError(f"from_torch: parameter {unused[0]!r} is not used by the model's forward")
    return users


def _dependent(module, placeholder, chosen: dict) -> set:
    """The nodes whose value depends on θ: on the input (`placeholder`), or on a chosen parameter."""
    sources = {node for users in chosen.values() for node in users}
    dependent = {placeholder} if placeholder is not None else set()
    for node in module.graph.nodes:
        if node.op == "get_attr":
            continue
        if (node in sources and node.op == "call_module") or any(
                arg in dependent or arg in sources for arg in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _probe(module, probe):
    """Every node's value and multiply-adds when the model (in float64) is applied to `probe` once."""
    double = copy.deepcopy(module).double()
    by_name = {node.name: node for node in module.graph.nodes}
    values, flops = {}, {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            with flop_counter(torch) as counter:
                value = super().run_node(node)
            values[by_name[node.name]] = value
            flops[by_name[node.name]] = counter.get_total_flops() // 2
            return value

    with torch.no_grad():
        Recorder(double).run(probe)
    return values, flops


def _cut(ops: list, split: list[str], count: int | None, flops: dict, model_name: str) -> list[Segment]:
    """The θ-dependent operations, in traced order, cut into segments (see the module docstring)."""
    starts = set()
    if split:
        for point in split:
            first = next((n for n in ops if _inside(n, point)), None)
            if first is None:
                raise ValueError(f"from_torch: split point {point!r} is not on θ's path through {model_name}")
            starts.add(first)
    else:
        starts = {n for n in ops if n.op == "call_module"}
    segments = []
    for node in ops:
        if not segments or (node in starts and (split or segments[-1].units)):
            segments.append(Segment())
        segments[-1].nodes.append(node)
        segments[-1].flops += flops.get(node, 0)
        if node.op == "call_module":
            segments[-1].units.append(node.target)
    if count is not None:
        if count > len(segments):
            raise ValueError(f"from_torch: nodes={count}, but {model_name} has {len(segments)} unit(s) to group "
                             "(name deeper split points with split=[...])")
        merged = []
        for a, b in balanced_partition([1 + s.flops for s in segments], count):
            merged.append(Segment(nodes=[n for s in segments[a:b] for n in s.nodes],
                                  units=[u for s in segments[a:b] for u in s.units],
                                  flops=sum(s.flops for s in segments[a:b])))
        segments = merged
    return segments


def _inside(node, point: str) -> bool:
    """Whether a traced node is the submodule `point`, or an operation inside it."""
    if node.op == "call_module" and (node.target == point or node.target.startswith(point + ".")):
        return True
    return point in (node.meta.get("nn_module_stack") or {})


def _connect(segments: list[Segment], placeholder, result) -> None:
    """Each segment's inputs (values of earlier segments, or the model's input) and outputs."""
    owner = {node: i for i, segment in enumerate(segments) for node in segment.nodes}
    for i, segment in enumerate(segments):
        for node in segment.nodes:
            for arg in node.all_input_nodes:
                source = owner.get(arg)
                if (arg is placeholder or (source is not None and source != i)) and arg not in segment.inputs:
                    segment.inputs.append(arg)
                    if source is not None and arg not in segments[source].outputs:
                        segments[source].outputs.append(arg)
    assert result in segments[-1].nodes  # after dead code is gone, every operation leads to the result
    segments[-1].outputs.append(result)
    for segment in segments:  # outputs in traced order, so that packing is the same on every rank
        segment.outputs.sort(key=lambda n: segment.nodes.index(n))
