"""Fitting the Conformal Groundability Gate on frozen text features, and choosing its target by measurement.

After the task model is trained, the gate MLP is refitted on the features it reads (unit vector, text-path
label distribution, post context; ``SaverBase.gate_features``), which do not change any more: the text
path's answers, hence ``never`` F1, stay exactly as trained. Being cheap, it is fitted once per configured
target and the targets are compared on the *selection* part of dev, never on the calibration or check
parts:

* ``groundability``: BCE against the per-entity annotation, on the annotated gold entities (spans that
  are not entities carry no annotation; the text path's confidence and the eligibility rule deal with
  them, and on the selection part leaving them out ranked entities better: AUROC 0.876 / 0.796 against
  0.848 / 0.781 with them as negatives, mean of three seeds).
* ``utility``: the paper's target, 1 where the forced-vision loss is below the text-only loss (units
  whose post has evidence).
* ``mix``: the mean of the two losses.

Each fitted gate is also tried with its probability multiplied by a power of the text path's confidence
(``SaverConfig.gate_confidence_power``): the calibrated harm counts every wrong answer among activated
units, so a gate that ranks by groundability alone may put too many unreliable units on top to certify.
The choice rule (``CHOICE_RULE``) is fixed in this file; it reads the selection part only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from model.base import SaverBase
from model.mner import MnerModel
from training.batches import batched, mner_batch
from training.calibrate import CalibrationSpec, calibrate
from training.data import MnerExample
from training.evidence import EvidenceTable
from training.metrics import roc_auc
from training.predict import predict

if TYPE_CHECKING:
    from training.workflow import Run

log = logging.getLogger(__name__)
TARGETS = ("groundability", "utility", "mix")
CHOICE_RULE = (
    "among the candidates (target, confidence power) whose selection-part calibration (the configured "
    "method, per dataset) certifies a threshold on every dataset, the highest mean AUROC against "
    "groundability on the selection part; if none certifies, the highest mean AUROC"
)


@dataclass
class GateFitSpec:
    enabled: bool = False
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # candidates, compared on selection
    confidence_powers: list[float] = field(default_factory=lambda: [0.0])  # tried with the groundability gate
    epochs: int = 10
    input_dropout: float = (
        0.3  # on the gate's (frozen, train-split) inputs: they are sharper than on new posts
    )
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    seed: int = 13


@dataclass
class GateData:
    """Frozen gate inputs of the training units, with every target that applies to them."""

    features: torch.Tensor  # (n, D_g)
    groundable: torch.Tensor  # (n,) 1, 0, or -1 unknown
    utility: torch.Tensor  # (n,) 1, 0, or -1 (no evidence)
    entity: torch.Tensor  # (n,) bool: a gold entity (else an eligible span that is not one)


@torch.no_grad()
def collect_mner(model: MnerModel, posts: Sequence[MnerExample], evidence: EvidenceTable) -> GateData:
    """Eligible spans and gold entities of ``posts``: their gate inputs and targets."""
    model.eval()
    feats, ground, util, ent = [], [], [], []
    for chunk in batched(posts, 32, shuffle=False):
        batch, targets = mner_batch(chunk, evidence)
        text = model.text_units(batch.words)
        labels, groundable = model.unit_targets(text.spans, text.post_of_unit.tolist(), targets)
        keep = model.eligible(text.text_logits) | (labels > 0)
        # forced vision on the kept units only: the utility target of the units the gate will rank
        scores = model.score(text, keep, batch.evidence or [None] * len(chunk))
        utility = torch.full((len(text),), -1.0)
        if scores.vision is not None:
            rows = scores.vision_rows
            vis = F.cross_entropy(scores.vision.logits, labels[rows], reduction="none")
            txt = F.cross_entropy(text.text_logits[rows], labels[rows], reduction="none")
            utility[rows] = (vis < txt).float()
        assert text.gate_input is not None
        feats.append(text.gate_input[keep])
        ground.append(groundable[keep])
        util.append(utility[keep])
        ent.append(labels[keep] > 0)
    return GateData(torch.cat(feats), torch.cat(ground), torch.cat(util), torch.cat(ent))


def fit_gate_weights(
    model: SaverBase, data: GateData, target: str, spec: GateFitSpec
) -> dict[str, torch.Tensor]:
    """A freshly initialised gate MLP fitted to ``target``; returns its state dict."""
    torch.manual_seed(spec.seed)
    gate = copy.deepcopy(model.gate)
    for layer in gate.mlp:
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    gate.train()
    optimizer = torch.optim.AdamW(gate.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    n = data.features.size(0)
    g_known, u_known = (data.groundable >= 0) & data.entity, data.utility >= 0
    for _ in range(spec.epochs):
        for rows in torch.randperm(n).split(spec.batch_size):
            logit = gate(F.dropout(data.features[rows], spec.input_dropout))
            losses = []
            if target in ("groundability", "mix") and g_known[rows].any():
                m = g_known[rows]
                losses.append(F.binary_cross_entropy_with_logits(logit[m], data.groundable[rows][m]))
            if target in ("utility", "mix") and u_known[rows].any():
                m = u_known[rows]
                losses.append(F.binary_cross_entropy_with_logits(logit[m], data.utility[rows][m]))
            if not losses:
                continue
            loss = torch.stack(losses).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in gate.state_dict().items()}


def type_prior(posts: Sequence[MnerExample]) -> dict[str, float]:
    """Groundable-rate of each entity type among the annotated entities of ``posts`` (the train split)."""
    counts: dict[str, list[int]] = {}
    for ex in posts:
        for s, e, t in ex.spans:
            flag = ex.groundable.get((s, e))
            if flag is not None:
                c = counts.setdefault(t, [0, 0])
                c[0] += int(flag)
                c[1] += 1
    return {t: k / n for t, (k, n) in sorted(counts.items())}


def gate_auroc(model: MnerModel, units: dict[str, np.ndarray], prior: dict[str, float]) -> dict[str, Any]:
    """AUROC against groundability on the annotated gold entities of prediction records (gate scores do not
    depend on the vision mode): the gate, and the entity-type prior."""
    known = (units["groundable"] >= 0) & (units["gold"] > 0)
    if not known.any():
        return {"gate": None, "type_prior": None, "n": 0}
    labels = units["groundable"][known]
    types = [model.cfg.labels[int(g) - 1] for g in units["gold"][known]]
    prior_scores = np.array([prior.get(t, 0.0) for t in types])
    return {
        "gate": roc_auc(units["gate"][known], labels),
        "type_prior": roc_auc(prior_scores, labels),
        "n": int(known.sum()),
    }


def fit_gate(
    model: SaverBase, run: Run, evidence: EvidenceTable, spec: GateFitSpec, out: Path
) -> dict[str, Any]:
    """Fit one gate per target, compare them on selection, keep the chosen one in ``model``."""
    if not isinstance(model, MnerModel):
        raise ValueError(
            "gate_fit supports MNER: MRE has no groundability annotation, and the utility target needs "
            "vision evidence the MNRE training posts do not have here"
        )
    cal = CalibrationSpec(**run.config.get("calibration", {}))
    # the features depend on the checkpoint, the model config and the evidence: key the cache on all three
    checkpoint = out / "best" / "weights.safetensors"
    key = hashlib.sha256(
        json.dumps([model.cfg.to_dict(), vars(run.data)], sort_keys=True, default=str).encode()
        + (checkpoint.read_bytes() if checkpoint.is_file() else b"")
    ).hexdigest()[:16]
    cache = out / f"gate_data-{key}.pt"
    if cache.is_file():
        data = GateData(**torch.load(cache, weights_only=True))
    else:
        data = collect_mner(model, run.train_set, evidence)
        torch.save(vars(data), cache)
    log.info(
        "gate fit on %d train units (%d with groundability, %d with utility)",
        data.features.size(0),
        int((data.groundable >= 0).sum()),
        int((data.utility >= 0).sum()),
    )
    prior = type_prior(run.train_set)
    selection = {name: parts["selection"] for name, parts in run.dev.items()}
    candidates: dict[str, dict[str, Any]] = {}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    choices: dict[str, tuple[str, float]] = {}
    for target in spec.targets:
        weights[target] = fit_gate_weights(model, data, target, spec)
        powers = spec.confidence_powers if target == "groundability" else [0.0]
        for power in powers:
            name = target if power == 0 else f"{target} x confidence^{power:g}"
            choices[name] = (target, power)
            candidates[name] = _measure(model, weights[target], power, selection, evidence, prior, cal)
            log.info("gate candidate %s on selection: %s", name, json.dumps(candidates[name]))
    chosen = choose_target(candidates)
    target, power = choices[chosen]
    model.gate.load_state_dict(weights[target])
    model.cfg.gate_target = target  # type: ignore[assignment]
    model.cfg.gate_confidence_power = power
    summary = {
        "chosen": chosen,
        "target": target,
        "confidence_power": power,
        "rule": CHOICE_RULE,
        "type_prior_rates": prior,
        "candidates": candidates,
    }
    (out / "gate_fit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _measure(
    model: MnerModel,
    gate: dict[str, torch.Tensor],
    power: float,
    selection: Mapping[str, Sequence[Any]],
    evidence: EvidenceTable,
    prior: dict[str, float],
    cal: CalibrationSpec,
) -> dict[str, Any]:
    """One candidate on the selection part; the model's own gate and config are restored afterwards."""
    saved_gate = {k: v.clone() for k, v in model.gate.state_dict().items()}
    saved_power = model.cfg.gate_confidence_power
    model.gate.load_state_dict(gate)
    model.cfg.gate_confidence_power = power
    try:
        return _measure_loaded(model, selection, evidence, prior, cal)
    finally:
        model.gate.load_state_dict(saved_gate)
        model.cfg.gate_confidence_power = saved_power


def _measure_loaded(
    model: MnerModel,
    selection: Mapping[str, Sequence[Any]],
    evidence: EvidenceTable,
    prior: dict[str, float],
    cal: CalibrationSpec,
) -> dict[str, Any]:
    from training.workflow import report

    # the configured calibration rule run on the selection part: a stand-in τ for comparing candidates
    record = calibrate(model, selection, evidence, cal)
    tau = math.inf if record["tau"] is None else float(record["tau"])
    out: dict[str, Any] = {"selection_tau": record["tau"], "datasets": {}}
    for name, posts in selection.items():
        pred = predict(model, posts, evidence, "auto", tau)
        auto = report(model, posts, pred, "auto", tau, 0.0)
        out["datasets"][name] = {
            "auroc": gate_auroc(model, pred.units.arrays(), prior),
            "auto_f1": auto["f1"],
            "requests_activated": auto["gate"]["requests_activated"],
        }
    return out


def choose_target(candidates: dict[str, dict[str, Any]]) -> str:
    """The rule in ``CHOICE_RULE``."""

    def mean_auroc(key: str) -> float:
        values = [d["auroc"]["gate"] for d in candidates[key]["datasets"].values()]
        return float(np.mean([v if v is not None else 0.0 for v in values]))

    certified = [k for k, c in candidates.items() if c["selection_tau"] is not None]
    return max(certified or list(candidates), key=mean_auroc)
