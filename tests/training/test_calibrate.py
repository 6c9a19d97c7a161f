"""Value-level checks of evaluation and of the calibration workflow's arrays, on hand-built predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.calibrate import harm_summary, unit_harm
from training.data import MnerExample, MreExample
from training.evaluate import evaluate_mner, evaluate_mre
from training.predict import Predictions, UnitRecords


def _units(**columns: list) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    return {k: np.asarray(v) for k, v in columns.items()}


UNITS = _units(
    post=[0, 0, 0, 1, 1, 2],
    gold=[1, 0, 2, 0, 3, 0],
    pred=[1, 2, 2, 0, 1, 0],
    gate=[0.9, 0.8, 0.2, 0.7, 0.95, 0.1],
    candidate=[True, True, False, True, True, False],
    activated=[True, True, False, False, True, False],
    groundable=[1, 0, -1, 0, -1, 0],
)


def test_forced_vision_harm_reads_the_eligible_units_only() -> None:
    mask, harm = unit_harm(UNITS, "forced_vision_wrong")
    assert mask.tolist() == [True, True, False, True, True, False]
    # eligible units 0, 1, 3, 4: pred != gold at 1 and 4
    assert harm.tolist() == [False, True, False, True]


def test_not_groundable_harm_needs_an_annotation() -> None:
    mask, harm = unit_harm(UNITS, "not_groundable")
    assert mask.tolist() == [True, True, False, True, False, False]
    assert harm.tolist() == [False, True, True]


def test_harm_summary_counts_and_interval() -> None:
    s = harm_summary(UNITS, "forced_vision_wrong", 0.95)
    # activated eligible units: 0 (right), 1 (wrong), 4 (wrong)
    assert (s["units_eligible"], s["units_activated"], s["harmful_activated"]) == (4, 3, 2)
    assert s["harm_rate"] == pytest.approx(2 / 3)
    low, high = s["interval"]
    # exact two-sided 95% Clopper-Pearson interval for 2 of 3
    assert low == pytest.approx(0.0942993, abs=1e-6) and high == pytest.approx(0.9915962, abs=1e-6)
    assert (s["posts_activated"], s["entity_posts"], s["entity_posts_activated"]) == (2, 2, 2)


def test_harm_summary_with_nothing_activated() -> None:
    quiet = dict(UNITS, activated=np.zeros(6, dtype=bool))
    s = harm_summary(quiet, "forced_vision_wrong", 0.95)
    assert s["units_activated"] == 0 and s["harm_rate"] is None and s["interval"] is None


def _mner(id: str, tags: list[str]) -> MnerExample:
    return MnerExample(id=id, tokens=[f"w{i}" for i in range(len(tags))], tags=tags)


def test_evaluate_mner_hand_computed() -> None:
    examples = [_mner("a", ["B-PER", "I-PER", "O", "B-LOC"]), _mner("b", ["O", "B-ORG", "O"])]
    records = UnitRecords(
        post=[0, 0, 1],
        gold=[1, 2, 0],
        pred=[1, 2, 3],
        confidence=[0.9, 0.8, 0.6],
        gate=[0.7, 0.3, 0.8],
        activated=[True, False, True],
        candidate=[True, True, True],
        groundable=[1, 0, -1],
    )
    pred = Predictions(
        records,
        entities=[[(0, 2, "PER", 0.9), (3, 4, "LOC", 0.8)], [(1, 3, "ORG", 0.6)]],
    )
    report = evaluate_mner(examples, pred, threshold=0.5, max_width=8, seconds=1.0)
    # gold: PER(0,2), LOC(3,4), ORG(1,2); predicted: PER, LOC right, ORG(1,3) wrong span
    assert report["precision"] == pytest.approx(66.6667, abs=1e-3)
    assert report["recall"] == pytest.approx(66.6667, abs=1e-3)
    assert report["per_label"]["ORG"]["f1"] == 0.0
    gate = report["gate"]
    assert gate["units_activated"] == 2
    # spans of width <= 8 in 4 and 3 words: 10 + 6
    assert gate["units_total"] == 16 and gate["activation_rate"] == pytest.approx(2 / 16, abs=1e-6)
    # activated units 0 (right) and 2 (wrong): half harmful
    assert gate["harm_rate_activated"] == pytest.approx(0.5)
    # one annotated positive (0.7) and one negative (0.3): perfectly ranked
    assert gate["auroc_groundability"] == 1.0
    assert gate["requests_activated"] == 1.0


def test_evaluate_mre_hand_computed() -> None:
    examples = [
        MreExample(id=str(i), tokens=["a", "b", "c"], head=(0, 1), tail=(2, 3), relation=r)
        for i, r in enumerate(["/per/loc", "None", "/per/per", "/per/loc"])
    ]
    records = UnitRecords(
        post=[0, 1, 2, 3],
        gold=[1, 0, 2, 1],
        pred=[1, 1, 2, 0],
        confidence=[0.9, 0.5, 0.8, 0.7],
        gate=[0.6, 0.2, 0.9, 0.4],
        activated=[True, False, True, False],
        candidate=[True] * 4,
        groundable=[-1] * 4,
    )
    pred = Predictions(
        records, relations=[("/per/loc", 0.9), ("/per/loc", 0.5), ("/per/per", 0.8), ("None", 0.7)]
    )
    report = evaluate_mre(examples, pred, threshold=math.inf, seconds=0.5)
    # non-None predictions: 3 (2 right); non-None gold: 3 (2 found)
    assert report["precision"] == pytest.approx(66.6667, abs=1e-3)
    assert report["recall"] == pytest.approx(66.6667, abs=1e-3)
    assert report["gate"]["threshold"] is None
    assert report["gate"]["activation_rate"] == 0.5 and report["gate"]["harm_rate_activated"] == 0.0
    assert report["gate"]["auroc_groundability"] is None


def test_predictions_subset_renumbers_posts_and_keeps_their_rows() -> None:
    records = UnitRecords(
        post=[0, 0, 1, 2],
        gold=[1, 0, 2, 3],
        pred=[1, 1, 2, 0],
        confidence=[0.9, 0.5, 0.8, 0.7],
        gate=[0.6, 0.2, 0.9, 0.4],
        activated=[True, False, True, False],
        candidate=[True] * 4,
        groundable=[1, -1, 0, -1],
    )
    pred = Predictions(records, entities=[[(0, 1, "PER", 0.9)], [(2, 3, "LOC", 0.8)], []])
    part = pred.subset([2, 1])
    assert part.units.post == [1, 0] and part.units.gold == [2, 3] and part.units.gate == [0.9, 0.4]
    assert part.entities == [[], [(2, 3, "LOC", 0.8)]]
