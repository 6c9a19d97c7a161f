"""The outcome of a gate calibration and its on-disk form, ``calibration.json``.

JSON has no infinity, and the "never activate" outcome is τ = +∞. The file therefore writes
``"tau": null`` together with ``"never_activate": true``, and reading it back gives ``math.inf``; a
finite τ is written as a number with ``"never_activate": false``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["HARM_DEFINITIONS", "METHODS", "CalibrationResult", "Method"]

Method = Literal["bonferroni", "fixed_sequence"]
METHODS: tuple[Method, ...] = ("bonferroni", "fixed_sequence")
# What counts as harm when vision is switched on for a unit (SPEC §3): the paper's default, or the
# groundability annotation.
HARM_DEFINITIONS: tuple[str, ...] = ("forced_vision_wrong", "not_groundable")

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CalibrationResult:
    """A calibrated gate threshold τ with the evidence behind it.

    Units with gate score g ≥ τ are sent to vision. When ``feasible`` is true, with probability at
    least 1 − δ over the calibration draw, the harm rate among activated units is at most α.
    """

    method: Method  # "bonferroni" or "fixed_sequence"
    alpha: float  # target risk: the tolerated harm rate among activated units
    delta: float  # allowed probability that the certificate is wrong
    n: int  # calibration units seen
    n_activated: int  # calibration units with g >= tau
    tau: float  # chosen threshold; math.inf means "never activate"
    coverage: float  # n_activated / n: share of units sent to vision
    empirical_risk: float  # harm rate among activated calibration units (0.0 when none is activated)
    risk_bound: float  # Clopper–Pearson upper bound on that rate (0.0 for "never activate": no harm)
    feasible: bool  # False when no grid threshold could be certified and tau is +inf
    reason: str  # one human-readable sentence on why this tau was chosen
    harm_definition: str = "forced_vision_wrong"  # one of HARM_DEFINITIONS
    grid_size: int = 101  # thresholds tried; Bonferroni splits delta over them
    # Per group (dataset) at the chosen τ: n, n_activated, coverage, risk, bound. When groups are given,
    # τ had to pass in every group (each tested at the method's level: an intersection-union test), so the
    # guarantee holds for every group's distribution at once, not only for the pooled mixture.
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    test_level: float = 0.0  # the level each Clopper–Pearson test used
    # fixed_sequence: the highest τ actually tested (thresholds above it were vacuous, see conformal.py)
    scan_start_tau: float | None = None
    # Per-threshold evidence, ascending in tau: dicts with tau, n_activated, coverage, risk, bound.
    # Kept out of repr and summary(): it is for plots and audits, not for the serving path.
    curve: tuple[dict[str, float], ...] = field(default=(), repr=False, compare=False)

    @property
    def never_activate(self) -> bool:
        return math.isinf(self.tau)

    def activates(self, score: float) -> bool:
        """Whether a unit with gate score ``score`` is sent to vision under this threshold."""
        return score >= self.tau

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record without the curve (τ = +∞ written as ``None``)."""
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "alpha": self.alpha,
            "delta": self.delta,
            "n": self.n,
            "n_activated": self.n_activated,
            "tau": None if self.never_activate else self.tau,
            "never_activate": self.never_activate,
            "coverage": self.coverage,
            "empirical_risk": self.empirical_risk,
            "bound": self.risk_bound,
            "feasible": self.feasible,
            "reason": self.reason,
            "harm_definition": self.harm_definition,
            "grid_size": self.grid_size,
            "test_level": self.test_level,
            "scan_start_tau": self.scan_start_tau,
            "groups": {name: dict(figures) for name, figures in self.groups.items()},
        }

    def to_dict(self, include_curve: bool = True) -> dict[str, Any]:
        record = self.summary()
        if include_curve:
            record["curve"] = [dict(point) for point in self.curve]
        return record

    def to_json(self, include_curve: bool = True) -> str:
        """Serialise to the ``calibration.json`` text (strict JSON: no NaN or Infinity tokens)."""
        return json.dumps(self.to_dict(include_curve), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CalibrationResult:
        version = record.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported calibration format_version {version!r}")
        method = record["method"]
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        raw_tau = record["tau"]
        never = bool(record.get("never_activate", raw_tau is None))
        if never != (raw_tau is None):
            raise ValueError("inconsistent calibration record: tau must be null exactly when never_activate")
        tau = math.inf if never else float(raw_tau)
        points = record.get("curve", [])
        curve = tuple({key: float(value) for key, value in point.items()} for point in points)
        n_activated = record.get("n_activated", 0 if never else round(record["coverage"] * record["n"]))
        return cls(
            method=method,
            alpha=float(record["alpha"]),
            delta=float(record["delta"]),
            n=int(record["n"]),
            n_activated=int(n_activated),
            tau=tau,
            coverage=float(record["coverage"]),
            empirical_risk=float(record["empirical_risk"]),
            risk_bound=float(record["bound"]),
            feasible=bool(record.get("feasible", not never)),
            reason=str(record.get("reason", "")),
            harm_definition=str(record.get("harm_definition", "forced_vision_wrong")),
            grid_size=int(record.get("grid_size", 101)),
            groups={k: {kk: float(vv) for kk, vv in v.items()} for k, v in record.get("groups", {}).items()},
            test_level=float(record.get("test_level", 0.0)),
            scan_start_tau=None if record.get("scan_start_tau") is None else float(record["scan_start_tau"]),
            curve=curve,
        )

    @classmethod
    def from_json(cls, text: str) -> CalibrationResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path, include_curve: bool = True) -> Path:
        """Write ``calibration.json`` (or any given file name) and return its path."""
        target = Path(path)
        target.write_text(self.to_json(include_curve), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path) -> CalibrationResult:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
