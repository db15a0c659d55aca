"""A 95% confidence interval of f^γ(x_t) from the K sample values f(x_t + γX_k) of one iteration.

f^γ(x_t) = E f(x_t + γX) is what the K samples estimate; their mean is the trace's f_smoothed. The
interval is Student's: mean ± t_{0.975, n−1} s/√n over n independent values. Antithetic samples come in
dependent pairs (X, −X), so there the n = K/2 pair means are the independent values. With one value
(K = 1, or one antithetic pair) there is no spread to estimate: the interval is NaN.
"""

from __future__ import annotations

import math

import numpy as np

# t_{0.975, ν} for ν = 1..30 (SciPy's `stats.t.ppf(0.975, ν)`, to 6 decimals; a test checks them).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.13145, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.04523, 2.042272)
_Z975 = 1.959963984540054


def t_quantile(dof: int) -> float:
    """t_{0.975, dof}: the table up to 30, the Cornish-Fisher expansion in 1/dof beyond (error < 1e-6)."""
    if dof <= len(_T975):
        return _T975[dof - 1]
    z, n = _Z975, float(dof)
    return (z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3))


def confidence_interval(values: np.ndarray, antithetic: bool = False) -> tuple[float, float]:
    """(low, high) of the 95% interval of the mean of `values` (the K sample values, in sample order)."""
    values = np.asarray(values, dtype=np.float64)
    if antithetic:
        values = values.reshape(-1, 2).mean(axis=1)
    n = values.size
    if n < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    half = t_quantile(n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half
