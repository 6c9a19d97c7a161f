"""Build a ready ``SaverPipeline`` from an artifact directory, or a plainly labelled untrained one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from model.artifacts import ArtifactInfo, build_model, load_artifacts, threshold_from_calibration
from model.base import SaverBase
from model.config import SaverConfig
from model.graph_bundle import OnnxOptions
from model.inference import TorchPipeline
from model.pipeline import SaverPipeline, Task
from model.text_encoder import TextEncoder
from model.vision import build_backbone

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx"]

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


def load_pipeline(
    path: Path,
    task: Task,
    encoder: TextEncoder | None = None,
    backend: Backend = "torch",
    onnx: OnnxOptions | None = None,
) -> SaverPipeline:
    """Raises ``ArtifactError`` for a missing or corrupt directory; never falls back silently. The ONNX
    backend serves from exported graphs without torch (model/onnx_pipeline.py), building them first if
    they are missing; ``encoder`` is then only used to build."""
    if backend == "onnx" and encoder is None:
        from model.onnx_pipeline import load_onnx_pipeline  # imports onnxruntime only when it is asked for

        return load_onnx_pipeline(task, path, onnx)
    model, info = load_artifacts(path, encoder)
    if model.cfg.task != task:
        raise ValueError(f"{path} holds a {model.cfg.task} model, expected {task}")
    if backend == "onnx":
        return _onnx(model, info, path, onnx or OnnxOptions())
    backbone_spec = model.cfg.vision_backbone
    return TorchPipeline(
        model,
        lambda: build_backbone(backbone_spec),
        name=info.name,
        version=info.version,
        trained=info.trained,
        threshold=threshold_from_calibration(info.calibration),
    )


def untrained_pipeline(
    task: Task,
    encoder: TextEncoder | None = None,
    seed: int = 0,
    backend: Backend = "torch",
    onnx: OnnxOptions | None = None,
) -> SaverPipeline:
    """A randomly initialised model (real encoder and backbone, random heads). Callers must say so."""
    import torch

    torch.manual_seed(seed)
    cfg = default_config(task)
    model = build_model(cfg, encoder).eval()
    info = ArtifactInfo(name=f"saver-{task}-untrained")
    log.warning(
        "serving an UNTRAINED %s model: randomly initialised heads, predictions are meaningless", task
    )
    if backend == "onnx":
        return _onnx(model, info, None, onnx or OnnxOptions())
    return TorchPipeline(
        model,
        lambda: build_backbone(cfg.vision_backbone),
        name=info.name,
        version=info.version,
        trained=False,
        threshold=threshold_from_calibration(info.calibration),
    )


def _onnx(
    model: SaverBase, info: ArtifactInfo, artifacts: Path | None, options: OnnxOptions
) -> SaverPipeline:
    """A model built here in torch, served from its exported graphs (built into the cache if missing)."""
    from model.onnx_pipeline import onnx_pipeline

    return onnx_pipeline(
        model,
        info,
        threshold=threshold_from_calibration(info.calibration),
        artifacts=artifacts,
        cache_dir=options.cache_dir,
        quantize=options.quantize,
        threads=options.threads,
    )
