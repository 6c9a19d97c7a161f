"""Exact one-sided confidence bounds on a binomial proportion.

The gate calibration (SPEC §3) certifies a threshold when an upper bound on the harm rate among the
units it activates stays below α. Clopper–Pearson is the exact (conservative) bound: for every true
rate p, P(upper(K, n, δ) < p) ≤ δ when K ~ Binomial(n, p), with no normal approximation, so the
guarantee holds even for the handful of units that a high threshold activates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaincinv

__all__ = ["clopper_pearson_upper", "clopper_pearson_upper_many"]


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")


def clopper_pearson_upper_many(k: ArrayLike, n: ArrayLike, delta: float) -> NDArray[np.float64]:
    """Vectorised :func:`clopper_pearson_upper`: bounds for arrays of harm counts ``k`` out of ``n``.

    ``k`` and ``n`` broadcast against each other. Entries with ``n == 0`` (no observation) or
    ``k == n`` get the trivial bound 1.0.
    """
    _check_delta(delta)
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    k_arr, n_arr = np.broadcast_arrays(k_arr, n_arr)
    if np.any(n_arr < 0) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError("need 0 <= k <= n for every entry")
    if np.any(k_arr != np.round(k_arr)) or np.any(n_arr != np.round(n_arr)):
        raise ValueError("k and n must be whole numbers")
    bound = np.ones(k_arr.shape, dtype=np.float64)
    # Beta(k+1, n-k) is undefined for k == n; the bound is 1 there anyway.
    informative = k_arr < n_arr
    if np.any(informative):
        bound[informative] = betaincinv(
            k_arr[informative] + 1.0, n_arr[informative] - k_arr[informative], 1.0 - delta
        )
    return bound


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1 − δ) Clopper–Pearson upper confidence bound on a binomial proportion.

    ``k`` harms were seen among ``n`` units. The bound is the (1 − δ) quantile of Beta(k + 1, n − k);
    it is 1.0 when ``n == 0`` (nothing observed, nothing can be claimed) and when ``k == n``.
    """
    return float(clopper_pearson_upper_many(k, n, delta))
