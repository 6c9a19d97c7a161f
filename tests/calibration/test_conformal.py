"""Threshold calibration: the (α, δ) guarantee by simulation, selection properties, edge cases."""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import integrate, stats

from calibration import (
    METHODS,
    CalibrationResult,
    Method,
    activation_rate,
    calibrate_threshold,
    default_grid,
    risk_curve,
)

ALPHA, DELTA = 0.10, 0.05
N_CAL = 500  # calibration units per draw
N_DRAWS = 1000  # calibration draws per scenario and method
GRID = default_grid()
# The allowed share of draws whose chosen threshold has true risk > alpha: delta plus 3 binomial SEs.
TOLERATED = DELTA + 3.0 * math.sqrt(DELTA * (1.0 - DELTA) / N_DRAWS)


# ---------------------------------------------------------------------------------------------------------
# Generative models with a known risk curve
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Gate scores g ~ `scores`, harm ~ Bernoulli(harm_prob(g)), independently per unit."""

    scores: stats.rv_continuous  # frozen scipy distribution on [0, 1]
    harm_prob: Callable[[NDArray[np.float64]], NDArray[np.float64]]
    breakpoints: tuple[float, ...] = ()  # kinks of harm_prob, for the quadrature

    def true_risk(self) -> NDArray[np.float64]:
        """P(harm | g >= tau) for every grid tau, by quadrature; NaN where P(g >= tau) = 0."""
        risks = np.full(GRID.size, np.nan)
        for i, tau in enumerate(GRID):
            mass = float(self.scores.sf(tau))
            if mass <= 0.0:
                continue
            inner = [b for b in self.breakpoints if tau < b < 1.0] or None
            harm_mass, _ = integrate.quad(
                lambda s: float(self.harm_prob(np.array(s))) * float(self.scores.pdf(s)),
                tau,
                1.0,
                points=inner,
            )
            risks[i] = harm_mass / mass
        return risks

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[NDArray, NDArray]:
        g = self.scores.rvs(size=shape, random_state=rng)
        return g, rng.random(shape) < self.harm_prob(g)


SCENARIOS: dict[str, Scenario] = {
    # Useful gates: harm falls as the score rises. The oracle's thresholds are 0.23 (coverage 0.77)
    # and 0.43 (coverage 0.78).
    "falling_risk_uniform": Scenario(stats.uniform(), lambda g: 0.5 * (1.0 - g) ** 2),
    "falling_risk_beta": Scenario(stats.beta(3, 2), lambda g: 0.5 / (1.0 + np.exp(12.0 * (g - 0.5)))),
    # A useless gate with harm just above alpha: every activation is a violation.
    "flat_risk_above_alpha": Scenario(stats.uniform(), lambda g: np.full_like(g, ALPHA + 0.01)),
    # Harm well below alpha everywhere: nothing can go wrong, and activating everything is right.
    "flat_risk_below_alpha": Scenario(stats.uniform(), lambda g: np.full_like(g, 0.05)),
    # An over-confident gate: the top 3% of scores are mostly harmful. Adversarial for the fixed-sequence
    # skip of leading thresholds that activate too few units to be testable (the scan then certifies
    # nothing, the price of testing from the top; Bonferroni still finds tau = 0).
    "harmful_top_band": Scenario(
        stats.uniform(), lambda g: np.where(g >= 0.97, 0.9, 0.02), breakpoints=(0.97,)
    ),
}


@functools.cache
def true_risk(name: str) -> NDArray[np.float64]:
    return SCENARIOS[name].true_risk()


@dataclass(frozen=True)
class Outcomes:
    """Per draw: the chosen threshold's grid index (-1 for never activate) and its calibration coverage."""

    index: NDArray[np.int64]
    coverage: NDArray[np.float64]
    naive_index: NDArray[np.int64]  # the rule "lowest tau with empirical risk <= alpha", for contrast

    def violation_rate(self, risk: NDArray[np.float64], naive: bool = False) -> float:
        chosen = self.naive_index if naive else self.index
        risk_at = np.where(chosen >= 0, risk[np.maximum(chosen, 0)], 0.0)
        return float(np.mean(np.nan_to_num(risk_at, nan=0.0) > ALPHA))


@functools.cache
def simulate(name: str, method: Method) -> Outcomes:
    # Seeded by scenario only: both methods see the same draws, so their coverages compare pairwise.
    rng = np.random.default_rng([2026, zlib.crc32(name.encode())])
    scores, harm = SCENARIOS[name].sample(rng, (N_DRAWS, N_CAL))  # vectorised draws
    index = np.full(N_DRAWS, -1)
    naive = np.full(N_DRAWS, -1)
    coverage = np.zeros(N_DRAWS)
    for d in range(N_DRAWS):
        result = calibrate_threshold(scores[d], harm[d], alpha=ALPHA, delta=DELTA, method=method)
        if result.feasible:
            index[d] = int(np.searchsorted(GRID, result.tau))
            assert GRID[index[d]] == result.tau
        coverage[d] = result.coverage
        ok = [i for i, p in enumerate(result.curve) if p["n_activated"] > 0 and p["risk"] <= ALPHA]
        naive[d] = ok[0] if ok else -1
    return Outcomes(index=index, coverage=coverage, naive_index=naive)


# ---------------------------------------------------------------------------------------------------------
# The guarantee, by simulation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_true_risk_oracle_matches_a_large_sample(name: str) -> None:
    """The quadrature risk the guarantee tests rely on agrees with a 200k-unit test draw."""
    scores, harm = SCENARIOS[name].sample(np.random.default_rng(7), (200_000,))
    risk = true_risk(name)
    for i in (0, 30, 60, 90, 98):
        activated = scores >= GRID[i]
        empirical = harm[activated].mean()
        se = math.sqrt(risk[i] * (1.0 - risk[i]) / activated.sum())
        assert abs(empirical - risk[i]) <= 4.0 * se + 1e-9, (name, GRID[i])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_risk_guarantee_holds_by_simulation(name: str, method: Method) -> None:
    """P(true risk among activated units at the chosen tau > alpha) <= delta, up to Monte-Carlo error."""
    outcomes = simulate(name, method)
    assert outcomes.violation_rate(true_risk(name)) <= TOLERATED


@pytest.mark.parametrize("name", ["falling_risk_uniform", "falling_risk_beta", "flat_risk_above_alpha"])
def test_naive_empirical_rule_breaks_the_guarantee(name: str) -> None:
    """Choosing tau by "empirical risk <= alpha" violates far more often: the simulation can fail."""
    naive_rate = simulate(name, "bonferroni").violation_rate(true_risk(name), naive=True)
    assert naive_rate >= 0.3
    assert naive_rate > 4 * TOLERATED


@pytest.mark.parametrize("name", ["falling_risk_uniform", "falling_risk_beta"])
def test_useful_gate_gets_a_useful_threshold(name: str) -> None:
    """Not vacuous: when a threshold exists, both methods find one and send a fair share to vision."""
    for method in METHODS:
        outcomes = simulate(name, method)
        assert np.mean(outcomes.index >= 0) >= 0.9, method
        assert outcomes.coverage.mean() >= 0.3, method
    # With risk falling in tau, the undivided delta of fixed-sequence testing buys more coverage.
    bonferroni, fixed = simulate(name, "bonferroni"), simulate(name, "fixed_sequence")
    assert fixed.coverage.mean() > bonferroni.coverage.mean()


def test_fixed_sequence_spends_its_error_budget() -> None:
    """Where the risk crosses alpha, the violation rate is near delta rather than 0: the measure is sharp."""
    for name in ("falling_risk_uniform", "flat_risk_above_alpha"):
        assert simulate(name, "fixed_sequence").violation_rate(true_risk(name)) >= DELTA / 10


def test_flat_low_risk_activates_almost_everything_with_bonferroni() -> None:
    outcomes = simulate("flat_risk_below_alpha", "bonferroni")
    assert np.mean(outcomes.index >= 0) >= 0.75
    assert outcomes.coverage.mean() >= 0.75


# ---------------------------------------------------------------------------------------------------------
# Properties of the selection on arbitrary inputs
# ---------------------------------------------------------------------------------------------------------


@st.composite
def calibration_sets(draw: st.DrawFn) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    n = draw(st.integers(0, 400))
    seed = draw(st.integers(0, 2**31))
    harm_scale = draw(st.floats(0.0, 0.6))
    rng = np.random.default_rng(seed)
    scores = np.round(rng.beta(2, 2, n), draw(st.sampled_from([2, 3, 6])))  # rounding makes ties
    harm = rng.random(n) < harm_scale * (1.0 - scores)
    return scores, harm


@settings(max_examples=60, deadline=None)
@given(data=calibration_sets(), method=st.sampled_from(METHODS))
def test_result_agrees_with_a_direct_recount(
    data: tuple[NDArray[np.float64], NDArray[np.bool_]], method: Method
) -> None:
    scores, harm = data
    result = calibrate_threshold(scores, harm, method=method)
    level = DELTA / GRID.size if method == "bonferroni" else DELTA
    taus = np.array([p["tau"] for p in result.curve])
    activated = scores[None, :] >= taus[:, None]  # (T, n)
    m, k = activated.sum(axis=1), (activated & harm[None, :]).sum(axis=1)
    assert [p["n_activated"] for p in result.curve] == m.tolist()
    informative = k < m
    expected = np.ones(taus.size)
    expected[informative] = stats.beta.ppf(1 - level, k[informative] + 1, (m - k)[informative])
    np.testing.assert_allclose([p["bound"] for p in result.curve], expected, rtol=1e-8)
    assert result.coverage == activation_rate(scores, result.tau)
    if result.feasible:
        activated = scores >= result.tau
        assert result.n_activated == activated.sum() > 0
        assert result.empirical_risk == pytest.approx(harm[activated].mean())
        assert result.risk_bound <= ALPHA
        assert result.tau in GRID
    else:
        assert result.tau == math.inf and result.coverage == 0.0 and result.n_activated == 0
        assert "never activated" in result.reason


@settings(max_examples=60, deadline=None)
@given(data=calibration_sets())
def test_bonferroni_takes_the_highest_certified_coverage(data: tuple[NDArray, NDArray]) -> None:
    scores, harm = data
    result = calibrate_threshold(scores, harm, method="bonferroni")
    certified = [p for p in result.curve if p["n_activated"] > 0 and p["bound"] <= ALPHA]
    assert result.feasible == bool(certified)
    if certified:
        best = max(p["coverage"] for p in certified)
        assert result.coverage == best
        assert result.tau == min(p["tau"] for p in certified if p["coverage"] == best)


@settings(max_examples=60, deadline=None)
@given(data=calibration_sets())
def test_fixed_sequence_passes_every_tested_threshold_above_its_choice(data: tuple[NDArray, NDArray]) -> None:
    scores, harm = data
    result = calibrate_threshold(scores, harm, method="fixed_sequence")
    curve = result.curve
    testable = [
        i
        for i, p in enumerate(curve)
        if p["n_activated"] > 0 and 1.0 - DELTA ** (1.0 / p["n_activated"]) <= ALPHA
    ]
    if not testable:
        assert not result.feasible
        return
    top = testable[-1]  # the scan's first test
    if not result.feasible:
        assert curve[top]["bound"] > ALPHA
        return
    chosen = int(np.searchsorted(GRID, result.tau))
    assert all(curve[i]["bound"] <= ALPHA for i in range(chosen, top + 1))
    assert chosen == 0 or curve[chosen - 1]["bound"] > ALPHA  # it stopped at the first failure


@settings(max_examples=40, deadline=None)
@given(data=calibration_sets(), method=st.sampled_from(METHODS), flip_seed=st.integers(0, 2**31))
def test_more_harm_never_buys_more_coverage(
    data: tuple[NDArray, NDArray], method: Method, flip_seed: int
) -> None:
    scores, harm = data
    worse = harm | (np.random.default_rng(flip_seed).random(harm.size) < 0.2)
    before = calibrate_threshold(scores, harm, method=method)
    after = calibrate_threshold(scores, worse, method=method)
    assert after.coverage <= before.coverage


# ---------------------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_all_harmful_never_activates(method: Method) -> None:
    scores = np.random.default_rng(0).random(1000)
    result = calibrate_threshold(scores, np.ones(1000, dtype=bool), method=method)
    assert result.tau == math.inf and result.never_activate
    assert not result.feasible and result.coverage == 0.0 and result.n_activated == 0
    assert "no threshold certified" in result.reason and "never activated" in result.reason
    assert not result.activates(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_all_harmless_activates_everything(method: Method) -> None:
    scores = np.random.default_rng(1).random(200)
    result = calibrate_threshold(scores, np.zeros(200, dtype=bool), method=method)
    assert result.feasible
    assert result.tau == 0.0 and result.coverage == 1.0 and result.n_activated == 200
    assert result.empirical_risk == 0.0
    assert result.activates(0.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [0, 1, 5])
def test_tiny_calibration_sets_certify_nothing(method: Method, n: int) -> None:
    result = calibrate_threshold(np.full(n, 0.9), np.zeros(n, dtype=bool), method=method)
    assert result.tau == math.inf and not result.feasible and result.n == n
    assert result.reason
    if n == 0:
        assert "no calibration units" in result.reason
    else:
        assert "at least" in result.reason  # says how many units a certificate would need


@pytest.mark.parametrize("method", METHODS)
def test_minimum_sample_size_for_a_harmless_set(method: Method) -> None:
    """With zero harms, a certificate needs m >= log(level)/log(1 - alpha) units: one fewer fails."""
    level = DELTA / GRID.size if method == "bonferroni" else DELTA
    needed = math.ceil(math.log(level) / math.log(1.0 - ALPHA))
    for n, feasible in ((needed - 1, False), (needed, True)):
        result = calibrate_threshold(np.full(n, 0.7), np.zeros(n, dtype=bool), method=method)
        assert result.feasible == feasible, n


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0.0, 0.5, 0.731, 1.0])
def test_all_scores_equal(method: Method, value: float) -> None:
    scores = np.full(300, value)
    result = calibrate_threshold(scores, np.zeros(300, dtype=bool), method=method)
    # Every tau <= value activates the same 300 units; the lowest one is chosen.
    assert result.tau == 0.0 and result.coverage == 1.0
    harmful = calibrate_threshold(scores, np.arange(300) % 3 == 0, method=method)
    assert not harmful.feasible


def test_custom_grid_is_sorted_deduplicated_and_sets_the_bonferroni_split() -> None:
    scores = np.random.default_rng(3).random(400)
    harm = np.random.default_rng(4).random(400) < 0.3 * (1 - scores)
    result = calibrate_threshold(scores, harm, grid=[0.9, 0.2, 0.5, 0.5, 0.2])
    assert result.grid_size == 3
    assert [p["tau"] for p in result.curve] == [0.2, 0.5, 0.9]
    coarse = calibrate_threshold(scores, harm, grid=[0.5])
    fine = calibrate_threshold(scores, harm, grid=np.linspace(0, 1, 1001))
    assert coarse.curve[0]["bound"] < fine.curve[500]["bound"]  # a larger grid pays a larger split


def test_risk_curve_counts() -> None:
    curve = risk_curve([0.1, 0.5, 0.5, 0.9], [True, False, True, False], grid=[0.0, 0.5, 0.6, 1.0])
    assert curve.n_activated.tolist() == [4, 3, 1, 0]
    assert curve.n_harm.tolist() == [2, 1, 0, 0]
    assert curve.risk.tolist() == [0.5, 1 / 3, 0.0, 0.0]


def test_activation_rate() -> None:
    assert activation_rate([0.1, 0.5, 0.9, 0.95], 0.5) == 0.75
    assert activation_rate([0.1, 0.5], math.inf) == 0.0
    assert activation_rate([], 0.3) == 0.0


@pytest.mark.parametrize(
    ("scores", "harm", "kwargs"),
    [
        ([0.1, 0.2], [True], {}),
        ([0.1, 1.2], [True, False], {}),
        ([0.1, float("nan")], [True, False], {}),
        ([0.1, 0.2], [2, 0], {}),
        ([0.1, 0.2], [True, False], {"method": "holm"}),
        ([0.1, 0.2], [True, False], {"alpha": 0.0}),
        ([0.1, 0.2], [True, False], {"delta": 1.0}),
        ([0.1, 0.2], [True, False], {"harm_definition": "bad_vibes"}),
        ([0.1, 0.2], [True, False], {"grid": []}),
    ],
)
def test_rejects_invalid_inputs(scores: list, harm: list, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        calibrate_threshold(np.asarray(scores), np.asarray(harm), **kwargs)


def test_accepts_integer_harm_and_records_the_harm_definition() -> None:
    result = calibrate_threshold(
        np.linspace(0, 1, 200), np.zeros(200, dtype=int), harm_definition="not_groundable"
    )
    assert isinstance(result, CalibrationResult)
    assert result.harm_definition == "not_groundable" and result.feasible


# ---------------------------------------------------------------------------------------------------------
# Groups (one guarantee per dataset)
# ---------------------------------------------------------------------------------------------------------


def _group_draw(rng: np.random.Generator, n: int, slope: float) -> tuple[NDArray, NDArray]:
    """Scores uniform on [0, 1]; harm probability falls linearly from ``slope`` at g=0 to 0 at g=1."""
    g = rng.uniform(0, 1, n)
    return g, rng.uniform(0, 1, n) < slope * (1 - g)


def _true_group_risk(tau: float, slope: float) -> float:
    """Harm rate among g >= tau for the model above: the mean of slope*(1-g) over [tau, 1]."""
    return slope * (1 - tau) / 2 if tau < 1 else 0.0


@pytest.mark.parametrize("method", METHODS)
def test_grouped_guarantee_holds_in_every_group_by_simulation(method: Method) -> None:
    # an easy group and a hard one: pooled calibration would let the hard group exceed alpha
    rng = np.random.default_rng(11)
    failures = 0
    draws = 400
    for _ in range(draws):
        g1, h1 = _group_draw(rng, 400, 0.10)
        g2, h2 = _group_draw(rng, 400, 0.60)
        result = calibrate_threshold(
            np.concatenate([g1, g2]),
            np.concatenate([h1, h2]),
            method=method,
            groups=np.array(["easy"] * 400 + ["hard"] * 400),
        )
        if result.feasible and _true_group_risk(result.tau, 0.60) > ALPHA:
            failures += 1
    assert failures / draws <= DELTA + 3.0 * math.sqrt(DELTA * (1 - DELTA) / draws)


def test_pooled_calibration_can_break_the_hard_group_which_grouping_prevents() -> None:
    rng = np.random.default_rng(5)
    g1, h1 = _group_draw(rng, 4000, 0.02)
    g2, h2 = _group_draw(rng, 1000, 0.60)
    scores, harm = np.concatenate([g1, g2]), np.concatenate([h1, h2])
    groups = np.array(["easy"] * 4000 + ["hard"] * 1000)
    pooled = calibrate_threshold(scores, harm, method="fixed_sequence")
    grouped = calibrate_threshold(scores, harm, method="fixed_sequence", groups=groups)
    assert _true_group_risk(pooled.tau, 0.60) > ALPHA  # the mixture hides the hard group
    assert _true_group_risk(grouped.tau, 0.60) <= ALPHA
    assert grouped.tau > pooled.tau
    assert set(grouped.groups) == {"easy", "hard"}
    hard = grouped.groups["hard"]
    assert hard["bound"] <= ALPHA and hard["n"] == 1000
    # the groups share no split of delta: each is tested at the method's own level
    assert grouped.test_level == pytest.approx(DELTA)


def test_fixed_sequence_records_where_its_scan_started() -> None:
    rng = np.random.default_rng(2)
    g, h = _group_draw(rng, 300, 0.2)
    result = calibrate_threshold(g, h, method="fixed_sequence")
    assert result.scan_start_tau is not None and result.scan_start_tau < 1.0
    # the first tested threshold activates enough units that zero harms could pass
    assert np.sum(g >= result.scan_start_tau) >= math.ceil(math.log(DELTA) / math.log1p(-ALPHA))
    assert calibrate_threshold(g, h, method="bonferroni").scan_start_tau is None
    again = CalibrationResult.from_json(result.to_json())
    assert again.scan_start_tau == result.scan_start_tau and again.test_level == result.test_level
