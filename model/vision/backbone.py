"""The two-tier vision backbone interface (SPEC §2.4).

`screen` is the cheap tier run on every fetched image (global vectors, at low resolution); `detail` is
the full-resolution tier run only on the images the selector keeps (global vectors plus a region grid).
Backbones are frozen feature extractors: the trainable parts of SAVER sit on top of them.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from model.answer import top_tags
from model.pixels import ImageTransform

logger = logging.getLogger(__name__)

Tier = Literal["screen", "detail"]


@dataclass
class ScreenOutput:
    global_vectors: torch.Tensor  # (M, Dv) one vector per fetched image
    tag_logits: torch.Tensor | None  # (M, n_tags), None when the backend has no tag vocabulary


@dataclass
class DetailOutput:
    global_vectors: torch.Tensor  # (k, Dv) one vector per selected image
    regions: torch.Tensor  # (k, R, Dv) region grid flattened row-major (R = 49 for 7x7)
    tag_logits: torch.Tensor | None  # (k, n_tags) or None


def sha256_of_files(paths: Sequence[Path]) -> str:
    """sha256 of one file, or of the sorted `name:sha256` lines of several (sharded checkpoints)."""
    digests = []
    for path in sorted(paths):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests.append((path.name, digest.hexdigest()))
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{name}:{hexd}\n" for name, hexd in digests).encode()).hexdigest()


class VisionBackbone(nn.Module, abc.ABC):
    """Frozen image encoder with a cheap `screen` tier and a full `detail` tier.

    Subclasses build their network in `__init__`, set the attributes below, call `freeze()`, and
    implement `preprocess`, `screen_tensor` and `detail_tensor`. The tensor-level forwards take a
    preprocessed batch, so they can be traced for ONNX export (see `TierGraph`).
    """

    name: str  # stable backend name recorded in artifacts, e.g. "efficientnet-lite0"
    dim: int  # Dv, width of global and region vectors
    screen_size: int  # input side in pixels for the screen tier
    detail_size: int  # input side in pixels for the detail tier
    num_regions: int  # R, region vectors per image at the detail tier
    max_batch: int = 32  # images per forward pass; bounds peak memory on posts with many images
    # what ``preprocess`` applies (``images_to_batch`` with it); the ONNX export records it so the
    # torch-free worker preprocesses alike. None: a backbone with its own preprocessing (not exportable)
    transform: ImageTransform | None = None

    def __init__(self) -> None:
        super().__init__()
        self._weights_sha256: str | None = None

    # --- what a subclass provides -------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, images: Sequence[Image.Image], size: int) -> torch.Tensor:
        """(N, 3, size, size) normalised batch for this backbone."""

    @abc.abstractmethod
    def screen_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M, 3, s, s) -> global (M, Dv), tag logits (M, n_tags) or None."""

    @abc.abstractmethod
    def detail_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(k, 3, S, S) -> global (k, Dv), regions (k, R, Dv), tag logits (k, n_tags) or None."""

    @abc.abstractmethod
    def weight_files(self) -> list[Path]:
        """The files the weights were read from (hashed into `identity()`)."""

    @property
    def tag_vocabulary(self) -> list[str] | None:
        """Human-readable names of the tag logits' columns; None when the backend has no tags."""
        return None

    @property
    def source(self) -> str:
        """Where the weights come from (a path), for the artifacts' record."""
        return str(self.weight_files()[0].parent)

    # --- shared behaviour ---------------------------------------------------------------------
    def freeze(self) -> None:
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> VisionBackbone:
        # A parent module's .train() recurses into children; a frozen backbone must stay in eval
        # mode anyway, or BatchNorm running statistics would drift during SAVER's training.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def identity(self) -> dict[str, Any]:
        """Name, weight source and sha256, recorded in the artifacts' config.json."""
        if self._weights_sha256 is None:
            self._weights_sha256 = sha256_of_files(self.weight_files())
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self._weights_sha256,
            "dim": self.dim,
            "screen_size": self.screen_size,
            "detail_size": self.detail_size,
        }

    # no_grad rather than inference_mode: the outputs feed trainable layers during SAVER's training,
    # and inference tensors cannot be saved for backward.
    @torch.no_grad()
    def screen(self, images: Sequence[Image.Image]) -> ScreenOutput:
        pixels = self.preprocess(images, self.screen_size)
        parts = [self.screen_tensor(chunk.to(self.device)) for chunk in self._chunks(pixels)]
        if not parts:
            return ScreenOutput(torch.empty(0, self.dim, device=self.device), self._empty_tags())
        tags = [tag for _, tag in parts]
        return ScreenOutput(
            global_vectors=torch.cat([vectors for vectors, _ in parts]),
            tag_logits=None if tags[0] is None else torch.cat([t for t in tags if t is not None]),
        )

    @torch.no_grad()
    def detail(self, images: Sequence[Image.Image]) -> DetailOutput:
        pixels = self.preprocess(images, self.detail_size)
        parts = [self.detail_tensor(chunk.to(self.device)) for chunk in self._chunks(pixels)]
        if not parts:
            empty_global = torch.empty(0, self.dim, device=self.device)
            empty_regions = torch.empty(0, self.num_regions, self.dim, device=self.device)
            return DetailOutput(empty_global, empty_regions, self._empty_tags())
        tags = [tag for _, _, tag in parts]
        return DetailOutput(
            global_vectors=torch.cat([vectors for vectors, _, _ in parts]),
            regions=torch.cat([regions for _, regions, _ in parts]),
            tag_logits=None if tags[0] is None else torch.cat([t for t in tags if t is not None]),
        )

    def tags(self, tag_logits: torch.Tensor | None, k: int, min_prob: float = 0.0) -> list[list[str]]:
        """Top-k tag names per image, most probable first, dropping those below `min_prob`."""
        vocabulary = self.tag_vocabulary
        if tag_logits is None or vocabulary is None:
            return [[] for _ in range(0 if tag_logits is None else tag_logits.shape[0])]
        # numpy, shared with the torch-free ONNX worker: both backends name the same tags
        return top_tags(tag_logits.detach().float().cpu().numpy(), vocabulary, k, min_prob)

    def tier_graph(self, tier: Tier) -> TierGraph:
        return TierGraph(self, tier)

    def _chunks(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return list(pixels.split(self.max_batch)) if pixels.shape[0] else []

    def _empty_tags(self) -> torch.Tensor | None:
        vocabulary = self.tag_vocabulary
        return None if vocabulary is None else torch.empty(0, len(vocabulary), device=self.device)


class TierGraph(nn.Module):
    """One tier as a plain tensor-in, tensors-out module, for `torch.onnx.export` / `torch.export`."""

    def __init__(self, backbone: VisionBackbone, tier: Tier) -> None:
        super().__init__()
        self.backbone = backbone
        self.tier = tier

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.tier == "screen":
            outputs: tuple[torch.Tensor | None, ...] = self.backbone.screen_tensor(pixels)
        else:
            outputs = self.backbone.detail_tensor(pixels)
        return tuple(output for output in outputs if output is not None)
