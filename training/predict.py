"""Batch prediction over a dataset with per-unit records: what evaluation and calibration both read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.base import SaverBase
from model.gate import VisionMode
from model.mner import MnerModel
from model.mre import MreModel
from training.batches import batched, mner_batch, mre_batch
from training.data import MnerExample, MreExample
from training.evidence import EvidenceTable


@dataclass
class UnitRecords:
    """One row per unit (MNER: every candidate span; MRE: the pair)."""

    post: list[int] = field(default_factory=list)
    gold: list[int] = field(default_factory=list)  # class index (0 = NONE for MNER)
    pred: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    gate: list[float] = field(default_factory=list)
    activated: list[bool] = field(default_factory=list)
    candidate: list[bool] = field(
        default_factory=list
    )  # eligible for the gate (has evidence, plausible span)
    groundable: list[int] = field(default_factory=list)  # -1 unknown, 0, 1 (MNER gold entities only)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


@dataclass
class Predictions:
    units: UnitRecords
    entities: list[list[tuple[int, int, str, float]]] = field(default_factory=list)  # MNER, per post
    relations: list[tuple[str, float]] = field(default_factory=list)  # MRE, per example

    def subset(self, posts: Sequence[int]) -> Predictions:
        """The predictions of ``posts`` (indices into the predicted examples), renumbered 0.. in that order,
        so a part of a dataset is scored without predicting it again."""
        new = {old: i for i, old in enumerate(posts)}
        units = UnitRecords()
        for row in range(len(self.units.post)):
            if self.units.post[row] in new:
                for name, column in vars(self.units).items():
                    getattr(units, name).append(column[row])
                units.post[-1] = new[self.units.post[row]]
        return Predictions(
            units,
            [self.entities[i] for i in posts] if self.entities else [],
            [self.relations[i] for i in posts] if self.relations else [],
        )


@torch.no_grad()
def predict_mner(
    model: MnerModel,
    examples: Sequence[MnerExample],
    evidence: EvidenceTable | None,
    mode: VisionMode,
    threshold: float,
    batch_size: int = 32,
) -> Predictions:
    model.eval()
    labels = model.cfg.labels
    index = {t: i + 1 for i, t in enumerate(labels)}
    rec = UnitRecords()
    entities: dict[int, list[tuple[int, int, str, float]]] = {}
    position = {id(e): i for i, e in enumerate(examples)}
    for chunk in batched(examples, batch_size, shuffle=False):
        batch, _ = mner_batch(chunk, evidence)
        out, _ = model(batch, threshold=threshold, mode=mode)
        s = out.scores
        # the service's eligibility rule, whether or not the post has evidence (the service decides
        # before it knows whether any image will arrive)
        candidate = model.eligible(s.text_logits)
        # the gate's decision, as the service counts it (whether or not an image then arrives)
        wanted = model.decide(out.text, threshold, mode)
        conf, pred = out.probs.max(-1)
        # gold labels per post, decoded from BIO once per post rather than once per candidate span
        gold = [{(s0, e0): index.get(t, 0) for s0, e0, t in ex.spans} for ex in chunk]
        for a, (p, (st, en)) in enumerate(zip(out.post_of_unit, out.spans.tolist(), strict=True)):
            ex = chunk[p]
            g = gold[p].get((st, en), 0)
            if g == 0 and not candidate[a] and not wanted[a]:
                continue  # confidently-NONE spans: not units the gate ever considers
            rec.post.append(position[id(ex)])
            rec.gold.append(g)
            rec.pred.append(int(pred[a]))
            rec.confidence.append(float(conf[a]))
            rec.gate.append(float(s.gate[a]))
            rec.activated.append(bool(wanted[a]))
            rec.candidate.append(bool(candidate[a]))
            flag = ex.groundable.get((st, en)) if g else None
            rec.groundable.append(-1 if flag is None else int(flag))
        for p, found in enumerate(out.entities):
            entities[position[id(chunk[p])]] = [(d.start, d.end, labels[d.label - 1], d.score) for d in found]
    return Predictions(rec, [entities.get(i, []) for i in range(len(examples))])


@torch.no_grad()
def predict_mre(
    model: MreModel,
    examples: Sequence[MreExample],
    evidence: EvidenceTable | None,
    mode: VisionMode,
    threshold: float,
    batch_size: int = 64,
) -> Predictions:
    model.eval()
    labels = model.cfg.labels
    index = {r: i for i, r in enumerate(labels)}
    rec = UnitRecords()
    relations: dict[int, tuple[str, float]] = {}
    position = {id(e): i for i, e in enumerate(examples)}
    for chunk in batched(examples, batch_size, shuffle=False):
        batch, _ = mre_batch(chunk, evidence)
        out, _ = model(batch, threshold=threshold, mode=mode)
        eligible = model.eligible(out.scores.text_logits)
        wanted = model.decide(out.text, threshold, mode)
        conf, pred = out.probs.max(-1)
        for b, ex in enumerate(chunk):
            i = position[id(ex)]
            relations[i] = (labels[int(pred[b])], float(conf[b]))
            rec.post.append(i)
            rec.gold.append(index.get(ex.relation, 0))
            rec.pred.append(int(pred[b]))
            rec.confidence.append(float(conf[b]))
            rec.gate.append(float(out.scores.gate[b]))
            rec.activated.append(bool(wanted[b]))
            rec.candidate.append(bool(eligible[b]))
            rec.groundable.append(-1)
    return Predictions(rec, relations=[relations[i] for i in range(len(examples))])


def predict(
    model: SaverBase,
    examples: Sequence[Any],
    evidence: EvidenceTable | None,
    mode: VisionMode,
    threshold: float,
) -> Predictions:
    """The task's predictions, through its model's one scoring path."""
    if isinstance(model, MnerModel):
        return predict_mner(model, examples, evidence, mode, threshold)  # type: ignore[arg-type]
    assert isinstance(model, MreModel)
    return predict_mre(model, examples, evidence, mode, threshold)  # type: ignore[arg-type]
