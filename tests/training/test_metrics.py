"""Metrics of training/metrics.py against hand-computed values, brute force and properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import aurc, bio_to_spans, coverage_at_risk, entity_prf, relation_prf, roc_auc

# --- entities ---------------------------------------------------------------------------------------


def test_bio_to_spans_follows_conlleval() -> None:
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG", "B-PER"]
    assert bio_to_spans(tags) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 7, "ORG"), (7, 8, "PER")]
    assert bio_to_spans([]) == [] and bio_to_spans(["O", "O"]) == []
    with pytest.raises(ValueError):
        bio_to_spans(["B-PER", "E-PER"])


def test_entity_prf_hand_computed_with_orphan_i_tags() -> None:
    gold_tags = [
        ["B-PER", "I-PER", "O", "I-LOC", "I-LOC"],  # PER(0,2), orphan LOC(3,5)
        ["B-ORG", "O", "B-PER"],  # ORG(0,1), PER(2,3)
    ]
    pred_tags = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],  # PER correct, LOC(3,4) wrong boundary
        ["I-ORG", "O", "B-LOC"],  # orphan I-ORG is ORG(0,1): correct; LOC(2,3) wrong type
    ]
    result = entity_prf([bio_to_spans(t) for t in gold_tags], [bio_to_spans(t) for t in pred_tags])
    # 2 correct of 4 predicted and 4 gold.
    assert result["precision"] == pytest.approx(50.0)
    assert result["recall"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(50.0)
    assert (result["n_correct"], result["n_predicted"], result["n_gold"]) == (2, 4, 4)
    per_label = result["per_label"]
    assert per_label["PER"] == pytest.approx({"precision": 100, "recall": 50, "f1": 200 / 3, "support": 2})
    assert per_label["LOC"] == pytest.approx({"precision": 0, "recall": 0, "f1": 0, "support": 1})
    assert per_label["ORG"] == pytest.approx({"precision": 100, "recall": 100, "f1": 100, "support": 1})


def test_entity_prf_matches_only_within_the_same_sentence() -> None:
    result = entity_prf([[(0, 1, "PER")], []], [[], [(0, 1, "PER")]])
    assert result["f1"] == 0.0
    with pytest.raises(ValueError):
        entity_prf([[]], [])


_entity = st.tuples(st.integers(0, 5), st.integers(1, 3), st.sampled_from(["PER", "LOC", "ORG"])).map(
    lambda t: (t[0], t[0] + t[1], t[2])
)
_sentences = st.lists(st.lists(_entity, max_size=4), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(gold=_sentences)
def test_entity_f1_is_100_when_prediction_equals_gold(gold: list[list[tuple[int, int, str]]]) -> None:
    result = entity_prf(gold, gold)
    expected = 100.0 if any(gold) else 0.0
    assert result["precision"] == result["recall"] == result["f1"] == expected


@settings(max_examples=60, deadline=None)
@given(data=st.data(), gold=_sentences)
def test_swapping_gold_and_prediction_swaps_precision_and_recall(
    data: st.DataObject, gold: list[list[tuple[int, int, str]]]
) -> None:
    pred = data.draw(st.lists(st.lists(_entity, max_size=4), min_size=len(gold), max_size=len(gold)))
    forward, backward = entity_prf(gold, pred), entity_prf(pred, gold)
    assert forward["precision"] == pytest.approx(backward["recall"])
    assert forward["recall"] == pytest.approx(backward["precision"])
    assert forward["f1"] == pytest.approx(backward["f1"])
    for label, figures in forward["per_label"].items():
        assert figures["precision"] == pytest.approx(backward["per_label"][label]["recall"])


# --- relations --------------------------------------------------------------------------------------


def test_relation_prf_ignores_the_negative_label() -> None:
    gold = ["A", "A", "B", "None", "None", "B"]
    pred = ["A", "None", "A", "B", "None", "B"]
    result = relation_prf(gold, pred)
    # predicted positives: A, A, B, B (4); gold positives: A, A, B, B (4); correct: A, B (2).
    assert (result["n_correct"], result["n_predicted"], result["n_gold"]) == (2, 4, 4)
    assert result["precision"] == pytest.approx(50.0) and result["recall"] == pytest.approx(50.0)
    assert "None" not in result["per_label"]
    assert result["per_label"]["A"] == pytest.approx(
        {"precision": 50.0, "recall": 50.0, "f1": 50.0, "support": 2}
    )
    assert result["accuracy"] == pytest.approx(100 * 3 / 6)
    all_none = relation_prf(["A", "B"], ["None", "None"])
    assert all_none["precision"] == 0.0 and all_none["recall"] == 0.0 and all_none["n_predicted"] == 0


# --- selective prediction ---------------------------------------------------------------------------


def _aurc_brute(correct_in_rank_order: np.ndarray) -> float:
    errors = np.cumsum(~correct_in_rank_order.astype(bool))
    return float(np.mean(errors / np.arange(1, errors.size + 1)))


def _order_with_errors_at(n: int, positions: tuple[int, ...]) -> np.ndarray:
    order = np.ones(n, dtype=bool)
    order[list(positions)] = False
    return order


def test_aurc_of_perfect_ranking_is_the_minimum_and_reversed_is_worse() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(12) < 0.6
    perfect_confidence = correct + rng.random(12) * 0.5  # every correct one above every wrong one
    perfect = aurc(perfect_confidence, correct)
    n, e = correct.size, int((~correct).sum())
    minimum = min(
        _aurc_brute(_order_with_errors_at(n, positions)) for positions in itertools.combinations(range(n), e)
    )
    assert perfect == pytest.approx(minimum)
    assert aurc(-perfect_confidence, correct) > perfect
    # Closed form of the minimum with e errors among n: errors only after the n - e correct ones.
    k = np.arange(n - e + 1, n + 1)
    assert perfect == pytest.approx(np.sum((k - (n - e)) / k) / n)


def test_aurc_is_the_expected_value_over_tied_orders() -> None:
    correct = np.array([True, False, True, False])
    tied = aurc(np.ones(4), correct)
    orders = [np.array(p) for p in itertools.permutations(correct)]
    assert tied == pytest.approx(np.mean([_aurc_brute(order) for order in orders]))
    assert aurc(np.ones(4), correct[::-1]) == pytest.approx(tied)
    assert aurc([0.9, 0.8], [True, True]) == 0.0
    assert aurc([0.9, 0.8], [False, False]) == 1.0
    with pytest.raises(ValueError):
        aurc([], [])


def test_coverage_at_risk() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    correct = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 0], dtype=bool)
    # Top-k error counts: 0,0,0,1,1,1,1,1,1,2 -> risks 0,0,0,.25,.2,.167,.143,.125,.111,.2
    assert coverage_at_risk(confidence, correct, 0.0) == pytest.approx(0.3)
    assert coverage_at_risk(confidence, correct, 0.12) == pytest.approx(0.9)
    assert coverage_at_risk(confidence, correct, 0.2) == pytest.approx(1.0)
    assert coverage_at_risk(confidence[::-1], correct[::-1], 0.12) == pytest.approx(0.9)  # order-free
    assert coverage_at_risk([0.5, 0.4], [False, True], 0.0) == 0.0
    # A tie block cannot be split by a threshold: the best is to keep nothing of it.
    assert coverage_at_risk([0.9, 0.5, 0.5], [True, True, False], 0.0) == pytest.approx(1 / 3)


# --- ROC AUC ----------------------------------------------------------------------------------------


def _auc_brute(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (pos.size * neg.size))


@pytest.mark.parametrize("seed", range(8))
def test_roc_auc_matches_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 40))
    scores = rng.integers(0, 6, size).astype(float)  # few distinct values: many ties
    labels = rng.random(size) < 0.5
    labels[:2] = [True, False]
    assert roc_auc(scores, labels) == pytest.approx(_auc_brute(scores, labels))


def test_roc_auc_edge_cases() -> None:
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert roc_auc([0.1, 0.9], [1, 0]) == 0.0
    assert roc_auc([0.3, 0.3], [1, 0]) == 0.5
    assert roc_auc([0.1, 0.2], [1, 1]) is None
    assert roc_auc([], []) is None
