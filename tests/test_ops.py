"""The node library: VJPs against finite differences, subgradients at kinks, dtypes, shape errors, whole graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pprs_mpi import ops
from pprs_mpi.check import check_gradients, check_op
from pprs_mpi.graph import Graph, GraphError, Node
from reference import backprop, evaluate

EPS = 1e-6  # finite-difference step (float64)
RTOL = 1e-6  # relative tolerance of VJP against finite differences
MARGIN = 1e-3  # distance every test input keeps from a kink, far beyond EPS
FD = settings(max_examples=15, deadline=None)

small = st.integers(1, 4)


# ---------------------------------------------------------------- helpers


def away_from_zero(z):
    """z pushed at least MARGIN away from 0, keeping its sign."""
    return np.where(z >= 0, z + MARGIN, z - MARGIN)


def spaced(rng, shape, step=0.1):
    """Values whose pairwise gaps exceed step/2, in random order: no ties anywhere, even after perturbation."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * step + rng.uniform(0, step / 2, n)).reshape(shape) - n * step / 2


def assert_close(actual, expected, rtol=RTOL):
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------- one random case per op, away from kinks

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def batch(draw):
    return draw(st.integers(1, 3), label="batch")


def any_shape(draw, max_dims=3):
    return tuple(draw(st.lists(small, max_size=max_dims), label="shape"))


@case
def relu(draw, rng):
    return ops.ReLU(), [away_from_zero(rng.standard_normal((batch(draw),) + any_shape(draw)))]


@case
def abs_(draw, rng):
    return ops.Abs(), [away_from_zero(rng.standard_normal((batch(draw),) + any_shape(draw)))]


@case
def square(draw, rng):
    return ops.Square(), [rng.standard_normal((batch(draw),) + any_shape(draw))]


@case
def scale(draw, rng):
    c = draw(st.floats(-3, 3), label="c")
    return ops.Scale(c), [rng.standard_normal((batch(draw),) + any_shape(draw))]


@case
def add(draw, rng):
    shape, n = (batch(draw),) + any_shape(draw), draw(st.integers(1, 3), label="n")
    return ops.Add(), [rng.standard_normal(shape) for _ in range(n)]


@case
def linear_combination(draw, rng):
    shape, n = (batch(draw),) + any_shape(draw), draw(st.integers(1, 3), label="n")
    return ops.LinearCombination(rng.standard_normal(n)), [rng.standard_normal(shape) for _ in range(n)]


@case
def reshape(draw, rng):
    a, b, c = draw(small), draw(small), draw(small)
    target = draw(st.sampled_from([(b, a * c), (-1, c), (a * b * c,), (c, 1, -1)]), label="target")
    return ops.Reshape(target), [rng.standard_normal((batch(draw), a, b, c))]


@case
def flatten(draw, rng):
    return ops.Flatten(), [rng.standard_normal((batch(draw),) + any_shape(draw))]


@case
def slice_(draw, rng):
    start, rows, cols, extra = draw(st.integers(0, 3)), draw(small), draw(small), draw(st.integers(0, 3))
    d = start + rows * cols + extra
    return ops.Slice(start, start + rows * cols, (rows, cols)), [rng.standard_normal((batch(draw), d))]


@case
def sum_(draw, rng):
    return ops.Sum(), [rng.standard_normal((batch(draw),) + any_shape(draw))]


@case
def squared_norm(draw, rng):
    return ops.SquaredNorm(), [rng.standard_normal((batch(draw),) + any_shape(draw))]


@case
def l1_norm(draw, rng):
    return ops.L1Norm(), [away_from_zero(rng.standard_normal((batch(draw),) + any_shape(draw)))]


@case
def linf_distance(draw, rng):
    shape = (batch(draw),) + any_shape(draw)
    anchor = rng.standard_normal(shape[1:])
    gaps = np.abs(spaced(rng, shape)) + 0.05  # distinct |x - anchor|, all > 0
    x = anchor + rng.choice([-1.0, 1.0], shape) * gaps
    return ops.LInfDistance(anchor, weight=draw(st.floats(0.1, 3), label="weight")), [x]


@case
def affine(draw, rng):
    n, m, lead = draw(small), draw(small), tuple(draw(st.lists(small, max_size=1), label="lead"))
    b = rng.standard_normal(m) if draw(st.booleans(), label="bias") else None
    return ops.Affine(rng.standard_normal((m, n)), b), [rng.standard_normal((batch(draw),) + lead + (n,))]


@case
def max_affine(draw, rng):
    k, n = draw(st.integers(1, 5)), draw(small)
    A, c, x = rng.standard_normal((k, n)), rng.standard_normal(k), rng.standard_normal((batch(draw), n))
    top2 = np.sort(x @ A.T + c, axis=1)[:, -2:]
    assume(k == 1 or np.all(top2[:, 1] - top2[:, 0] > MARGIN))
    return ops.MaxAffine(A, c), [x]


@case
def param_affine(draw, rng):
    m, n_in, n_out = draw(small), draw(small), draw(small)
    op = ops.ParamAffine(rng.standard_normal((m, n_in)), n_out)
    return op, [rng.standard_normal((batch(draw), op.n_params))]


@case
def param_affine_input(draw, rng):
    lead, n_in, n_out = tuple(draw(st.lists(small, max_size=2), label="lead")), draw(small), draw(small)
    B = batch(draw)
    return ops.ParamAffineInput(n_out), [rng.standard_normal((B,) + lead + (n_in,)),
                                         rng.standard_normal((B, n_out * n_in + n_out))]


def conv_params(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    H, W = kh + draw(st.integers(0, 4)), kw + draw(st.integers(0, 4))
    return (kh, kw), stride, padding, (H, W)


@case
def conv2d(draw, rng):
    (kh, kw), stride, padding, (H, W) = conv_params(draw)
    C, F = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    bias = rng.standard_normal(F) if draw(st.booleans(), label="bias") else None
    op = ops.Conv2d(rng.standard_normal((F, C, kh, kw)), bias, stride=stride, padding=padding)
    return op, [rng.standard_normal((batch(draw), C, H, W))]


@case
def max_pool2d(draw, rng):
    kernel, stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3))), draw(st.none() | st.integers(1, 3))
    H, W = kernel[0] + draw(st.integers(0, 4)), kernel[1] + draw(st.integers(0, 4))
    return ops.MaxPool2d(kernel, stride), [spaced(rng, (batch(draw), draw(st.integers(1, 2)), H, W))]


def margins_away_from_kinks(x, targets):
    """Logits (..., C) moved so that every term 1 − x_y + x_i (i ≠ y) is at least MARGIN from 0."""
    one_hot = np.arange(x.shape[-1]) == np.asarray(targets)[..., None]
    x_y = np.sum(x * one_hot, axis=-1, keepdims=True)
    return np.where(one_hot, x, x_y - 1 + away_from_zero(1 - x_y + x))


@case
def multi_margin(draw, rng):
    C = draw(st.integers(2, 5))
    target = draw(st.integers(0, C - 1), label="target")
    x = margins_away_from_kinks(0.7 * rng.standard_normal((batch(draw), C)), target)
    return ops.MultiMargin(target), [x]


@case
def multi_margin_mean(draw, rng):
    m, C = draw(small), draw(st.integers(2, 5))
    targets = rng.integers(0, C, m)
    x = margins_away_from_kinks(0.7 * rng.standard_normal((batch(draw), m, C)), targets)
    return ops.MultiMarginMean(targets), [x]


@case
def hinge(draw, rng):
    m = draw(small)
    labels = rng.choice([-1.0, 1.0], m)
    shape = (m,) if draw(st.booleans(), label="flat") else (m, 1)
    x = rng.standard_normal((batch(draw), m))
    x = labels * (1 - away_from_zero(1 - labels * x))
    return ops.Hinge(labels), [x.reshape((-1,) + shape)]


def draw_case(name, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return CASES[name](data.draw, rng)


@pytest.mark.parametrize("name", sorted(CASES))
@FD
@given(data=st.data())
def test_vjp_matches_finite_differences(name, data):
    """The public checker (pprs_mpi.check) on every op: its contract (shapes, dtypes, one cotangent per
    input, purity) and its VJP against central differences along every input entry."""
    op, inputs = draw_case(name, data)
    if op.arity is not None:
        assert op.arity == len(inputs)
    errors, broken = check_op(op, inputs, full_basis=10**6)  # every entry, as a full Jacobian would
    assert broken == "" and len(errors) == len(inputs)
    assert max(errors) <= RTOL  # NaN (every direction at a kink) fails too: the cases stay MARGIN away from kinks


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_float32_in_float32_out(name, data):
    op, inputs = draw_case(name, data)
    inputs32 = [x.astype(np.float32) for x in inputs]
    out = op.forward(np, *inputs32)
    grads = op.vjp(np, inputs32, out, np.ones_like(out))
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    inputs64 = [x.astype(np.float64) for x in inputs32]
    out64 = op.forward(np, *inputs64)
    assert_close(out, out64, rtol=1e-5)
    for g, g64 in zip(grads, op.vjp(np, inputs64, out64, np.ones_like(out64))):
        assert_close(g, g64, rtol=1e-5)


@settings(max_examples=1, deadline=None)
@given(data=st.data())
def test_every_exported_op_has_a_case(data):
    covered = {type(draw_case(name, data)[0]).__name__ for name in CASES}
    assert covered == set(ops.__all__) - {"Op", "TorchOp", "JaxOp"}  # framework ops: tests/test_frameworks.py


# ---------------------------------------------------------------- documented subgradients at kinks


def vjp1(op, x, cot):
    x = np.asarray(x, dtype=np.float64)
    return op.vjp(np, [x], op.forward(np, x), np.asarray(cot, dtype=np.float64))[0]


def test_relu_and_abs_at_zero():
    x, cot = [[-1.0, 0.0, 2.0]], [[3.0, 5.0, 7.0]]
    np.testing.assert_array_equal(vjp1(ops.ReLU(), x, cot), [[0.0, 0.0, 7.0]])
    np.testing.assert_array_equal(vjp1(ops.Abs(), x, cot), [[-3.0, 0.0, 7.0]])
    np.testing.assert_array_equal(vjp1(ops.L1Norm(), x, [2.0]), [[-2.0, 0.0, 2.0]])


def test_linf_tie_goes_to_first_index_and_sign_zero_is_zero():
    op = ops.LInfDistance(np.ones(4), weight=0.5)
    np.testing.assert_array_equal(vjp1(op, [[1.0, 3.0, 1.0, -1.0]], [2.0]), [[0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(vjp1(op, [[1.0, 1.0, 1.0, 1.0]], [2.0]), [[0.0, 0.0, 0.0, 0.0]])
    image = ops.LInfDistance(np.zeros((1, 2, 2)))
    np.testing.assert_array_equal(vjp1(image, [[[[0.0, -2.0], [2.0, 1.0]]]], [1.0]), [[[[0.0, -1.0], [0.0, 0.0]]]])


def test_max_affine_tie_goes_to_lowest_row():
    op = ops.MaxAffine([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(vjp1(op, [[2.0, 2.0]], [3.0]), [[3.0, 0.0]])
    op = ops.MaxAffine([[0.0, 1.0], [1.0, 0.0]], [1.0, 1.0])
    np.testing.assert_array_equal(vjp1(op, [[2.0, 2.0]], [3.0]), [[0.0, 3.0]])


def test_max_pool_tie_goes_to_first_element_of_each_window():
    single = vjp1(ops.MaxPool2d(2), np.ones((1, 1, 2, 2)), [[[[5.0]]]])
    np.testing.assert_array_equal(single, [[[[5.0, 0.0], [0.0, 0.0]]]])
    overlapping = vjp1(ops.MaxPool2d(2, stride=1), np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(overlapping, [[[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])


def test_margin_terms_at_zero_contribute_nothing():
    # Terms for target 0: i=1 is exactly 0 (kink), i=2 is 0.5 (active).
    x, cot = [[1.0, 0.0, 0.5]], [2.0]
    np.testing.assert_array_equal(vjp1(ops.MultiMargin(0), x, cot), [[-2.0, 0.0, 2.0]])
    np.testing.assert_array_equal(vjp1(ops.MultiMargin(0), [[1.0, 0.0, -1.0]], cot), [[0.0, 0.0, 0.0]])
    mean = ops.MultiMarginMean([0, 1])
    np.testing.assert_array_equal(vjp1(mean, [[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]], cot),
                                  [[[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    # Hinge terms: 1 − 1·1 = 0 (kink), 1 − (−1)(0.5) = 1.5 (active).
    np.testing.assert_array_equal(vjp1(ops.Hinge([1.0, -1.0]), [[1.0, 0.5]], cot), [[0.0, 1.0]])


# ---------------------------------------------------------------- forward against naive references


def conv_reference(x, weight, bias, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    F, _, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], F, ho, wo))
    for b in range(x.shape[0]):
        for f in range(F):
            for i in range(ho):
                for j in range(wo):
                    window = x[b, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    out[b, f, i, j] = np.sum(window * weight[f]) + (0.0 if bias is None else bias[f])
    return out


def max_pool_reference(x, kernel, stride):
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.zeros(x.shape[:2] + (ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].max(axis=(2, 3))
    return out


@FD
@given(data=st.data())
def test_conv2d_matches_naive_loops(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    kernel, stride, padding, (H, W) = conv_params(data.draw)
    C, F, B = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    weight, bias, x = rng.standard_normal((F, C) + kernel), rng.standard_normal(F), rng.standard_normal((B, C, H, W))
    op = ops.Conv2d(weight, bias, stride=stride, padding=padding)
    out = op.forward(np, x)
    assert out.shape[1:] == op.output_shape((C, H, W))
    np.testing.assert_allclose(out, conv_reference(x, weight, bias, stride, padding), rtol=1e-12, atol=1e-12)


@FD
@given(data=st.data())
def test_max_pool2d_matches_naive_loops(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    kernel = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    x = rng.standard_normal((2, 2, kernel[0] + data.draw(st.integers(0, 5)), kernel[1] + data.draw(st.integers(0, 5))))
    op = ops.MaxPool2d(kernel, stride)
    np.testing.assert_array_equal(op.forward(np, x), max_pool_reference(x, kernel, stride))


# ---------------------------------------------------------------- shape errors


MISFITS = [
    (ops.Affine(np.ones((3, 4))), [(5,)]),
    (ops.Affine(np.ones((3, 4))), [()]),
    (ops.Conv2d(np.ones((2, 3, 3, 3))), [(2, 8, 8)]),
    (ops.Conv2d(np.ones((2, 3, 3, 3))), [(3, 8)]),
    (ops.Conv2d(np.ones((2, 3, 3, 3))), [(3, 2, 2)]),
    (ops.MaxPool2d(3), [(1, 2, 2)]),
    (ops.MaxPool2d(2), [(4, 4)]),
    (ops.Reshape((3, 3)), [(8,)]),
    (ops.Reshape((-1, 3)), [(8,)]),
    (ops.Slice(2, 10), [(8,)]),
    (ops.Slice(0, 2), [(2, 4)]),
    (ops.Add(), [(3,), (4,)]),
    (ops.LinearCombination([1.0, 2.0]), [(3,), (2,)]),
    (ops.LInfDistance(np.zeros((2, 3))), [(3, 2)]),
    (ops.MaxAffine(np.ones((3, 4)), np.ones(3)), [(3,)]),
    (ops.ParamAffine(np.ones((5, 3)), 2), [(7,)]),
    (ops.ParamAffineInput(2), [(5, 3), (7,)]),
    (ops.MultiMargin(5), [(3,)]),
    (ops.MultiMargin(1), [(2, 3)]),
    (ops.MultiMarginMean([0, 1]), [(3, 4)]),
    (ops.MultiMarginMean([0, 1]), [(2, 1)]),
    (ops.Hinge([1, -1]), [(3,)]),
    (ops.Hinge([1, -1]), [(2, 2)]),
]


@pytest.mark.parametrize("op,shapes", MISFITS, ids=lambda v: v.describe() if isinstance(v, ops.Op) else str(v))
def test_output_shape_rejects_misfits(op, shapes):
    with pytest.raises(ValueError):
        op.output_shape(*shapes)


@pytest.mark.parametrize("make", [
    lambda: ops.Slice(3, 3),
    lambda: ops.Slice(0, 6, (4, 2)),
    lambda: ops.Reshape((-1, -1)),
    lambda: ops.Hinge([1.0, 0.0]),
    lambda: ops.MultiMargin(-1),
    lambda: ops.MultiMarginMean([0.5, 1]),
    lambda: ops.Conv2d(np.ones((2, 3, 3))),
    lambda: ops.Conv2d(np.ones((2, 3, 3, 3)), stride=0),
    lambda: ops.Affine(np.ones((3, 4)), np.ones(4)),
    lambda: ops.MaxPool2d(0),
])
def test_constructors_reject_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


def test_graph_reports_misfit_node():
    with pytest.raises(GraphError, match="layer1"):
        Graph.chain(6, [ops.Reshape((1, 2, 3)), ops.Conv2d(np.ones((1, 1, 3, 3))), ops.Sum()])


def test_costs_follow_flops():
    graph = Graph.chain(3 * 32 * 32, [ops.Reshape((3, 32, 32)), ops.Conv2d(np.ones((64, 3, 3, 3)), padding=1),
                                      ops.ReLU(), ops.Sum()])
    assert graph.cost("layer0") == graph.cost("layer2") == graph.cost("layer3") == 1.0
    assert graph.cost("layer1") == pytest.approx(64 * 27 * 32 * 32 / 2**16)


# ---------------------------------------------------------------- whole graphs: reverse mode against finite differences


def fd_graph(graph, theta):
    grad = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        values = []
        for step in (EPS, -EPS):
            moved = theta.copy()
            moved[idx] += step
            values.append(evaluate(graph, moved)[graph.leaf].sum())
        grad[idx] = (values[0] - values[1]) / (2 * EPS)
    return grad


def cnn_chain(rng):
    """θ as a 1×6×6 image through conv, ReLU, pooling and a linear classifier to a margin loss."""
    return Graph.chain(36, [
        ops.Reshape((1, 6, 6)),
        ops.Conv2d(rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2), padding=1),
        ops.ReLU(),
        ops.MaxPool2d(2),
        ops.Flatten(),
        ops.Affine(rng.standard_normal((4, 18)), rng.standard_normal(4)),
        ops.MultiMargin(2),
    ])


def branching_dag(rng):
    """θ feeds two affine maps; their outputs meet in a linear combination and a final Add of two scalars."""
    return Graph(5, [
        Node("a", ops.Affine(rng.standard_normal((4, 5)), rng.standard_normal(4)), ("theta",)),
        Node("b", ops.Affine(rng.standard_normal((4, 5))), ("theta",)),
        Node("abs", ops.Abs(), ("a",)),
        Node("relu", ops.ReLU(), ("b",)),
        Node("mix", ops.LinearCombination([1.0, -2.0, 0.5]), ("abs", "relu", "a")),
        Node("l1", ops.L1Norm(), ("mix",)),
        Node("linf", ops.LInfDistance(rng.standard_normal(4), weight=0.7), ("b",)),
        Node("max", ops.MaxAffine(rng.standard_normal((3, 4)), rng.standard_normal(3)), ("mix",)),
        Node("loss", ops.Add(), ("l1", "linf", "max")),
    ])


def few_shot_mlp(rng):
    """θ holds both layers of an MLP fine-tuned on m = 4 examples with 3 classes."""
    n_in, hidden, classes = 3, 5, 3
    p1, p2 = hidden * n_in + hidden, classes * hidden + classes
    return Graph(p1 + p2, [
        Node("w1", ops.Slice(0, p1), ("theta",)),
        Node("w2", ops.Slice(p1, p1 + p2), ("theta",)),
        Node("h", ops.ParamAffine(rng.standard_normal((4, n_in)), hidden), ("w1",)),
        Node("r", ops.ReLU(), ("h",)),
        Node("logits", ops.ParamAffineInput(classes), ("r", "w2")),
        Node("loss", ops.MultiMarginMean(rng.integers(0, classes, 4)), ("logits",)),
    ])


def regularised_hinge(rng):
    """A linear classifier with weights θ on 6 examples, hinge loss plus 0.1·‖θ‖²."""
    return Graph(4, [
        Node("scores", ops.ParamAffine(rng.standard_normal((6, 3)), 1), ("theta",)),
        Node("hinge", ops.Hinge(rng.choice([-1.0, 1.0], 6)), ("scores",)),
        Node("reg", ops.SquaredNorm(), ("theta",)),
        Node("scaled", ops.Scale(0.1), ("reg",)),
        Node("loss", ops.Add(), ("hinge", "scaled")),
    ])


@pytest.mark.parametrize("build", [cnn_chain, branching_dag, few_shot_mlp, regularised_hinge])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_graph_gradient_matches_finite_differences(build, seed):
    rng = np.random.default_rng(seed)
    graph = build(rng)
    theta = rng.standard_normal((2, graph.dim))
    values = evaluate(graph, theta)
    assert all(values[n].shape[1:] == graph.shape(n) for n in graph.order)
    assert_close(backprop(graph, values), fd_graph(graph, theta))
    assert all(check.ok for check in check_gradients(graph, seed=seed % 1000))


def test_dag_graphs_branch_and_merge():
    for build in (branching_dag, few_shot_mlp, regularised_hinge):
        graph = build(np.random.default_rng(0))
        assert len(graph.children[graph.root]) == 2
        assert any(len(graph.parents(n)) >= 2 for n in graph.order)
