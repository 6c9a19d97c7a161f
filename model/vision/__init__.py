"""Vision backbones: a cheap `screen` tier for every fetched image, a `detail` tier for selected ones."""

from model.vision.backbone import DetailOutput, ScreenOutput, TierGraph, VisionBackbone
from model.vision.factory import DEFAULT_BACKBONE, build_backbone, parse_backbone_spec

__all__ = [
    "DEFAULT_BACKBONE",
    "DetailOutput",
    "ScreenOutput",
    "TierGraph",
    "VisionBackbone",
    "build_backbone",
    "parse_backbone_spec",
]
