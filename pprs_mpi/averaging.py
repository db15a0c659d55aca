"""Averaged iterates (`--average polyak|suffix:F`): the mean of the y_t, evaluated and stored beside y_t.

With constant η and γ the iterates of a non-smooth problem keep moving in a band whose width grows with η
and γ√d, so f(y_T) sits above the best f seen; the mean of the iterates damps that band (Polyak and
Juditsky's averaging; the suffix average of Rakhlin, Shamir and Sridharan keeps only the last fraction F of
the T iterates, forgetting the early ones). The mean is one more array of the optimizer's state ("avg"), so
a checkpoint stores it and a resume continues it bitwise; it is updated by a pure function of (state, t).
"""

from __future__ import annotations

import math

KINDS = ("none", "polyak", "suffix")


def parse(text: str) -> tuple[str, float]:
    """('none', 0), ('polyak', 1) or ('suffix', F) from `none`, `polyak` or `suffix:F`; ValueError otherwise."""
    kind, _, fraction = str(text).partition(":")
    if kind in ("none", "polyak") and not fraction:
        return kind, 0.0 if kind == "none" else 1.0
    if kind == "suffix":
        try:
            value = float(fraction)
        except ValueError:
            value = math.nan
        if 0.0 < value <= 1.0:
            return kind, value
    raise ValueError(f"average must be none, polyak or suffix:F with F in (0, 1], got {text!r}")


def valid(text) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def first_averaged(text: str, iters: int) -> int:
    """The number of iterations after which y enters the mean: the mean is that of y_{s+1}, ..., y_t, with
    s = 0 for polyak and s = T − ⌈F T⌉ for suffix:F."""
    kind, fraction = parse(text)
    return 0 if kind == "polyak" else iters - math.ceil(fraction * iters)


class Averaged:
    """An optimizer whose state also holds "avg": the mean of y_{s+1}, ..., y_t after t iterations (y_t
    itself while t ≤ s, before the averaging starts)."""

    def __init__(self, inner, start: int):
        self.inner, self.start = inner, start
        self.names = (*inner.names, "avg")

    def init(self, x0) -> dict:
        state = self.inner.init(x0)
        return {**state, "avg": state["y"]}

    def step(self, state: dict, grad, t: int) -> dict:
        following = self.inner.step({k: v for k, v in state.items() if k != "avg"}, grad, t)
        count = t + 1 - self.start  # iterates in the mean once y_{t+1} is in
        y = following["y"]
        avg = y if count <= 1 else state["avg"] + (y - state["avg"]) / count
        return {**following, "avg": avg}


def wrap(optimizer, average: str, iters: int):
    """`optimizer`, averaged as `average` asks (unchanged for 'none')."""
    if parse(average)[0] == "none":
        return optimizer
    return Averaged(optimizer, first_averaged(average, iters))
