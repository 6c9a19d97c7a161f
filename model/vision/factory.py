"""Build a vision backbone from the short spec stored in configs and artifacts.

Specs: "efficientnet-lite0" (the offline default), "hf:/local/path" (a Hugging Face vision tower), or a
dict {"type": "efficientnet-lite0" | "hf", "path": ..., **config fields}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model.vision.backbone import VisionBackbone

DEFAULT_BACKBONE = "efficientnet-lite0"
_EFFICIENTNET_NAMES = frozenset({"efficientnet-lite0", "efficientnet_lite0", "efficientnet"})


def _fields_of(config_class: type, options: dict[str, Any]) -> dict[str, Any]:
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} options: {unknown}")
    return options


def parse_backbone_spec(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """Normalise a spec to a dict with a "type" key ("efficientnet-lite0" or "hf")."""
    if spec is None or spec == "":
        return {"type": DEFAULT_BACKBONE}
    if isinstance(spec, str):
        if spec.startswith("hf:"):
            path = spec.removeprefix("hf:")
            if not path:
                raise ValueError("'hf:' spec needs a local path, e.g. 'hf:/models/clip-vit-b32'")
            return {"type": "hf", "path": path}
        return {"type": spec}
    if "type" not in spec:
        raise ValueError(f"backbone spec dict needs a 'type': {spec}")
    return dict(spec)


def build_backbone(spec: str | dict[str, Any] | None = DEFAULT_BACKBONE) -> VisionBackbone:
    """A frozen backbone for `spec`; never downloads anything."""
    options = parse_backbone_spec(spec)
    kind = str(options.pop("type")).lower()
    if kind in _EFFICIENTNET_NAMES:
        from model.vision.efficientnet import EfficientNetLiteBackbone, EfficientNetLiteConfig

        return EfficientNetLiteBackbone(EfficientNetLiteConfig(**_fields_of(EfficientNetLiteConfig, options)))
    if kind == "hf":
        # Imported here so that the default backbone does not pay for importing transformers.
        from model.vision.hf_tower import HFTowerConfig, HFVisionTower

        if "path" not in options:
            raise ValueError("an 'hf' backbone needs a 'path'")
        return HFVisionTower(HFTowerConfig(**_fields_of(HFTowerConfig, options)))
    raise ValueError(f"unknown vision backbone {kind!r}; use 'efficientnet-lite0' or 'hf:/local/path'")
