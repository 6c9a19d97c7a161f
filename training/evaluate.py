"""The evaluation contract of SPEC §5: task metrics, selective risk, and the gate's figures."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.spans import enumerate_spans
from training.data import MnerExample, MreExample
from training.metrics import aurc, coverage_at_risk, entity_prf, relation_prf, roc_auc
from training.predict import Predictions

RISK_LEVELS = ("0.05", "0.10", "0.20")


def _selective(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    if len(confidence) == 0:
        return {"aurc": None, "coverage_at_risk": dict.fromkeys(RISK_LEVELS)}
    return {
        "aurc": round(float(aurc(confidence, correct)), 6),
        "coverage_at_risk": {
            r: round(float(coverage_at_risk(confidence, correct, float(r))), 6) for r in RISK_LEVELS
        },
    }


def gate_report(pred: Predictions, n_posts: int, threshold: float, units_total: int) -> dict[str, Any]:
    u = pred.units.arrays()
    activated = u["activated"].astype(bool) if len(u["activated"]) else np.zeros(0, dtype=bool)
    harm = (u["pred"] != u["gold"]) if len(activated) else np.zeros(0, dtype=bool)
    known = u["groundable"] >= 0 if len(activated) else np.zeros(0, dtype=bool)
    auroc = roc_auc(u["gate"][known], u["groundable"][known]) if known.any() else None
    posts = set(u["post"][activated].tolist()) if activated.any() else set()
    return {
        "threshold": None if math.isinf(threshold) else threshold,
        "units_total": units_total,
        "units_candidate": int(u["candidate"].sum()) if len(activated) else 0,
        "units_activated": int(activated.sum()),
        "activation_rate": round(float(activated.sum()) / max(units_total, 1), 6),
        "harm_rate_activated": round(float(harm[activated].mean()), 6) if activated.any() else None,
        "auroc_groundability": None if auroc is None else round(float(auroc), 6),
        "requests_activated": round(len(posts) / max(n_posts, 1), 6),
    }


def evaluate_mner(
    examples: Sequence[MnerExample], pred: Predictions, threshold: float, max_width: int, seconds: float
) -> dict[str, Any]:
    gold = [[(s, e, t) for s, e, t in ex.spans] for ex in examples]
    guess = [[(s, e, t) for s, e, t, _ in ents] for ents in pred.entities]
    report = entity_prf(gold, guess)
    gold_sets = [set(g) for g in gold]
    conf = np.array([sc for ents in pred.entities for *_, sc in ents])
    correct = np.array(
        [(s, e, t) in gold_sets[p] for p, ents in enumerate(pred.entities) for s, e, t, _ in ents]
    )
    units_total = sum(len(enumerate_spans(len(ex.tokens), max_width)) for ex in examples)
    return {
        "task": "mner",
        "n_examples": len(examples),
        "precision": round(report["precision"], 4),
        "recall": round(report["recall"], 4),
        "f1": round(report["f1"], 4),
        "per_label": report["per_label"],
        **_selective(conf, correct),
        "selective_unit": "predicted entity (confidence = span probability; risk = 1 - precision)",
        "gate": gate_report(pred, len(examples), threshold, units_total),
        "seconds": round(seconds, 3),
    }


def evaluate_mre(
    examples: Sequence[MreExample], pred: Predictions, threshold: float, seconds: float
) -> dict[str, Any]:
    gold = [ex.relation for ex in examples]
    guess = [r for r, _ in pred.relations]
    report = relation_prf(gold, guess)
    conf = np.array([c for _, c in pred.relations])
    correct = np.array([g == p for g, p in zip(gold, guess, strict=True)])
    return {
        "task": "mre",
        "n_examples": len(examples),
        "precision": round(report["precision"], 4),
        "recall": round(report["recall"], 4),
        "f1": round(report["f1"], 4),
        "per_label": report["per_label"],
        **_selective(conf, correct),
        "selective_unit": "example (confidence = top relation probability)",
        "gate": gate_report(pred, len(examples), threshold, len(examples)),
        "seconds": round(seconds, 3),
    }


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
