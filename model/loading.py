"""Build a ready ``SaverPipeline`` from an artifact directory, or a plainly labelled untrained one."""

from __future__ import annotations

import logging
from pathlib import Path

from model.artifacts import ArtifactInfo, build_model, load_artifacts
from model.config import SaverConfig
from model.inference import TorchPipeline
from model.pipeline import Task
from model.text_encoder import TextEncoder
from model.vision import build_backbone

log = logging.getLogger(__name__)

MNRE_RELATIONS = [
    "None", "/per/per/parent", "/per/per/siblings", "/per/per/couple", "/per/per/neighbor", "/per/per/peer",
    "/per/per/charges", "/per/per/alumi", "/per/per/alternate_names", "/per/org/member_of",
    "/per/loc/place_of_residence", "/per/loc/place_of_birth", "/org/org/alternate_names", "/org/org/subsidiary",
    "/org/loc/locate_at", "/loc/loc/contain", "/per/misc/present_in", "/per/misc/awarded", "/per/misc/race",
    "/per/misc/religion", "/per/misc/nationality", "/misc/misc/part_of", "/misc/loc/held_on",
]  # fmt: skip


def default_config(task: Task) -> SaverConfig:
    if task == "mre":
        return SaverConfig(task="mre", labels=list(MNRE_RELATIONS))
    return SaverConfig(task="mner")


def load_pipeline(path: Path, task: Task, encoder: TextEncoder | None = None) -> TorchPipeline:
    """Raises ``ArtifactError`` for a missing or corrupt directory; never falls back silently."""
    model, info = load_artifacts(path, encoder)
    if model.cfg.task != task:
        raise ValueError(f"{path} holds a {model.cfg.task} model, expected {task}")
    backbone_spec = model.cfg.vision_backbone
    return TorchPipeline(
        model,
        lambda: build_backbone(backbone_spec),
        name=info.name,
        version=info.version,
        trained=info.trained,
    )


def untrained_pipeline(task: Task, encoder: TextEncoder | None = None, seed: int = 0) -> TorchPipeline:
    """A randomly initialised model (real encoder and backbone, random heads). Callers must say so."""
    import torch

    torch.manual_seed(seed)
    cfg = default_config(task)
    model = build_model(cfg, encoder).eval()
    info = ArtifactInfo(name=f"saver-{task}-untrained")
    log.warning(
        "serving an UNTRAINED %s model: randomly initialised heads, predictions are meaningless", task
    )
    return TorchPipeline(
        model,
        lambda: build_backbone(cfg.vision_backbone),
        name=info.name,
        version=info.version,
        trained=False,
    )
