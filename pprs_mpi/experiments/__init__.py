"""The paper's experiments as reproducible sweeps of `pprs_mpi.minimize` runs: `python -m pprs_mpi.experiments`.

fig3: §6's comparison of PPRS with GD and AGD (Figure 3), tuned and reported on separate pairs. erm: §5's
finite sum with m ≪ Δ, PPRS against GPipe, by the same protocol. rates:
eq. (13)'s bound against the measured error of PPRS with Theorem 3's parameters on convex problems with a
known optimum, and its decay exponent against the bound's (decay.py; `--step-rule wrong-small-step` shows the
check failing on a rule wrong on purpose). reproduction: docs/reproduction.md from the committed sources of those
runs (docs/data/).
"""
