"""Computation graphs (paper §2): a DAG with one root θ ∈ R^d and one scalar leaf.

A `Graph` is validated and its shapes are inferred once, when it is built. It knows nothing
of MPI or of where arrays live; it only answers structural questions (order, parents,
children, depth) and splits its nodes into pipeline stages.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from pprs_mpi.ops.base import Op, OpContractError


class GraphError(ValueError):
    """A computation graph that cannot be evaluated; the message names the offending node."""


@dataclass(frozen=True)
class Node:
    """A non-root node: its name, its function and its ordered parents."""

    name: str
    op: Op
    parents: tuple[str, ...]


class Graph:
    """A validated computation graph with inferred per-sample shapes.

    `nodes` are the non-root nodes in any order; the root is named `root` and has shape (d,).
    """

    def __init__(self, dim: int, nodes: Iterable[Node], root: str = "theta"):
        if int(dim) < 1:
            raise GraphError(f"root {root!r}: dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.root = root
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            node = Node(node.name, node.op, tuple(node.parents))
            if node.name == root or node.name in self.nodes:
                raise GraphError(f"node {node.name!r}: name is used twice")
            self.nodes[node.name] = node
        self._check_parents_exist()
        self.children: dict[str, tuple[str, ...]] = self._children()
        self.order: tuple[str, ...] = self._topological_order()
        self.leaf: str = self._single_leaf()
        self.shapes: dict[str, tuple[int, ...]] = self._infer_shapes()
        if self.shapes[self.leaf] != ():
            raise GraphError(f"leaf {self.leaf!r}: output must be a scalar, got shape {self.shapes[self.leaf]}")
        self.level: dict[str, int] = self._levels()
        self.depth: int = max(self.level.values())

    @classmethod
    def chain(cls, dim: int, ops: Sequence[Op], names: Sequence[str] | None = None, root: str = "theta") -> "Graph":
        """A sequential graph root -> ops[0] -> ... -> ops[-1]."""
        names = list(names) if names is not None else [f"layer{i}" for i in range(len(ops))]
        parents = [root] + names[:-1]
        return cls(dim, [Node(n, op, (p,)) for n, op, p in zip(names, ops, parents)], root=root)

    def parents(self, name: str) -> tuple[str, ...]:
        return () if name == self.root else self.nodes[name].parents

    def op(self, name: str) -> Op:
        return self.nodes[name].op

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.dim,) if name == self.root else self.shapes[name]

    def edges(self) -> list[tuple[str, str]]:
        """Every distinct (parent, child) edge, in topological order of the child, then parent order."""
        return list(dict.fromkeys((p, n) for n in self.order for p in self.nodes[n].parents))

    def fingerprints(self) -> dict[str, str]:
        """A digest per node, in topological order after the root's: its name, parents and op (type and
        constants). Ranks that built the same graph get the same digests; see `Op.fingerprint`."""
        digests = {self.root: hashlib.sha256(f"root {self.root} {self.dim}".encode()).hexdigest()}
        for name in self.order:
            node = self.nodes[name]
            digest = hashlib.sha256(f"{name} {node.parents}".encode())
            digest.update(node.op.fingerprint())
            digests[name] = digest.hexdigest()
        return digests

    def _check_parents_exist(self) -> None:
        for node in self.nodes.values():
            if not node.parents:  # the only way a node of an acyclic graph can miss the root
                raise GraphError(f"node {node.name!r}: is not reachable from the root {self.root!r} "
                                 "(it has no parents)")
            for p in node.parents:
                if p != self.root and p not in self.nodes:
                    raise GraphError(f"node {node.name!r}: parent {p!r} does not exist")

    def _children(self) -> dict[str, tuple[str, ...]]:
        children: dict[str, list[str]] = {self.root: [], **{n: [] for n in self.nodes}}
        for node in self.nodes.values():
            for p in dict.fromkeys(node.parents):
                children[p].append(node.name)
        return {k: tuple(v) for k, v in children.items()}

    def _topological_order(self) -> tuple[str, ...]:
        order, stuck = topological_order({n: node.parents for n, node in self.nodes.items()})
        if stuck:
            raise GraphError(f"cycle through nodes {' -> '.join(self._a_cycle(set(stuck)))}")
        return order

    def _a_cycle(self, stuck: set[str]) -> list[str]:
        """A cycle among the nodes Kahn's algorithm could not order (each has a stuck parent)."""
        path, name = [], next(n for n in self.nodes if n in stuck)
        while name not in path:
            path.append(name)
            name = next(p for p in self.nodes[name].parents if p in stuck)
        cycle = path[path.index(name):]
        return list(reversed(cycle)) + [cycle[-1]]

    def _single_leaf(self) -> str:
        leaves = [n for n in self.order if not self.children[n]]
        if not leaves:
            raise GraphError("graph has no leaf: it needs one node without children")
        if len(leaves) > 1:
            raise GraphError(f"graph has several leaves ({', '.join(leaves)}): it needs exactly one")
        return leaves[0]

    def _infer_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for name in self.order:
            node = self.nodes[name]
            arity = node.op.arity
            if arity is not None and arity != len(node.parents):
                raise GraphError(
                    f"node {name!r}: {node.op.describe()} takes {arity} input(s), got {len(node.parents)}")
            inputs = [self.shape(p) if p == self.root else shapes[p] for p in node.parents]
            try:
                shapes[name] = tuple(int(s) for s in node.op.output_shape(*inputs))
            except OpContractError as err:
                raise GraphError(f"node {name!r}: {node.op.describe()}: {err}") from None
            except ValueError as err:
                raise GraphError(f"node {name!r}: {node.op.describe()} does not fit inputs {inputs}: {err}") from None
        return shapes

    def _levels(self) -> dict[str, int]:
        """Number of non-root nodes on the longest root-to-node path, the node included."""
        level: dict[str, int] = {}
        for name in self.order:
            level[name] = 1 + max((level.get(p, 0) for p in self.nodes[name].parents), default=0)
        return level

    def cost(self, name: str) -> float:
        return float(self.nodes[name].op.cost)

    def stages(self, n_stages: int, costs: dict[str, float] | None = None) -> list[tuple[str, ...]]:
        """Split the topological order into `n_stages` contiguous groups minimising the largest group cost.

        The root is not listed: it always lives with stage 0. Contiguity in topological order keeps
        every edge pointing from a stage to itself or a later one. `costs` overrides the ops' declared
        costs (e.g. measured times, as torchgpipe balances by time).
        """
        n = len(self.order)
        if not 1 <= n_stages <= n:
            raise GraphError(f"cannot place {n} node(s) on {n_stages} stage(s): need between 1 and {n} stages")
        weights = [float((costs or {}).get(name, self.cost(name))) for name in self.order]
        return [tuple(self.order[a:b]) for a, b in balanced_partition(weights, n_stages)]

def topological_order(parents: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], list[str]]:
    """Kahn's algorithm over `parents` (node -> its parents; names that are not keys, like the root, are
    inputs from outside), ties broken by insertion order so the order is deterministic.

    Returns the order and the nodes it could not place because they lie on or after a cycle.
    """
    children: dict[str, list[str]] = {v: [] for v in parents}
    indegree = {}
    for v, ps in parents.items():
        inside = [p for p in dict.fromkeys(ps) if p in parents]
        indegree[v] = len(inside)
        for p in inside:
            children[p].append(v)
    ready = deque(v for v in parents if indegree[v] == 0)
    order: list[str] = []
    while ready:
        v = ready.popleft()
        order.append(v)
        for c in children[v]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    placed = set(order)
    return tuple(order), [v for v in parents if v not in placed]


def balanced_partition(weights: list[float], parts: int) -> list[tuple[int, int]]:
    """Contiguous split of `weights` into `parts` non-empty ranges minimising the largest sum (exact DP).

    k parts cover between k and k + n - parts of the first weights, so the table is kept to that band:
    O(parts × (n - parts + 1)) memory. With weights >= 0 each cut is found by bisection (`_first_best_cut`):
    O(parts × (n - parts + 1) × log n) time, else by trying every cut."""
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf, band, bisect = float("inf"), n - parts + 1, all(w >= 0 for w in weights)
    # best[i - k]: smallest achievable max-sum splitting the first i weights into k parts; cuts[k - 1][i - k]
    # the end of the first k - 1 parts in that split (the smallest such end).
    best, cuts = [0.0] + [inf] * (band - 1), []
    for k in range(1, parts + 1):
        current, cut = [inf] * band, [0] * band
        for i in range(k, k + band):
            lo, hi = k - 1, min(i, k - 1 + band) - 1  # the cuts j to try: the first k - 1 parts end at j
            if bisect:
                j = _first_best_cut(best, lo, prefix, i, lo, hi)
                current[i - k], cut[i - k] = max(best[j - lo], prefix[i] - prefix[j]), j
                continue
            for j in range(lo, hi + 1):
                value = max(best[j - lo], prefix[i] - prefix[j])
                if value < current[i - k]:
                    current[i - k], cut[i - k] = value, j
        best = current
        cuts.append(cut)
    ranges, i = [], n
    for k in range(parts, 0, -1):
        j = cuts[k - 1][i - k]
        ranges.append((j, i))
        i = j
    return ranges[::-1]


def _first_best_cut(best: list[float], offset: int, prefix: list[float], i: int, lo: int, hi: int) -> int:
    """The smallest j in lo..hi minimising max(A(j), B(j)), A(j) = best[j - offset] (non-decreasing in j: more
    weights never split better) and B(j) = prefix[i] - prefix[j] (non-increasing), as trying every j would
    find it. t is the first j with A(j) >= B(j): the minimum is A(t), or B(t - 1) reached first at the
    smallest j with B(j) <= B(t - 1)."""
    a, b = lo, hi + 1
    while a < b:
        middle = (a + b) // 2
        if best[middle - offset] >= prefix[i] - prefix[middle]:
            b = middle
        else:
            a = middle + 1
    t = a
    if t <= hi and (t == lo or best[t - offset] < prefix[i] - prefix[t - 1]):
        return t
    value = prefix[i] - prefix[t - 1]
    a, b = lo, t - 1
    while a < b:
        middle = (a + b) // 2
        if prefix[i] - prefix[middle] <= value:
            b = middle
        else:
            a = middle + 1
    return a
