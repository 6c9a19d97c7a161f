"""The self-describing artifact directory of SPEC §4: config, labels, weights (only what the backbone
packages do not hold), calibration, metrics and a model card."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.artifact_files import WEIGHTS, ArtifactError, read_json, threshold_from_calibration
from model.base import SaverBase
from model.config import SaverConfig
from model.mner import MnerModel
from model.mre import MreModel
from model.text_encoder import TextEncoder

log = logging.getLogger(__name__)

__all__ = [
    "WEIGHTS",
    "ArtifactError",
    "ArtifactInfo",
    "build_model",
    "load_artifacts",
    "read_json",
    "save_artifacts",
    "stored_state",
    "threshold_from_calibration",
]


@dataclass
class ArtifactInfo:
    name: str = "saver-untrained"
    version: str = "0.0.0"
    trained: bool = False
    backbones: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def build_model(cfg: SaverConfig, encoder: TextEncoder | None = None) -> SaverBase:
    return MnerModel(cfg, encoder) if cfg.task == "mner" else MreModel(cfg, encoder)


def stored_state(model: SaverBase) -> dict[str, torch.Tensor]:
    """Everything but the frozen encoder weights the package already ships (LoRA deltas are kept)."""
    frozen = {f"encoder.bert.{n}" for n, p in model.encoder.bert.named_parameters() if not p.requires_grad}
    return {
        k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
        for k, v in model.state_dict().items()
        if k not in frozen
    }


def save_artifacts(model: SaverBase, out: Path, info: ArtifactInfo) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "name": info.name,
        "version": info.version,
        "trained": info.trained,
        "model": model.cfg.to_dict(),
        "backbones": {"text": model.encoder.identity(), **info.backbones},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "labels.json").write_text(json.dumps(model.cfg.labels, indent=2) + "\n")
    save_file(stored_state(model), str(out / WEIGHTS))
    if info.calibration:
        (out / "calibration.json").write_text(json.dumps(info.calibration, indent=2) + "\n")
    if info.metrics:
        (out / "metrics.json").write_text(json.dumps(info.metrics, indent=2) + "\n")


def load_artifacts(path: Path, encoder: TextEncoder | None = None) -> tuple[SaverBase, ArtifactInfo]:
    """Rebuild the model from config.json and load its stored weights; raises ArtifactError on any problem."""
    if not (path / "config.json").is_file():
        raise ArtifactError(f"no config.json in {path}")
    config = read_json(path / "config.json")
    cfg = SaverConfig.from_dict(config.get("model", {}))
    model = build_model(cfg, encoder)
    weights = path / WEIGHTS
    if weights.is_file():
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors raises several types for a corrupt header
            raise ArtifactError(f"corrupt weights in {weights}: {exc}") from exc
        expected = stored_state(model).keys()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ArtifactError(
                f"weights do not match config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
        )
    elif config.get("trained", False):
        raise ArtifactError(f"{weights} is missing but config.json says the model is trained")
    calibration = read_json(path / "calibration.json") if (path / "calibration.json").is_file() else {}
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    info = ArtifactInfo(
        name=str(config.get("name", path.name)),
        version=str(config.get("version", "0.0.0")),
        trained=bool(config.get("trained", False)) and weights.is_file(),
        backbones=dict(config.get("backbones", {})),
        calibration=calibration,
        metrics=metrics,
    )
    model.eval()
    return model, info
