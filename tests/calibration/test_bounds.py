"""Clopper–Pearson upper bound: agreement with the Beta quantile, exact validity, monotonicity."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import beta, binom

from calibration.bounds import clopper_pearson_upper, clopper_pearson_upper_many

DELTAS = (0.5, 0.1, 0.05, 0.01, 0.05 / 101)
SIZES = (1, 2, 5, 17, 50, 200, 1000)


@pytest.mark.parametrize(("n", "delta"), list(itertools.product(SIZES, DELTAS)))
def test_matches_scipy_beta_quantile(n: int, delta: float) -> None:
    ks = np.arange(n)
    expected = beta.ppf(1.0 - delta, ks + 1, n - ks)
    np.testing.assert_allclose(clopper_pearson_upper_many(ks, n, delta), expected, rtol=1e-9, atol=1e-12)
    for k in {0, n // 2, n - 1}:  # the scalar entry point on a few points
        assert clopper_pearson_upper(k, n, delta) == pytest.approx(expected[k], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("delta", DELTAS)
def test_trivial_cases_give_one(delta: float) -> None:
    assert clopper_pearson_upper(0, 0, delta) == 1.0
    for n in SIZES:
        assert clopper_pearson_upper(n, n, delta) == 1.0


@pytest.mark.parametrize("n", SIZES)
def test_zero_harms_has_closed_form(n: int) -> None:
    # Beta(1, n) quantile: 1 - (1 - x)^n = 1 - delta.
    assert clopper_pearson_upper(0, n, 0.05) == pytest.approx(1.0 - 0.05 ** (1.0 / n), rel=1e-10)


@pytest.mark.parametrize(("n", "delta"), [(10, 0.05), (60, 0.05), (300, 0.05 / 101), (40, 0.2)])
def test_bound_is_exactly_valid(n: int, delta: float) -> None:
    """P(upper(K) < p) <= delta for every p, computed exactly from the binomial pmf (no simulation)."""
    bounds = clopper_pearson_upper_many(np.arange(n + 1), n, delta)
    worst = 0.0
    for p in np.linspace(0.001, 0.999, 500):
        miss = binom.pmf(np.arange(n + 1), n, p)[bounds < p].sum()
        worst = max(worst, miss)
    assert worst <= delta + 1e-12
    # and not absurdly loose: somewhere the miss probability comes within a factor 3 of delta
    assert worst >= delta / 3


@pytest.mark.parametrize("delta", DELTAS)
def test_monotone_in_k_and_falls_with_n_at_fixed_rate(delta: float) -> None:
    for n in SIZES:
        bounds = clopper_pearson_upper_many(np.arange(n + 1), n, delta)
        assert np.all(np.diff(bounds[:n]) > 0)  # strictly increasing up to k = n - 1
        assert bounds[n] == 1.0
    for rate in (0.0, 0.05, 0.1, 0.25, 0.5):
        sizes = np.array([20, 40, 100, 400, 2000])
        bounds = clopper_pearson_upper_many(np.round(rate * sizes), sizes, delta)
        assert np.all(np.diff(bounds) < 0)
        assert np.all(bounds >= rate)


@given(
    k=st.integers(0, 300),
    extra=st.integers(1, 300),
    delta_small=st.floats(1e-6, 0.2),
    delta_ratio=st.floats(1.5, 4.0),
)
def test_smaller_delta_gives_larger_bound(k: int, extra: int, delta_small: float, delta_ratio: float) -> None:
    n = k + extra
    assert clopper_pearson_upper(k, n, delta_small) > clopper_pearson_upper(k, n, delta_small * delta_ratio)


def test_vectorised_agrees_with_scalar_and_broadcasts() -> None:
    ks = np.array([0, 3, 7, 10])
    bounds = clopper_pearson_upper_many(ks, 10, 0.05)
    assert bounds.shape == (4,)
    for k, b in zip(ks, bounds, strict=True):
        assert b == clopper_pearson_upper(int(k), 10, 0.05)
    grid = clopper_pearson_upper_many(np.array([[0], [1]]), np.array([5, 10, 0]) + 1, 0.1)
    assert grid.shape == (2, 3)


@pytest.mark.parametrize(
    ("k", "n", "delta"),
    [(-1, 5, 0.05), (6, 5, 0.05), (1, 5, 0.0), (1, 5, 1.0), (1, -2, 0.05), (0.5, 5, 0.05)],
)
def test_rejects_invalid_inputs(k: float, n: int, delta: float) -> None:
    with pytest.raises(ValueError):
        clopper_pearson_upper_many(k, n, delta)


def test_returns_plain_float() -> None:
    value = clopper_pearson_upper(3, 40, 0.05)
    assert isinstance(value, float)
    assert math.isfinite(value)
