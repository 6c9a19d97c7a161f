"""Conformal (risk-controlling) choice of the gate threshold τ, as in SPEC §3.

Each calibration unit has a gate score g ∈ [0, 1] and a binary harm label. A threshold τ activates the
units with g ≥ τ; its risk is the harm rate among them. We want the τ that activates as many units as
possible while, with probability ≥ 1 − δ over the calibration draw, its true risk stays ≤ α.

Two ways to turn per-τ Clopper–Pearson tests into that guarantee over a whole grid of τ:

* ``bonferroni``: test every τ at level δ/|grid| and keep the feasible τ with the highest coverage.
  Valid for any shape of the risk curve.
* ``fixed_sequence``: test τ from high to low, each at level δ, and stop at the first failure; the
  answer is the last τ that passed. No split of δ, so it certifies more coverage when the risk falls
  as τ rises (the expected shape for a useful gate), but one unlucky τ early in the scan ends it.

Choice for ``fixed_sequence``: the top of the grid activates few or no calibration units (τ = 1.0
needs g ≥ 1), and a threshold that activates fewer units than a certificate needs even with zero harms
(about log δ / log(1 − α), 29 at the defaults) can never pass, so a literal scan would nearly always stop
at once. We skip those leading thresholds, empty ones included, as vacuous. The skip depends on the
scores alone, never on the harm labels, and the guarantee degrades by at most the probability that the
highest truly infeasible grid threshold τ_b is skipped, P(#{g ≥ τ_b} < that minimum): negligible unless
the infeasible thresholds at the top of the grid hold less than ~30/n of the score mass (a risk curve that
falls as τ rises has its infeasible thresholds at the bottom, where the mass is).

Both methods assume the calibration units are exchangeable with (drawn like) the units the service
will score; units from one post are correlated, so calibrate on posts split off before training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibration.bounds import clopper_pearson_upper_many
from calibration.result import HARM_DEFINITIONS, METHODS, CalibrationResult, Method

__all__ = [
    "CalibrationResult",
    "RiskCurve",
    "activation_rate",
    "calibrate_threshold",
    "default_grid",
    "risk_curve",
]

logger = logging.getLogger(__name__)


def default_grid() -> NDArray[np.float64]:
    """The SPEC's 101 thresholds 0.00, 0.01, …, 1.00 (rounded, so τ reads 0.57 and not 0.5700000000000001)."""
    return np.round(np.linspace(0.0, 1.0, 101), 2)


def activation_rate(scores: ArrayLike, tau: float) -> float:
    """Share of units with score ≥ τ (0.0 for τ = +∞ or no units)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    return float(np.mean(values >= tau))


@dataclass(frozen=True)
class RiskCurve:
    """Per-threshold counts on the calibration set, ascending in τ."""

    tau: NDArray[np.float64]  # (T,) thresholds, strictly increasing
    n_activated: NDArray[np.int64]  # (T,) units with g >= tau
    n_harm: NDArray[np.int64]  # (T,) harmful units among them
    n: int  # calibration units

    @property
    def coverage(self) -> NDArray[np.float64]:
        return self.n_activated / self.n if self.n else np.zeros_like(self.tau)

    @property
    def risk(self) -> NDArray[np.float64]:
        # An empty activation set causes no harm; its bound (1.0) is what marks it uninformative.
        return np.divide(
            self.n_harm, self.n_activated, out=np.zeros_like(self.tau), where=self.n_activated > 0
        )


def _validate_inputs(scores: ArrayLike, harm: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    score_arr = np.asarray(scores, dtype=np.float64)
    harm_raw = np.asarray(harm)
    if score_arr.ndim != 1 or harm_raw.ndim != 1 or score_arr.shape != harm_raw.shape:
        raise ValueError(
            f"scores and harm must be 1-D of equal length, got {score_arr.shape} and {harm_raw.shape}"
        )
    if not np.all(np.isfinite(score_arr)) or np.any((score_arr < 0.0) | (score_arr > 1.0)):
        raise ValueError("gate scores must be finite and lie in [0, 1]")
    if harm_raw.dtype != np.bool_ and not np.all(np.isin(harm_raw, (0, 1))):
        raise ValueError("harm must be boolean (or 0/1)")
    return score_arr, harm_raw.astype(np.bool_)


def _validate_grid(grid: ArrayLike | None) -> NDArray[np.float64]:
    if grid is None:
        return default_grid()
    # Sorted and deduplicated: duplicates would inflate |grid| and the Bonferroni split.
    grid_arr = np.unique(np.asarray(grid, dtype=np.float64).ravel())
    if grid_arr.size == 0 or not np.all(np.isfinite(grid_arr)):
        raise ValueError("grid must hold at least one finite threshold")
    return grid_arr


def risk_curve(scores: ArrayLike, harm: ArrayLike, grid: ArrayLike | None = None) -> RiskCurve:
    """Activated and harmful counts at every grid threshold, in O((n + T) log n)."""
    score_arr, harm_arr = _validate_inputs(scores, harm)
    tau = _validate_grid(grid)
    order = np.argsort(score_arr, kind="stable")
    sorted_scores = score_arr[order]
    # harm_before[i] = harms among the i lowest scores; harms at g >= tau = total - harm_before[first].
    harm_before = np.concatenate(([0], np.cumsum(harm_arr[order], dtype=np.int64)))
    first = np.searchsorted(sorted_scores, tau, side="left")
    n = int(score_arr.size)
    return RiskCurve(
        tau=tau,
        n_activated=(n - first).astype(np.int64),
        n_harm=(harm_before[-1] - harm_before[first]).astype(np.int64),
        n=n,
    )


def _choose_bonferroni(feasible: NDArray[np.bool_]) -> int | None:
    # Coverage never rises with τ, so the highest coverage among feasible τ is the lowest feasible τ
    # (which also breaks ties between thresholds that activate the same calibration units).
    candidates = np.flatnonzero(feasible)
    return int(candidates[0]) if candidates.size else None


def _choose_fixed_sequence(
    passed: NDArray[np.bool_], can_pass: NDArray[np.bool_]
) -> tuple[int | None, int | None]:
    """Scan τ from high to low; return (last index that passed, index where the scan stopped)."""
    chosen: int | None = None
    for index in range(passed.size - 1, -1, -1):
        if chosen is None and not can_pass[index]:
            continue  # leading vacuous thresholds: no harm count could pass them (module docstring)
        if not passed[index]:
            return chosen, index
        chosen = index
    return chosen, None


def _infeasible_reason(
    n: int, curve_bounds: NDArray[np.float64], stopped: int | None, alpha: float, level: float, method: Method
) -> str:
    if n == 0:
        return "no calibration units: nothing can be certified, vision is never activated"
    # With zero harms the bound is 1 - level**(1/m); it is <= alpha only from this many activated units.
    needed = math.ceil(math.log(level) / math.log1p(-alpha))
    if method == "fixed_sequence" and stopped is not None:
        evidence = f"the scan stopped at its first testable threshold, risk bound {curve_bounds[stopped]:.4f}"
    else:
        evidence = f"the smallest risk bound is {curve_bounds.min():.4f}"
    return (
        f"no threshold certified ({method}): {evidence} > alpha={alpha}; n={n} calibration units, and "
        f"even with zero harms a threshold must activate at least {needed} units at level {level:.3g}; "
        "vision is never activated"
    )


def calibrate_threshold(
    scores: ArrayLike,
    harm: ArrayLike,
    *,
    alpha: float = 0.10,
    delta: float = 0.05,
    method: Method = "bonferroni",
    grid: ArrayLike | None = None,
    harm_definition: str = "forced_vision_wrong",
    groups: ArrayLike | None = None,
) -> CalibrationResult:
    """Choose the gate threshold τ with the highest coverage whose harm rate is certified ≤ α.

    Args:
        scores: gate score g ∈ [0, 1] per calibration unit.
        harm: True where activating vision for the unit is harmful (see ``harm_definition``).
        alpha: tolerated harm rate among activated units.
        delta: tolerated probability that the certificate is wrong.
        method: ``"bonferroni"`` or ``"fixed_sequence"`` (see the module docstring).
        grid: thresholds to try; default :func:`default_grid` (101 values).
        harm_definition: ``"forced_vision_wrong"`` (the paper's) or ``"not_groundable"``; recorded only.
        groups: optional group label per unit (e.g. the dataset). Then a threshold is feasible only if it
            is certified in every group: with probability >= 1 - δ every group's risk at the chosen τ is
            <= α, not only the pooled mixture's. No split of δ over groups is needed: a failure needs the
            test of one fixed (threshold, group) pair whose true risk exceeds α to pass (fixed-sequence:
            the first infeasible threshold in scan order and a group infeasible there; Bonferroni: per
            threshold, one group infeasible there), an intersection-union argument.

    Returns:
        A :class:`CalibrationResult`. When no threshold is certified, ``tau`` is ``math.inf`` (never
        activate), ``feasible`` is False and ``reason`` says why.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if harm_definition not in HARM_DEFINITIONS:
        raise ValueError(f"harm_definition must be one of {HARM_DEFINITIONS}, got {harm_definition!r}")
    if not 0.0 < alpha < 1.0 or not 0.0 < delta < 1.0:
        raise ValueError(f"alpha and delta must lie in (0, 1), got alpha={alpha!r}, delta={delta!r}")

    curve = risk_curve(scores, harm, grid)
    grid_size = int(curve.tau.size)
    by_group = _group_curves(scores, harm, groups, curve.tau)
    level = delta / (grid_size if method == "bonferroni" else 1)  # groups need no share of δ (see docstring)
    tested = by_group or {"": curve}
    group_bounds = {
        name: clopper_pearson_upper_many(c.n_harm, c.n_activated, level) for name, c in tested.items()
    }
    # a threshold passes only where it passes in every group; its reported bound is the worst group's
    passed = np.logical_and.reduce(
        [(c.n_activated > 0) & (group_bounds[name] <= alpha) for name, c in tested.items()]
    )
    bounds = np.max(np.stack(list(group_bounds.values())), axis=0)
    stopped: int | None = None
    scan_start: float | None = None
    if method == "bonferroni":
        chosen = _choose_bonferroni(passed)
    else:
        # The best a threshold could do is zero harms among its activated units, in every group.
        can_pass = np.logical_and.reduce(
            [
                (c.n_activated > 0) & (clopper_pearson_upper_many(0, c.n_activated, level) <= alpha)
                for c in tested.values()
            ]
        )
        chosen, stopped = _choose_fixed_sequence(passed, can_pass)
        testable = np.flatnonzero(can_pass)
        scan_start = float(curve.tau[testable[-1]]) if testable.size else None

    coverage, risk = curve.coverage, curve.risk
    columns = (
        curve.tau.tolist(),
        curve.n_activated.tolist(),
        coverage.tolist(),
        risk.tolist(),
        bounds.tolist(),
    )
    points = tuple(
        {"tau": t, "n_activated": a, "coverage": c, "risk": r, "bound": b}
        for t, a, c, r, b in zip(*columns, strict=True)
    )
    if chosen is None:
        reason = _infeasible_reason(curve.n, bounds, stopped, alpha, level, method)
        logger.warning("gate calibration infeasible: %s", reason)
        # A rule that never fires harms no unit, hence risk and bound 0; `feasible` carries the news.
        n_activated, tau, cov, emp_risk, bound = 0, math.inf, 0.0, 0.0, 0.0
    else:
        n_activated, tau = int(curve.n_activated[chosen]), float(curve.tau[chosen])
        cov, emp_risk, bound = float(coverage[chosen]), float(risk[chosen]), float(bounds[chosen])
        reason = (
            f"tau={tau:.4g} activates {n_activated}/{curve.n} units with risk bound {bound:.4f} "
            f"<= alpha={alpha} at level {level:.3g} ({method})"
        )
        logger.info("gate calibration: %s", reason)
    return CalibrationResult(
        method=method,
        alpha=float(alpha),
        delta=float(delta),
        n=curve.n,
        n_activated=n_activated,
        tau=tau,
        coverage=cov,
        empirical_risk=emp_risk,
        risk_bound=bound,
        feasible=chosen is not None,
        reason=reason,
        harm_definition=harm_definition,
        grid_size=grid_size,
        groups=_group_figures(by_group, group_bounds, chosen if chosen is not None else stopped),
        test_level=level,
        scan_start_tau=scan_start,
        curve=points,
    )


def _group_curves(
    scores: ArrayLike, harm: ArrayLike, groups: ArrayLike | None, grid: NDArray[np.float64]
) -> dict[str, RiskCurve]:
    if groups is None:
        return {}
    labels = np.asarray(groups).astype(str)
    score_arr, harm_arr = np.asarray(scores, dtype=np.float64), np.asarray(harm)
    if labels.shape != score_arr.shape:
        raise ValueError(f"groups must have one label per unit, got {labels.shape} for {score_arr.shape}")
    return {
        str(g): risk_curve(score_arr[labels == g], harm_arr[labels == g], grid) for g in np.unique(labels)
    }


def _group_figures(
    by_group: dict[str, RiskCurve], bounds: dict[str, NDArray[np.float64]], chosen: int | None
) -> dict[str, dict[str, float]]:
    """Each group's figures at the chosen threshold; when none was certified, at the one where the scan
    stopped (with ``tau``), so a reader sees which group failed and by how much."""
    figures = {}
    for name, c in by_group.items():
        if chosen is None:
            figures[name] = {"n": c.n, "n_activated": 0, "coverage": 0.0, "risk": 0.0, "bound": 0.0}
        else:
            figures[name] = {
                "tau": float(c.tau[chosen]),
                "n": c.n,
                "n_activated": int(c.n_activated[chosen]),
                "coverage": float(c.coverage[chosen]),
                "risk": float(c.risk[chosen]),
                "bound": float(bounds[name][chosen]),
            }
    return figures
