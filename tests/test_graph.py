"""Graph validation names the offending node; depth, order and stage placement are right."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pprs_mpi.graph import Graph, GraphError, Node
from pprs_mpi.ops import Add, Affine, L1Norm, ReLU, Sum


def affine(n_out, n_in, seed=0):
    return Affine(np.random.default_rng(seed).standard_normal((n_out, n_in)))


def diamond():
    """θ -> a, θ -> b, c = a + b, leaf = sum(c): the root has two children, c has two parents."""
    return Graph(3, [Node("a", affine(4, 3), ("theta",)), Node("b", affine(4, 3, 1), ("theta",)),
                     Node("c", Add(), ("a", "b")), Node("leaf", Sum(), ("c",))])


def test_order_children_depth_and_shapes():
    g = diamond()
    assert g.order == ("a", "b", "c", "leaf")
    assert g.children["theta"] == ("a", "b") and g.children["a"] == ("c",)
    assert g.parents("c") == ("a", "b") and g.leaf == "leaf"
    assert g.depth == 3 and g.shape("c") == (4,) and g.shape("leaf") == () and g.shape("theta") == (3,)
    assert Graph.chain(3, [affine(2, 3), ReLU(), L1Norm()]).depth == 3


@pytest.mark.parametrize("nodes, message", [
    ([Node("a", ReLU(), ("theta",)), Node("b", L1Norm(), ("nope",))], "node 'b': parent 'nope' does not exist"),
    ([Node("a", Add(), ("theta", "c")), Node("c", ReLU(), ("a",)), Node("leaf", L1Norm(), ("a",))],
     "cycle through nodes"),
    ([Node("a", L1Norm(), ("theta",)), Node("b", L1Norm(), ("theta",))], "several leaves (a, b)"),
    ([Node("a", ReLU(), ("theta",))], "leaf 'a': output must be a scalar"),
    ([Node("a", affine(2, 5), ("theta",)), Node("b", L1Norm(), ("a",))], "node 'a': Affine"),
    ([Node("a", L1Norm(), ("theta",)), Node("a", L1Norm(), ("theta",))], "node 'a': name is used twice"),
    ([Node("a", L1Norm(), ())], "node 'a': is not reachable from the root 'theta'"),
    ([Node("a", Add(), ("theta", "x")), Node("x", ReLU(), ("x",)), Node("l", L1Norm(), ("a",))],
     "cycle through nodes x -> x"),
])
def test_validation_errors_name_the_node(nodes, message):
    with pytest.raises(GraphError) as err:
        Graph(3, nodes)
    assert message in str(err.value)


def test_stages_are_contiguous_and_balanced():
    g = Graph.chain(2, [ReLU()] * 6 + [L1Norm()])
    assert g.stages(7) == [(n,) for n in g.order]
    stages = g.stages(3)
    assert sum(stages, ()) == g.order and max(len(s) for s in stages) == 3
    weighted = g.stages(2, costs={"layer0": 10.0})
    assert weighted[0] == ("layer0",)
    with pytest.raises(GraphError, match="between 1 and 7"):
        g.stages(8)


def plain_partition(weights, parts):
    """The balancing DP the plain way, every cut tried: the reference for the bisection."""
    n, inf = len(weights), float("inf")
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    ranges, i = [], n
    for k in range(parts, 0, -1):
        ranges.append((cut[k][i], i))
        i = cut[k][i]
    return ranges[::-1]


@settings(max_examples=400, deadline=None)
@given(weights=st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0]) | st.floats(0, 1e6) | st.floats(-1, 1),
                        min_size=1, max_size=14), data=st.data())
def test_the_balanced_split_is_the_plain_dynamic_programs(weights, data):
    """Ties, zero weights and (by trying every cut) negative ones included: the same cuts, not only as good."""
    from pprs_mpi.graph import balanced_partition
    parts = data.draw(st.integers(1, len(weights)))
    assert balanced_partition(weights, parts) == plain_partition(weights, parts)
