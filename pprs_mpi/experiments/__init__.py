"""The paper's experiments as reproducible sweeps of `pprs_mpi.minimize` runs: `python -m pprs_mpi.experiments`.

fig3: §6's comparison of PPRS with GD and AGD (Figure 3), tuned and reported on separate pairs. rates:
eq. (13)'s bound against the measured error of PPRS with Theorem 3's parameters on convex problems with a
known optimum. reproduction: docs/reproduction.md from a finished fig3 folder (and a rates folder).
"""
