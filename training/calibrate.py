"""Calibration and check of the gate threshold on dev parts that were carved out before training.

Units, eligibility and harm come from ``training.predict``, i.e. from the model's one scoring path:
a unit is *eligible* when the service's ``auto`` rule could activate it (``model.eligible``, whatever its
post's evidence), and its *harm* is what activating it yields: the answer under ``always`` (vision where
the post has evidence, the text-only fallback where it has none, as in the service) is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from calibration import Method, calibrate_threshold
from calibration.bounds import clopper_pearson_upper
from model.base import NEVER, SaverBase
from training.evidence import EvidenceTable
from training.predict import UnitRecords, predict


@dataclass
class CalibrationSpec:
    alpha: float = 0.10  # tolerated harm rate among activated units
    delta: float = 0.05  # tolerated probability that the certificate is wrong
    method: str = "fixed_sequence"  # fixed in the config before calibration runs; never a second one
    harm: str = "forced_vision_wrong"  # or "not_groundable" (MNER gold entities with annotation only)
    per_dataset: bool = True  # certify τ in every dataset (δ split over them), not only pooled
    interval_level: float = 0.95  # two-sided Clopper–Pearson interval of the check split's harm rate


def unit_harm(units: dict[str, np.ndarray], harm: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (mask of eligible units that carry a harm label, harm label of those units)."""
    eligible = units["candidate"].astype(bool)
    if harm == "not_groundable":
        known = eligible & (units["groundable"] >= 0)
        return known, units["groundable"][known] == 0
    return eligible, (units["pred"] != units["gold"])[eligible]


def _records(
    model: SaverBase,
    parts: Mapping[str, Sequence[Any]],
    evidence: EvidenceTable | None,
    mode: str,
    tau: float,
) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name, posts in parts.items():
        units: UnitRecords = predict(model, posts, evidence, mode, tau).units  # type: ignore[arg-type]
        arrays = units.arrays()
        for key in ("post", "gold", "pred", "groundable"):
            arrays[key] = arrays[key].astype(np.int64)
        for key in ("candidate", "activated"):
            arrays[key] = arrays[key].astype(bool)
        arrays["gate"] = arrays["gate"].astype(np.float64)
        out[name] = arrays
    return out


def calibrate(
    model: SaverBase,
    parts: Mapping[str, Sequence[Any]],
    evidence: EvidenceTable | None,
    spec: CalibrationSpec,
) -> dict[str, Any]:
    """SPEC §3 on the calibration parts: the configured method, α and δ, once."""
    records = _records(model, parts, evidence, "always", NEVER)
    scores, harmful, groups = [], [], []
    for name, units in records.items():
        mask, harm = unit_harm(units, spec.harm)
        scores.append(units["gate"][mask])
        harmful.append(harm)
        groups += [name] * int(mask.sum())
    result = calibrate_threshold(
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(harmful) if harmful else np.zeros(0, dtype=bool),
        alpha=spec.alpha,
        delta=spec.delta,
        method=cast(Method, spec.method),
        harm_definition=spec.harm,
        groups=np.asarray(groups) if spec.per_dataset and len(parts) > 1 else None,
    )
    # the rates the service should then see in auto traffic like these posts: per unit over all units,
    # and per request (the live activation metric and its drift alert compare with these)
    on_units, total_units, on_posts, n_posts = 0, 0, 0, 0
    for name, units in records.items():
        on = units["candidate"] & (units["gate"] >= result.tau)
        on_units += int(on.sum())
        total_units += sum(model.units_in_post(len(e.tokens)) for e in parts[name])
        on_posts += len(set(units["post"][on].tolist()))
        n_posts += len(parts[name])
    return {
        **result.to_dict(include_curve=False),
        "unit_activation_rate": on_units / max(total_units, 1),
        "request_activation_rate": on_posts / max(n_posts, 1),
        "eligibility": model.eligibility_rule,
        "candidate_none_max": model.cfg.candidate_none_max,
        "evidence": _evidence_kind(evidence),
        "n_posts": {name: len(posts) for name, posts in parts.items()},
        "per_dataset": spec.per_dataset and len(parts) > 1,
    }


def _evidence_kind(evidence: EvidenceTable | None) -> str:
    if evidence is None:
        return "none"
    captioned = len(evidence.table) - evidence.n_image_posts
    parts = []
    if captioned:
        parts.append(f"{evidence.style} text evidence from captions for {captioned} posts")
    if evidence.n_image_posts:
        parts.append(
            f"real-image evidence (backbone screen and detail tiers, tags) for {evidence.n_image_posts} posts"
        )
    return "; ".join(parts) or "none: no post has captions or images, so activated units fall back to text"


def harm_summary(units: dict[str, np.ndarray], harm: str, level: float) -> dict[str, Any]:
    """Realised harm among the activated units with its two-sided Clopper–Pearson interval."""
    mask, harmful = unit_harm(units, harm)
    on = units["activated"][mask]
    k, n = int(harmful[on].sum()), int(on.sum())
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else 1.0 - clopper_pearson_upper(n - k, n, tail)
    high = clopper_pearson_upper(k, n, tail) if n else 1.0
    posts_with_entity = {int(p) for p, g in zip(units["post"], units["gold"], strict=True) if g > 0}
    activated_posts = {int(p) for p in units["post"][units["activated"]]}
    return {
        "units_eligible": int(mask.sum()),
        "units_activated": n,
        "harmful_activated": k,
        "harm_rate": None if n == 0 else k / n,
        "interval": [low, high] if n else None,
        "posts_activated": len(activated_posts),
        "entity_posts": len(posts_with_entity),
        "entity_posts_activated": len(activated_posts & posts_with_entity),
    }


def check_harm(
    model: SaverBase,
    parts: Mapping[str, Sequence[Any]],
    evidence: EvidenceTable | None,
    tau: float,
    spec: CalibrationSpec,
) -> dict[str, Any]:
    """The check parts under ``auto`` at the calibrated τ: per dataset and pooled."""
    records = _records(model, parts, evidence, "auto", tau)
    report: dict[str, Any] = {
        "tau": None if np.isinf(tau) else tau,
        "alpha": spec.alpha,
        "harm_definition": spec.harm,
        "interval_level": spec.interval_level,
    }
    offset = 0
    pooled: dict[str, list[np.ndarray]] = {}
    for name, units in records.items():
        report[name] = {"posts": len(parts[name]), **harm_summary(units, spec.harm, spec.interval_level)}
        shifted = dict(units, post=units["post"] + offset)  # post ids stay distinct when pooled
        offset += len(parts[name])
        for key, value in shifted.items():
            pooled.setdefault(key, []).append(value)
    if records:
        joined = {k: np.concatenate(v) for k, v in pooled.items()}
        report["pooled"] = {"posts": offset, **harm_summary(joined, spec.harm, spec.interval_level)}
    return report
