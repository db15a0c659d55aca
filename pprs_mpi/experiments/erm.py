"""§5, eq. (16): PPRS against GPipe on a finite sum with m ≪ Δ (few-shot fine-tuning): `experiments erm`.

The paper's claim: on an empirical risk over m examples, GPipe pipelines the m per-example gradients through
Δ stages, 2(m + Δ − 1) time units per full gradient, while PPRS pipelines K noisy copies for each example,
2(K·m + Δ − 1) per iteration; with m ≪ Δ the depth term dominates and PPRS's fewer iterations should pay off.

The problem is `fewshot` (the digits CNN's last two layers fine-tuned on m shots from a perturbed start; pair p
is problem seed p: which shots, and the start). GPipe is GD on that objective (and 'GPipe+momentum' AGD) with
K = 1, γ = 0, re-timed at 2(m + Δ − 1) per iteration. The hinge loss on a few shots reaches exactly 0 soon, so
the criterion is speed: the configuration kept is the fastest mean tuning curve to loss ≤ 0.01 (`--select 0.01`),
and pairs are compared on their time to that level. Everything else is Figure 3's protocol (fig3.py): tuned on
tuning pairs, grids grown past edges, reported on held-out pairs, one main comparison per depth (verdict.py).
"""

from __future__ import annotations

from pprs_mpi.experiments import fig3
from pprs_mpi.experiments.fig3 import Experiment, Grid, half_decades, per_decade

DEFAULT = Grid(lrs=half_decades(1e-1, 1e-3), baseline_lrs=per_decade(1e-1, 1e-3, 4), gammas=(1e-1, 1e-2, 1e-3),
               Ks=(2, 10), pprs_mus=(0.0, 0.9), agd_mus=(0.9,),
               budgets=((20, 480), (20, 1_920), (200, 4_080), (200, 16_320)), tune_pairs=tuple(range(30)),
               report_pairs=tuple(range(30, 70)), eval_points=10, select="0.01", extend_rounds=2)
QUICK = Grid(lrs=(1e-2, 1e-3), baseline_lrs=(1e-2, 1e-3), gammas=(1e-2,), Ks=(2,), pprs_mus=(0.0,), agd_mus=(0.9,),
             budgets=((20, 480), (200, 4_080)), tune_pairs=(0, 1), report_pairs=(2, 3), eval_points=4,
             select="0.01")
ERM = Experiment("erm", __doc__.splitlines()[0], DEFAULT, QUICK, "fewshot", {"gd": "GPipe", "agd": "GPipe+momentum"})


def main(argv: list[str]) -> int:
    return fig3.main(argv, ERM)
