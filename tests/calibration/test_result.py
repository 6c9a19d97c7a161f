"""calibration.json: strict JSON, round trips (τ = +∞ included), required keys."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from calibration import CalibrationResult, calibrate_threshold

REQUIRED_KEYS = {"method", "alpha", "delta", "n", "tau", "coverage", "empirical_risk", "bound"}


def _feasible() -> CalibrationResult:
    rng = np.random.default_rng(11)
    scores = rng.random(600)
    harm = rng.random(600) < 0.4 * (1.0 - scores) ** 2
    result = calibrate_threshold(scores, harm, method="fixed_sequence")
    assert result.feasible
    return result


def _never() -> CalibrationResult:
    result = calibrate_threshold(
        np.linspace(0, 1, 50), np.ones(50, dtype=bool), harm_definition="not_groundable"
    )
    assert result.never_activate
    return result


@pytest.mark.parametrize("make", [_feasible, _never])
def test_json_round_trip(make: Callable[[], CalibrationResult], tmp_path: Path) -> None:
    result = make()
    assert CalibrationResult.from_json(result.to_json()) == result
    path = result.save(tmp_path / "calibration.json")
    loaded = CalibrationResult.load(path)
    assert loaded == result
    assert loaded.curve == result.curve and len(loaded.curve) == 101
    assert loaded.tau == result.tau  # inf stays inf, a grid value stays bit-identical


def test_never_activate_is_written_as_null_tau() -> None:
    text = _never().to_json()
    assert "Infinity" not in text and "NaN" not in text
    record = json.loads(text)
    assert record["tau"] is None and record["never_activate"] is True and record["feasible"] is False
    assert record["harm_definition"] == "not_groundable"
    assert math.isinf(CalibrationResult.from_json(text).tau)


def test_record_has_the_spec_keys() -> None:
    result = _feasible()
    record = json.loads(result.to_json())
    assert record.keys() >= REQUIRED_KEYS
    assert record["tau"] == result.tau and record["never_activate"] is False
    assert record["bound"] == result.risk_bound <= record["alpha"]
    summary = result.summary()
    assert "curve" not in summary and summary.keys() >= REQUIRED_KEYS
    assert "curve" not in json.loads(result.to_json(include_curve=False))
    assert "curve" not in repr(result)


def test_minimal_record_without_extras_loads() -> None:
    minimal = {
        "method": "bonferroni",
        "alpha": 0.1,
        "delta": 0.05,
        "n": 1000,
        "tau": 0.42,
        "coverage": 0.6,
        "empirical_risk": 0.05,
        "bound": 0.08,
    }
    loaded = CalibrationResult.from_dict(minimal)
    assert loaded.tau == 0.42 and loaded.feasible and loaded.n_activated == 600 and loaded.curve == ()


@pytest.mark.parametrize(
    "patch",
    [
        {"method": "holm"},
        {"tau": None, "never_activate": False},
        {"tau": 0.3, "never_activate": True},
        {"format_version": 99},
    ],
)
def test_inconsistent_records_are_rejected(patch: dict) -> None:
    record = json.loads(_feasible().to_json())
    record.update(patch)
    with pytest.raises(ValueError):
        CalibrationResult.from_dict(record)
