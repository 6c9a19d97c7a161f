"""Any Hugging Face vision tower (CLIP, SigLIP, ...) from a local directory, as a vision backbone.

Global vector = the tower's pooled output (CLIP: the normalised CLS token; SigLIP: its attention-pooling
head); regions = the patch tokens without CLS/register tokens, average-pooled to a fixed grid so that
the evidence set has the same size whatever the patch size. No tags: these towers have no classifier.
Preprocessing follows the directory's `preprocessor_config.json`, re-implemented with PIL because the
HF image processors may need torchvision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from model.vision.backbone import VisionBackbone
from model.vision.preprocess import ImageTransform, images_to_batch

logger = logging.getLogger(__name__)

_HALF = (0.5, 0.5, 0.5)
# Towers whose last_hidden_state comes before the final LayerNorm that their pooled output went
# through; normalising the patches too keeps regions and global vectors in one space.
_PATCHES_BEFORE_FINAL_NORM = frozenset({"clip_vision_model"})
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass
class HFTowerConfig:
    path: str  # local directory holding config.json and the weights (a full CLIP/SigLIP is fine)
    screen_size: int | None = None  # screen input side; None = about 3/4 of the detail side
    region_grid: int | None = 7  # pool the patch grid down to this side; None keeps every patch
    max_batch: int = 32  # images per forward pass


def _triple(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if values is None:
        return default
    if isinstance(values, int | float):
        return (float(values), float(values), float(values))
    first, second, third = (float(v) for v in values)
    return (first, second, third)


def read_image_transform(directory: Path, model_type: str, native_size: int) -> tuple[ImageTransform, int]:
    """(transform, detail side) from `preprocessor_config.json`, or the model family's defaults."""
    clip_like = model_type.startswith("clip")
    default_mean = tuple(OPENAI_CLIP_MEAN) if clip_like else _HALF
    default_std = tuple(OPENAI_CLIP_STD) if clip_like else _HALF
    config_file = directory / "preprocessor_config.json"
    if not config_file.is_file():
        transform = ImageTransform(
            mean=_triple(default_mean, _HALF), std=_triple(default_std, _HALF), crop_fraction=None
        )
        return transform, native_size

    spec = json.loads(config_file.read_text())
    mean = _triple(spec.get("image_mean"), _triple(default_mean, _HALF))
    std = _triple(spec.get("image_std"), _triple(default_std, _HALF))
    if not spec.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # Our pixels arrive on the 0..1 scale (x / 255); fold any other rescale factor into mean/std.
    rescale = float(spec.get("rescale_factor", 1 / 255)) if spec.get("do_rescale", True) else 1.0
    gain = 255.0 * rescale
    mean = (mean[0] / gain, mean[1] / gain, mean[2] / gain)
    std = (std[0] / gain, std[1] / gain, std[2] / gain)
    resample = int(spec.get("resample", Image.Resampling.BICUBIC))

    size, crop = spec.get("size"), spec.get("crop_size")
    shortest = size if isinstance(size, int) else (size or {}).get("shortest_edge")
    crop_side = crop if isinstance(crop, int) else (crop or {}).get("height")
    if spec.get("do_center_crop", crop is not None) and shortest and crop_side:
        transform = ImageTransform(mean=mean, std=std, crop_fraction=crop_side / shortest, resample=resample)
        return transform, int(crop_side)
    if isinstance(size, dict) and size.get("height"):
        if size.get("width", size["height"]) != size["height"]:
            logger.warning("non-square processor size %s; using %d px squares", size, size["height"])
        return ImageTransform(mean=mean, std=std, crop_fraction=None, resample=resample), int(size["height"])
    return ImageTransform(mean=mean, std=std, crop_fraction=None, resample=resample), native_size


class HFVisionTower(VisionBackbone):
    def __init__(self, config: HFTowerConfig) -> None:
        super().__init__()
        directory = Path(config.path).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model (config.json) in {directory}")
        self.config = config
        self.directory = directory
        self.max_batch = config.max_batch

        model_config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        vision_config = getattr(model_config, "vision_config", None) or model_config
        try:
            tower_class: Any = transformers.MODEL_MAPPING[type(vision_config)]
        except KeyError as error:
            kind = vision_config.model_type
            raise ValueError(f"no vision model class for {kind!r} in {directory}") from error
        # The tower class reads only its sub-config and sub-weights out of a full CLIP/SigLIP folder.
        self.tower, loading = tower_class.from_pretrained(
            directory, local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
        if loading.get("missing_keys"):
            # A missing weight is silently random-initialised by transformers: refuse instead.
            raise ValueError(f"weights missing from {directory}: {sorted(loading['missing_keys'])[:5]}")

        self.model_type: str = vision_config.model_type
        self.patch_size = int(vision_config.patch_size)
        self.native_size = int(vision_config.image_size)
        self.dim = int(vision_config.hidden_size)
        self.name = f"hf:{directory.name}"
        self.transform, self.detail_size = read_image_transform(directory, self.model_type, self.native_size)
        self.screen_size = config.screen_size or self._default_screen_size()
        detail_grid = self.detail_size // self.patch_size
        self.region_grid = min(config.region_grid or detail_grid, detail_grid)
        self.num_regions = self.region_grid**2
        needs_norm = self.model_type in _PATCHES_BEFORE_FINAL_NORM
        self._final_norm = getattr(self.tower, "post_layernorm", None) if needs_norm else None
        self.freeze()
        logger.info("loaded %s vision tower from %s (dim %d)", self.model_type, directory, self.dim)

    def _default_screen_size(self) -> int:
        patches = max(1, round(0.75 * self.detail_size / self.patch_size))
        return patches * self.patch_size

    def weight_files(self) -> list[Path]:
        files = [path for pattern in _WEIGHT_PATTERNS for path in self.directory.glob(pattern)]
        if not files:
            raise FileNotFoundError(f"no weight files in {self.directory}")
        return files

    @property
    def source(self) -> str:
        return str(self.directory)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model_type": self.model_type, "region_grid": self.region_grid}

    def preprocess(self, images: Sequence[Image.Image], size: int) -> torch.Tensor:
        assert self.transform is not None  # read from the tower's processor config in __init__
        return images_to_batch(images, size, self.transform)

    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(B, 3, s, s) -> pooled (B, D), patch tokens (B, side*side, D), side."""
        side = pixels.shape[-1] // self.patch_size
        kwargs = {"interpolate_pos_encoding": True} if pixels.shape[-1] != self.native_size else {}
        output = self.tower(pixel_values=pixels, **kwargs)
        hidden = output.last_hidden_state  # (B, prefix + side*side, D)
        patches = hidden[:, hidden.shape[1] - side * side :]  # CLS / register tokens come first
        if self._final_norm is not None:
            patches = self._final_norm(patches)
        pooled = output.pooler_output
        if pooled is None:  # towers without a pooling head (e.g. SigLIP with vision_use_head=False)
            pooled = patches.mean(dim=1)
        return pooled, patches, side

    def screen_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, None]:
        pooled, _, _ = self._encode(pixels)
        return pooled, None

    def detail_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pooled, patches, side = self._encode(pixels)
        grid = patches.transpose(1, 2).reshape(patches.shape[0], self.dim, side, side)  # (k, D, side, side)
        if side != self.region_grid:
            grid = F.adaptive_avg_pool2d(grid, self.region_grid)  # (k, D, g, g)
        regions = grid.flatten(2).transpose(1, 2)  # (k, g*g, D), row-major
        return pooled, regions, None
