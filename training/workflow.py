"""The train -> fit gate -> calibrate -> check -> evaluate -> export workflow, shared by the CLI.

Statistics first: the dev posts are cut into selection / calibration / check parts (training/splits.py)
before anything is trained, and each part is read by one step only. The calibration method, α and δ
come from the training config, fixed before calibration runs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.artifacts import ArtifactInfo, build_model, load_artifacts, save_artifacts
from model.base import NEVER, SaverBase
from model.config import SaverConfig
from model.gate import VisionMode
from model.mner import MnerModel
from model.vision import build_backbone
from training import distributed as D
from training.batches import mner_batch, mre_batch, n_rank_batches, rank_batches
from training.calibrate import CalibrationSpec, calibrate, check_harm
from training.data import ImageStore, MnerExample, MreExample, read_rel2id
from training.datasets import load_mner, load_mre, post_image_files
from training.evaluate import Stopwatch, evaluate_mner, evaluate_mre
from training.evidence import EvidenceTable, image_evidence
from training.feature_cache import FeatureCache
from training.predict import Predictions, predict
from training.splits import SplitSpec, describe, part, split_datasets
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
    split: dict[str, Any] = field(default_factory=dict)  # SplitSpec fields


def load_examples(task: str, paths: Sequence[str], spec: DataSpec) -> list[Any]:
    if task == "mner":
        return load_mner(paths, spec.captions, spec.groundability)
    return load_mre(paths, spec.captions)


def build_evidence(
    model: SaverBase, examples: Sequence[Example], spec: DataSpec, dist: D.Dist | None = None
) -> EvidenceTable:
    """Caption (or pseudo-tag) evidence, replaced by real-image evidence for the posts whose images exist.
    Under torchrun each rank first encodes its share of the uncached images."""
    table = EvidenceTable(
        model.encoder,
        {e.id: list(e.captions) for e in examples},
        spec.evidence_style,  # type: ignore[arg-type]
        model.cfg.evidence_tags_k,
    )
    if spec.images:
        posts = post_image_files(examples, ImageStore(root=Path(spec.images)))
        if posts:
            cache = FeatureCache(build_backbone(model.cfg.vision_backbone))
            if dist is not None and dist.active:
                files = sorted({str(p) for files in posts.values() for p in files})
                cache.fill([Path(f) for f in files[dist.rank :: dist.world_size]])
                D.barrier(dist)
            table.update(image_evidence(model.encoder, cache, posts, model.cfg.evidence_tags_k))
            table.vision = {"spec": model.cfg.vision_backbone, **cache.backbone.identity()}
            log.info("real-image evidence for %d posts (%d images encoded)", len(posts), cache.encoded)
    return table


def evaluate(
    model: SaverBase,
    examples: Sequence[Example],
    evidence: EvidenceTable | None,
    mode: VisionMode,
    threshold: float,
    predictions_out: Path | None = None,
) -> dict[str, Any]:
    """SPEC §5's report (``gate.threshold`` is the calibrated τ whatever the mode; ``vision`` says which mode
    ran); ``predictions_out`` also writes each post's answer (JSONL, in input order)."""
    watch = Stopwatch()
    pred = predict(model, examples, evidence, mode, threshold)
    if predictions_out is not None:
        write_predictions(predictions_out, examples, pred)
    return report(model, examples, pred, mode, threshold, watch.seconds)


def report(
    model: SaverBase,
    examples: Sequence[Example],
    pred: Predictions,
    mode: VisionMode,
    threshold: float,
    seconds: float,
) -> dict[str, Any]:
    """The SPEC §5 report of predictions already made."""
    if isinstance(model, MnerModel):
        out = evaluate_mner(examples, pred, threshold, model.cfg.max_span_width, seconds)  # type: ignore[arg-type]
    else:
        out = evaluate_mre(examples, pred, threshold, seconds)  # type: ignore[arg-type]
    return {**out, "vision": mode}


def write_predictions(path: Path, examples: Sequence[Example], pred: Predictions) -> None:
    """One JSON object per post: MNER ``entities`` as [start, end, type, score] word spans; MRE
    ``relation`` and ``score``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i, ex in enumerate(examples):
            row: dict[str, Any] = {"id": ex.id}
            if pred.entities:
                row["entities"] = [list(e) for e in pred.entities[i]]
            else:
                row["relation"], row["score"] = pred.relations[i]
            out.write(json.dumps(row) + "\n")


@dataclass
class Run:
    """Everything a training run reads, loaded once."""

    config: dict[str, Any]
    model_cfg: SaverConfig
    train_cfg: TrainConfig
    data: DataSpec
    split: SplitSpec
    train_set: list[Any]
    dev: dict[str, dict[str, list[Any]]]  # dataset -> part -> posts

    def part(self, name: str) -> list[Any]:
        return part(self.dev, name)


RUN_CONFIG = "run_config.json"  # the resolved training config, which ``--resume RUN_DIR`` reads


def resolve_config(config_path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(config_path.read_text())
    return {**config, "train": {**config.get("train", {}), **overrides}}


def prepare(config: dict[str, Any]) -> Run:
    model_cfg = SaverConfig.from_dict(config["model"])
    train_cfg = TrainConfig(**config.get("train", {}))
    data = DataSpec(**config["data"])
    split = SplitSpec(**data.split)
    if model_cfg.task == "mre" and "labels" not in config["model"]:
        rel2id = Path(data.train[0]).with_name("rel2id.json")
        if rel2id.is_file():
            model_cfg.labels = read_rel2id(rel2id)
    train_set = load_examples(model_cfg.task, data.train, data)
    images = ImageStore(root=Path(data.images)) if data.images else None
    if images and "image" not in model_cfg.evidence_channels and post_image_files(train_set, images):
        # the manifest's images exist: the image-feature channel trains on them (and is on when served)
        model_cfg.evidence_channels = ("image", *model_cfg.evidence_channels)
        log.info("training images found under %s: the image channel is on", data.images)
    dev = split_datasets({dataset_name(p): load_examples(model_cfg.task, [p], data) for p in data.dev}, split)
    return Run(config, model_cfg, train_cfg, data, split, train_set, dev)


def selection_score(model: SaverBase, run: Run, evidence: EvidenceTable) -> dict[str, Any]:
    """Early stopping reads the selection part only: mean F1 of the text-only and the forced-vision paths,
    the two paths every served answer is made of."""
    posts = run.part("selection")
    never = evaluate(model, posts, evidence, "never", NEVER)
    always = evaluate(model, posts, evidence, "always", NEVER)
    return {"f1": (never["f1"] + always["f1"]) / 2, "f1_never": never["f1"], "f1_always": always["f1"]}


@dataclass
class Launch:
    """Where and how a run executes; none of it changes what is learnt (unlike ``TrainConfig``)."""

    device: str = "auto"
    resume: bool = False
    stop_after: int = 0  # >0: checkpoint and stop after this many optimizer steps (time-limited jobs)


def fit(
    run: Run, out: Path, dist: D.Dist, launch: Launch
) -> tuple[SaverBase, EvidenceTable, dict[str, Any]] | None:
    """Train the model; the checkpoint with the best selection score is kept in ``out/best``. None when
    ``launch.stop_after`` stopped the run, and on every rank but 0 (which alone goes on to calibrate)."""
    cfg = run.train_cfg
    D.seed_everything(cfg.seed, 0)  # the same initial weights in every process and every rerun
    model = build_model(run.model_cfg)
    dev_posts = [e for by_part in run.dev.values() for posts in by_part.values() for e in posts]
    evidence = build_evidence(model, run.train_set + dev_posts, run.data, dist).to(dist.device)
    make = mner_batch if run.model_cfg.task == "mner" else mre_batch
    steps = n_rank_batches(len(run.train_set), cfg.batch_size, dist.world_size)

    def batches(epoch: int) -> Any:
        seed = cfg.seed + epoch
        for chunk in rank_batches(run.train_set, cfg.batch_size, True, seed, dist.rank, dist.world_size):
            yield make(chunk, evidence)  # type: ignore[arg-type]

    best_dir = out / "best"

    def save_best(metrics: dict[str, Any]) -> None:
        info = ArtifactInfo(f"saver-{run.model_cfg.task}", "0.1.0", True, metrics={"selection": metrics})
        save_artifacts(model, best_dir, info)

    trainer = Trainer(
        model, cfg, out, batches, steps, lambda: selection_score(model, run, evidence), save_best, dist
    )
    best = trainer.fit(resume=launch.resume, stop_after=launch.stop_after)
    D.teardown(dist)
    if best is None or not dist.main:
        return None
    # calibration and the final evaluation run on the CPU, as the service does
    model.to("cpu")
    evidence.to(torch.device("cpu"))
    model, _ = load_artifacts(best_dir, model.encoder)
    return model, evidence, best


def train(
    config: Path | dict[str, Any] | None,
    out: Path,
    overrides: dict[str, Any] | None = None,
    reuse_checkpoint: bool = False,
    launch: Launch | None = None,
) -> dict[str, Any]:
    """The whole workflow; ``reuse_checkpoint`` skips training and finishes from ``out/best`` (to refit the
    gate or recalibrate a trained run: its splits are rebuilt from the same config and seed). With
    ``launch.resume`` the config is the run folder's own. Returns ``{}`` on ranks other than 0 and
    ``{"stopped_after": N}`` when ``launch.stop_after`` stopped training."""
    launch = launch or Launch()
    if launch.resume:
        resolved = json.loads((out / RUN_CONFIG).read_text())
    else:
        if config is None:
            raise ValueError("a config is needed unless resuming")
        resolved = config if isinstance(config, dict) else resolve_config(config, overrides or {})
    dist = D.setup(launch.device)
    if dist.main and not launch.resume and not reuse_checkpoint:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG).write_text(json.dumps(resolved, indent=2) + "\n")
    run = prepare(resolved)
    if not reuse_checkpoint:
        trained = fit(run, out, dist, launch)
        if trained is None:
            return {"stopped_after": launch.stop_after} if dist.main else {}
        model, evidence, best = trained
        return finish(run, model, evidence, out, best)
    D.teardown(dist)
    if not dist.main:
        return {}
    model, info = load_artifacts(out / "best")
    dev_posts = [e for by_part in run.dev.values() for posts in by_part.values() for e in posts]
    evidence = build_evidence(model, run.train_set + dev_posts, run.data)
    best = dict(info.metrics.get("selection", {}))
    history = out / "metrics.json"
    if history.is_file():
        best["train_seconds"] = json.loads(history.read_text())[-1].get("seconds")
    return finish(run, model, evidence, out, best)


def finish(
    run: Run, model: SaverBase, evidence: EvidenceTable, out: Path, best: dict[str, Any]
) -> dict[str, Any]:
    """Gate fit (if configured), calibration, check-split report and dev evaluation, then the artifact."""
    from training.gate_fit import GateFitSpec, fit_gate

    gate_spec = GateFitSpec(**run.config.get("gate_fit", {"enabled": False}))
    gate_report: dict[str, Any] = {}
    if gate_spec.enabled:
        gate_report = fit_gate(model, run, evidence, gate_spec, out)
    cal_spec = CalibrationSpec(**run.config.get("calibration", {}))
    calibration = calibrate(model, {d: p["calibration"] for d, p in run.dev.items()}, evidence, cal_spec)
    threshold = math.inf if calibration["tau"] is None else float(calibration["tau"])
    check = check_harm(model, {d: p["check"] for d, p in run.dev.items()}, evidence, threshold, cal_spec)
    split_record = describe(run.dev, run.split)
    calibration["split"] = split_record
    dev_metrics: dict[str, Any] = {
        "train_seconds": best.get("train_seconds"),
        "best_epoch": best.get("epoch"),
    }
    full = {n: p["selection"] + p["calibration"] + p["check"] for n, p in run.dev.items()}
    # the parts no choice ever read (calibration and check): dev figures free of checkpoint and gate
    # selection, scored from the same predictions as the whole split
    held_out = {n: range(len(p["selection"]), len(full[n])) for n, p in run.dev.items()}
    held_out_metrics: dict[str, Any] = {}
    auroc: dict[str, Any] = {}
    auroc_held_out: dict[str, Any] = {}
    for mode in ("never", "auto", "always"):
        dev_metrics[mode], held_out_metrics[mode] = {}, {}
        for name, posts in full.items():
            watch = Stopwatch()
            pred = predict(model, posts, evidence, mode, threshold)
            dev_metrics[mode][name] = report(model, posts, pred, mode, threshold, watch.seconds)
            part = pred.subset(held_out[name])
            r = report(model, [posts[i] for i in held_out[name]], part, mode, threshold, 0.0)
            held_out_metrics[mode][name] = {
                k: r[k] for k in ("precision", "recall", "f1", "n_examples", "gate")
            }
            if mode == "never" and isinstance(model, MnerModel) and run.data.groundability:
                from training.gate_fit import gate_auroc, type_prior

                prior = type_prior(run.train_set)
                auroc[name] = gate_auroc(model, pred.units.arrays(), prior)
                auroc_held_out[name] = gate_auroc(model, part.units.arrays(), prior)
    info = ArtifactInfo(
        name=f"saver-{run.model_cfg.task}",
        version="0.2.0",
        trained=True,
        backbones={"vision": evidence.vision or {"spec": run.model_cfg.vision_backbone}},
        calibration=calibration,
        metrics={
            "dev": dev_metrics,
            "check": check,
            "gate_fit": gate_report,
            "gate_auroc": auroc,
            "gate_auroc_held_out": auroc_held_out,
            "dev_held_out": held_out_metrics,
            "selection": best,
            "evidence_style": run.data.evidence_style,
            "image_evidence": {"posts": evidence.n_image_posts, "images": run.data.images},
            "data": {"train": run.data.train, "dev": run.data.dev, "split": split_record},
        },
    )
    save_artifacts(model, out / "artifact", info)
    summary = {
        "dev": dev_metrics,
        "check": check,
        "calibration": calibration,
        "gate_fit": gate_report,
        "gate_auroc": auroc,
        "gate_auroc_held_out": auroc_held_out,
        "dev_held_out": held_out_metrics,
    }
    (out / "final_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def dataset_name(path: str) -> str:
    """``../shared/data/mner/twitter2015/valid.txt`` -> ``twitter2015/valid``."""
    p = Path(path)
    return f"{p.parent.name}/{p.stem}"
