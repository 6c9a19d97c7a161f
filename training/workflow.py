"""The train -> calibrate -> evaluate -> export workflow, shared by the CLI subcommands."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from calibration import Method, calibrate_threshold
from model.artifacts import (
    ArtifactInfo,
    build_model,
    load_artifacts,
    save_artifacts,
    threshold_from_calibration,
)
from model.base import SaverBase
from model.config import SaverConfig
from model.gate import VisionMode
from model.mner import MnerModel
from model.mre import MreModel
from model.spans import enumerate_spans
from model.vision import build_backbone
from training.batches import batched, mner_batch, mre_batch
from training.data import ImageStore, MnerExample, MreExample, read_rel2id
from training.datasets import load_mner, load_mre, load_post_images
from training.evaluate import Stopwatch, evaluate_mner, evaluate_mre
from training.evidence import EvidenceTable, image_evidence
from training.predict import Predictions, predict_mner, predict_mre
from training.trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)
Example = MnerExample | MreExample


@dataclass
class DataSpec:
    train: list[str]
    dev: list[str]
    captions: list[str]
    groundability: str | None = None
    images: str | None = None  # folder of real images for the posts that have them
    evidence_style: str = "pseudo_tags"
    calibration_fraction: float = 0.5


def load_examples(task: str, paths: Sequence[str], spec: DataSpec) -> list[Any]:
    if task == "mner":
        return load_mner(paths, spec.captions, spec.groundability)
    return load_mre(paths, spec.captions)


def build_evidence(model: SaverBase, examples: Sequence[Example], spec: DataSpec) -> EvidenceTable:
    table = EvidenceTable(
        model.encoder,
        {e.id: list(e.captions) for e in examples},
        spec.evidence_style,  # type: ignore[arg-type]
        model.cfg.evidence_tags_k,
    )
    if spec.images:
        posts = load_post_images(examples, ImageStore(root=Path(spec.images)))
        if posts:
            table.update(
                image_evidence(
                    model.encoder, build_backbone(model.cfg.vision_backbone), posts, model.cfg.evidence_tags_k
                )
            )
            log.info("real-image evidence for %d posts", len(posts))
    return table


def predict(
    model: SaverBase, examples: Sequence[Example], evidence: EvidenceTable | None, mode: VisionMode
) -> Predictions:
    if isinstance(model, MnerModel):
        return predict_mner(model, examples, evidence, mode)  # type: ignore[arg-type]
    assert isinstance(model, MreModel)
    return predict_mre(model, examples, evidence, mode)  # type: ignore[arg-type]


def evaluate(
    model: SaverBase, examples: Sequence[Example], evidence: EvidenceTable | None, mode: VisionMode
) -> dict[str, Any]:
    watch = Stopwatch()
    pred = predict(model, examples, evidence, mode)
    threshold = model.threshold if mode == "auto" else (0.0 if mode == "always" else float("inf"))
    if isinstance(model, MnerModel):
        return evaluate_mner(examples, pred, threshold, model.cfg.max_span_width, watch.seconds)  # type: ignore[arg-type]
    return evaluate_mre(examples, pred, threshold, watch.seconds)  # type: ignore[arg-type]


def calibrate(
    model: SaverBase,
    examples: Sequence[Example],
    evidence: EvidenceTable | None,
    alpha: float,
    delta: float,
    method: str,
    harm: str,
) -> dict[str, Any]:
    """Gate scores and harm labels of the eligible units under forced vision, then SPEC §3's threshold.

    Returns the calibration record, plus the rates the service will see at that τ (per unit over *all*
    units, and per request), so a dashboard can compare live activation with what calibration expects.
    """
    units = predict(model, examples, evidence, "always").units.arrays()
    eligible = units["candidate"].astype(bool) if len(units["candidate"]) else np.zeros(0, dtype=bool)
    scores = units["gate"][eligible] if eligible.any() else np.zeros(0)
    if harm == "not_groundable":
        known = units["groundable"][eligible] >= 0
        scores, harmful = scores[known], units["groundable"][eligible][known] == 0
    else:
        harmful = (units["pred"] != units["gold"])[eligible] if eligible.any() else np.zeros(0, dtype=bool)
    result = calibrate_threshold(
        scores,
        harmful,
        alpha=alpha,
        delta=delta,
        method=cast(Method, method),
        harm_definition=harm,  # type: ignore[arg-type]
    )
    on = eligible & (units["gate"] >= result.tau) if eligible.any() else eligible
    if isinstance(model, MnerModel):
        total = sum(len(enumerate_spans(len(e.tokens), model.cfg.max_span_width)) for e in examples)
    else:
        total = len(examples)
    posts = {int(p) for p in units["post"][on]} if on.any() else set()
    return {
        **result.to_dict(include_curve=False),
        "unit_activation_rate": float(on.sum()) / max(total, 1),
        "request_activation_rate": len(posts) / max(len(examples), 1),
        "n_posts": len(examples),
    }


def split_for_calibration(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic post-level split: (calibration, rest)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * fraction)
    return [examples[i] for i in sorted(order[:cut])], [examples[i] for i in sorted(order[cut:])]


def train(config_path: Path, out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(config_path.read_text())
    model_cfg = SaverConfig.from_dict(config["model"])
    train_cfg = TrainConfig(**{**config.get("train", {}), **overrides})
    spec = DataSpec(**config["data"])
    if model_cfg.task == "mre" and "labels" not in config["model"]:
        rel2id = Path(spec.train[0]).with_name("rel2id.json")
        if rel2id.is_file():
            model_cfg.labels = read_rel2id(rel2id)
    train_set = load_examples(model_cfg.task, spec.train, spec)
    dev_parts = {_dataset_name(p): load_examples(model_cfg.task, [p], spec) for p in spec.dev}
    dev_set = [e for part in dev_parts.values() for e in part]
    model = build_model(model_cfg)
    evidence = build_evidence(model, train_set + dev_set, spec)
    make = mner_batch if model_cfg.task == "mner" else mre_batch
    steps = (len(train_set) + train_cfg.batch_size - 1) // train_cfg.batch_size

    def batches(epoch: int) -> Any:
        for chunk in batched(train_set, train_cfg.batch_size, shuffle=True, seed=train_cfg.seed + epoch):
            yield make(chunk, evidence)  # type: ignore[arg-type]

    best_dir = out / "best"

    def save_best(metrics: dict[str, Any]) -> None:
        save_artifacts(
            model,
            best_dir,
            ArtifactInfo(
                name=f"saver-{model_cfg.task}",
                version="0.1.0",
                trained=True,
                metrics={"dev_during_training": metrics},
            ),
        )

    trainer = Trainer(
        model, train_cfg, out, batches, steps, lambda: evaluate(model, dev_set, evidence, "auto"), save_best
    )
    best = trainer.fit()
    model, _ = load_artifacts(best_dir, model.encoder)
    cal_set, _ = split_for_calibration(dev_set, spec.calibration_fraction, train_cfg.seed)
    cal = config.get("calibration", {})
    record = calibrate(
        model,
        cal_set,
        evidence,
        cal.get("alpha", 0.1),
        cal.get("delta", 0.05),
        cal.get("method", "bonferroni"),
        cal.get("harm", "forced_vision_wrong"),
    )
    model.threshold = threshold_from_calibration(record)
    metrics = {"train_seconds": best["train_seconds"], "best_epoch": best.get("epoch")}
    for mode in ("never", "auto", "always"):
        metrics[mode] = {name: evaluate(model, part, evidence, mode) for name, part in dev_parts.items()}
    info = ArtifactInfo(
        name=f"saver-{model_cfg.task}",
        version="0.1.0",
        trained=True,
        backbones={"vision": {"spec": model_cfg.vision_backbone}},
        calibration={
            **record,
            "data": f"random {spec.calibration_fraction:.0%} of the dev posts (seed {train_cfg.seed})",
        },
        metrics={
            "dev": metrics,
            "evidence_style": spec.evidence_style,
            "data": {"train": spec.train, "dev": spec.dev},
        },
    )
    save_artifacts(model, out / "artifact", info)
    (out / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _dataset_name(path: str) -> str:
    """``../shared/data/mner/twitter2015/valid.txt`` -> ``twitter2015/valid``."""
    p = Path(path)
    return f"{p.parent.name}/{p.stem}"
