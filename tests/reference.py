"""A plain reverse-mode reference, independent of schedules and engines, that tests compare against."""

import numpy as np


def evaluate(graph, theta):
    """Every node's value for a batch of inputs theta (B, d), in topological order."""
    values = {graph.root: theta}
    for name in graph.order:
        values[name] = graph.op(name).forward(np, *(values[p] for p in graph.parents(name)))
    return values


def backprop(graph, values):
    """Reverse mode over the topological order, summing the cotangents a node gets from its children."""
    cotangents = {graph.leaf: np.ones_like(values[graph.leaf])}
    for name in reversed(graph.order):
        parents = graph.parents(name)
        grads = graph.op(name).vjp(np, [values[p] for p in parents], values[name], cotangents.pop(name))
        for parent, grad in zip(parents, grads):
            cotangents[parent] = cotangents[parent] + grad if parent in cotangents else grad
    return cotangents[graph.root]
