"""Screen and detail features of training images, computed once by the backbone's own serving code.

The vision backbone is frozen, so an image's features never change while SAVER trains: an epoch reads
them from disk instead of re-encoding every image. Files are keyed by the image bytes' sha256 under a
folder keyed by the backbone's identity (name, weights sha256, tier sizes, region grid), so a new backbone
or new weights never read another's features. Features are what ``VisionBackbone.screen``/``detail`` return
for the image decoded by ``ImageStore.load`` (the service's decoder), i.e. what serving computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.vision.backbone import VisionBackbone
from training.data import ImageStore

log = logging.getLogger(__name__)


def default_root() -> Path:
    return Path(os.environ.get("SAVER_CACHE_DIR", ".cache/saver")) / "image_features"


@dataclass
class ImageFeatures:
    screen: torch.Tensor  # (Dv,) screen-tier global vector
    detail: torch.Tensor  # (Dv,) detail-tier global vector
    regions: torch.Tensor  # (R, Dv) detail-tier region grid
    screen_tags: torch.Tensor | None  # (n_tags,) logits, None for backbones without tags
    detail_tags: torch.Tensor | None

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {
            "screen": self.screen,
            "detail": self.detail,
            "regions": self.regions,
            "screen_tags": self.screen_tags,
            "detail_tags": self.detail_tags,
        }
        return {k: v.detach().float().cpu().contiguous() for k, v in named.items() if v is not None}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> ImageFeatures:
        return cls(t["screen"], t["detail"], t["regions"], t.get("screen_tags"), t.get("detail_tags"))


def backbone_key(backbone: VisionBackbone) -> str:
    identity = {k: v for k, v in backbone.identity().items() if k != "source"}  # a moved folder is the same
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, backbone: VisionBackbone, root: Path | None = None) -> None:
        self.backbone = backbone
        self.dir = (root or default_root()) / backbone_key(backbone)
        self.encoded = 0  # images this process encoded (the rest were read back)

    def _file(self, sha: str) -> Path:
        return self.dir / sha[:2] / f"{sha}.safetensors"

    def fill(self, paths: Sequence[Path], shas: Sequence[str] | None = None) -> None:
        """Encode the images of ``paths`` that are not cached yet, a backbone batch at a time."""
        todo: dict[str, Path] = {}
        for path, sha in zip(paths, shas or [file_sha256(p) for p in paths], strict=True):
            if sha not in todo and not self._file(sha).is_file():
                todo[sha] = path
        items = list(todo.items())
        store = ImageStore()
        step = max(1, self.backbone.max_batch)
        for i in range(0, len(items), step):
            chunk = [(sha, img) for sha, p in items[i : i + step] if (img := store.load(str(p))) is not None]
            if not chunk:
                continue
            images = [img for _, img in chunk]
            screen, detail = self.backbone.screen(images), self.backbone.detail(images)
            for j, (sha, _) in enumerate(chunk):
                features = ImageFeatures(
                    screen.global_vectors[j],
                    detail.global_vectors[j],
                    detail.regions[j],
                    None if screen.tag_logits is None else screen.tag_logits[j],
                    None if detail.tag_logits is None else detail.tag_logits[j],
                )
                self._write(sha, features)
            self.encoded += len(chunk)
        if items:
            log.info("encoded %d images into %s", len(items), self.dir)

    def _write(self, sha: str, features: ImageFeatures) -> None:
        path = self._file(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # ranks may write the same image at once
        save_file(features.tensors(), str(tmp))
        os.replace(tmp, path)

    def features(self, paths: Sequence[Path]) -> list[ImageFeatures | None]:
        """Each image's features (None for an unreadable image), encoding what is missing first."""
        shas = [file_sha256(p) for p in paths]
        self.fill(paths, shas)
        out: list[ImageFeatures | None] = []
        for sha in shas:
            file = self._file(sha)
            out.append(ImageFeatures.from_tensors(load_file(str(file))) if file.is_file() else None)
        return out
