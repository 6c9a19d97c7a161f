"""Evaluation metrics of SPEC §5: entity and relation P/R/F1, selective risk–coverage, ROC AUC.

P/R/F1 are in percent (as the benchmarks report them); AURC, coverage and risk are fractions in [0, 1].
Only numpy: these run inside `saver evaluate`, whose users should not need scikit-learn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from training.data.bio import bio_to_spans

__all__ = ["aurc", "bio_to_spans", "coverage_at_risk", "entity_prf", "relation_prf", "roc_auc"]


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall and F1 in percent; a zero denominator gives 0 (seqeval's choice)."""
    precision = 100.0 * correct / predicted if predicted else 0.0
    recall = 100.0 * correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _report(correct: Counter[str], predicted: Counter[str], gold: Counter[str]) -> dict[str, Any]:
    labels = sorted(set(predicted) | set(gold))
    per_label = {
        label: {**_prf(correct[label], predicted[label], gold[label]), "support": gold[label]}
        for label in labels
    }
    n_correct, n_predicted, n_gold = correct.total(), predicted.total(), gold.total()
    return {
        **_prf(n_correct, n_predicted, n_gold),
        "n_correct": n_correct,
        "n_predicted": n_predicted,
        "n_gold": n_gold,
        "per_label": per_label,
    }


def entity_prf(
    gold: Sequence[Sequence[tuple[Hashable, ...]]], pred: Sequence[Sequence[tuple[Hashable, ...]]]
) -> dict[str, Any]:
    """Exact-match entity micro P/R/F1 and per-label figures, one list of entity tuples per sentence.

    An entity tuple is `(start, end, type)` (any tuple whose last item is the label works); an entity is
    correct when the same tuple is in the gold list of the same sentence. Repeats within a sentence
    count once. Build the tuples with `bio_to_spans` to follow the conlleval convention.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    correct: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    for gold_entities, pred_entities in zip(gold, pred, strict=True):
        gold_set, pred_set = set(gold_entities), set(pred_entities)
        expected.update(str(entity[-1]) for entity in gold_set)
        predicted.update(str(entity[-1]) for entity in pred_set)
        correct.update(str(entity[-1]) for entity in gold_set & pred_set)
    return _report(correct, predicted, expected)


def relation_prf(gold: Sequence[str], pred: Sequence[str], negative: str = "None") -> dict[str, Any]:
    """Micro P/R/F1 over labels other than `negative`, as MNRE papers report it, plus per-label figures.

    Predicting `negative` is never a positive; a gold `negative` predicted as X is a false positive of
    X; gold X predicted as Y is a false positive of Y and a false negative of X. `accuracy` (percent)
    counts every pair, the negative ones included.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predicted")
    correct = Counter(g for g, p in zip(gold, pred, strict=True) if g == p and g != negative)
    predicted = Counter(p for p in pred if p != negative)
    expected = Counter(g for g in gold if g != negative)
    report = _report(correct, predicted, expected)
    agree = sum(g == p for g, p in zip(gold, pred, strict=True))
    report["accuracy"] = 100.0 * agree / len(gold) if gold else 0.0
    return report


def _as_arrays(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct).ravel().astype(bool)
    if conf.shape != ok.shape:
        raise ValueError(f"{conf.size} confidences but {ok.size} correctness flags")
    if conf.size == 0:
        raise ValueError("no predictions")
    if np.isnan(conf).any():
        raise ValueError("confidence contains NaN")
    return conf, ok


def _tie_blocks(conf: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by confidence, descending: (size, errors) at the end of each block of equal confidences."""
    order = np.argsort(-conf, kind="stable")
    conf, errors = conf[order], np.cumsum(~ok[order])
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True)) + 1
    return ends, errors[ends - 1]


def aurc(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Area under the selective risk–coverage curve: mean over k = 1..n of the error rate of the top k.

    Predictions are ranked by confidence, highest first. Within a block of equal confidences no order
    is better founded than another, so the errors of the block are spread evenly over it (the expected
    risk over orders inside the block); the result never depends on input order.
    """
    conf, ok = _as_arrays(confidence, correct)
    ends, block_errors = _tie_blocks(conf, ok)
    starts = np.concatenate(([0], ends[:-1]))
    errors_before = np.concatenate(([0], block_errors[:-1]))
    sizes = ends - starts
    rates = (block_errors - errors_before) / sizes
    k = np.arange(1, conf.size + 1)
    block = np.repeat(np.arange(ends.size), sizes)  # block of each rank
    expected_errors = errors_before[block] + (k - starts[block]) * rates[block]
    return float(np.mean(expected_errors / k))


def coverage_at_risk(confidence: npt.ArrayLike, correct: npt.ArrayLike, risk: float) -> float:
    """Largest coverage (fraction kept) whose selective risk, the error rate of what is kept, is <= risk.

    Only thresholds on the confidence are reachable, so coverages that would split a block of equal
    confidences are not considered. 0.0 when no threshold meets the risk.
    """
    conf, ok = _as_arrays(confidence, correct)
    ends, block_errors = _tie_blocks(conf, ok)
    # Small slack so that e.g. 1 error in 10 meets risk 0.1 despite float rounding.
    feasible = block_errors <= risk * ends + 1e-9
    return float(ends[feasible].max() / conf.size) if feasible.any() else 0.0


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float | None:
    """Area under the ROC curve from ranks (Mann–Whitney U), ties counted half; None if a class is absent."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(labels).ravel().astype(bool)
    if values.shape != positive.shape:
        raise ValueError(f"{values.size} scores but {positive.size} labels")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: its block starts after all smaller values.
    first_rank = np.cumsum(counts) - counts + 1
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
