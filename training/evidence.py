"""Evidence for training and evaluation when images are not at hand: captions, or pseudo-tags from them.

At serving time the evidence-text channel carries the image backbone's top-k ImageNet tags. Captions are
fluent sentences, tags are lists of class names; ``pseudo_tags`` maps each caption to its nearest ImageNet
class names (by the same base text encoder) so that training evidence reads like serving evidence.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from model.evidence import PostEvidence
from model.inference import evidence_text
from model.text_encoder import TextEncoder
from model.vision.efficientnet import imagenet_class_names
from training.feature_cache import FeatureCache

log = logging.getLogger(__name__)

EvidenceStyle = Literal["caption", "pseudo_tags", "none"]


def _cache_dir() -> Path:
    return Path(os.environ.get("SAVER_CACHE_DIR", ".cache/saver")) / "evidence"


def _embed_all(encoder: TextEncoder, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """Base-encoder embeddings, cached on disk by (encoder weights, texts): they never change."""
    key = hashlib.sha256((encoder.identity()["sha256"] + "\x00" + "\x00".join(texts)).encode()).hexdigest()
    path = _cache_dir() / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    parts = [encoder.embed_evidence(list(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    vectors = torch.cat(parts) if parts else torch.zeros(0, encoder.bert.config.hidden_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # torchrun's ranks may write it at once
    torch.save(vectors, tmp)
    os.replace(tmp, path)
    return vectors


def pseudo_tags(encoder: TextEncoder, captions: Sequence[str], k: int) -> list[list[str]]:
    """Top-k ImageNet class names nearest to each caption."""
    names = list(imagenet_class_names())
    classes = F.normalize(_embed_all(encoder, [f"a photo of {n}" for n in names]), dim=-1)
    caps = F.normalize(_embed_all(encoder, captions), dim=-1)
    top = (caps @ classes.t()).topk(k, dim=-1).indices
    return [[names[int(i)] for i in row] for row in top]


class EvidenceTable:
    """Post id -> PostEvidence (text channel), embedded once: the base encoder weights never change."""

    def __init__(
        self, encoder: TextEncoder, captions: dict[str, list[str]], style: EvidenceStyle, k: int
    ) -> None:
        self.style = style
        self.n_image_posts = 0  # posts whose evidence came from real images (see ``update``)
        self.vision: dict[str, object] | None = None  # the backbone those images went through
        self.texts: dict[str, list[str]] = {}
        if style == "none":
            self.table: dict[str, PostEvidence] = {}
            return
        ids = [i for i, caps in captions.items() if caps]
        flat = [c for i in ids for c in captions[i]]
        if style == "pseudo_tags":
            tags = pseudo_tags(encoder, flat, k)
            flat = [evidence_text(t) for t in tags]
        vectors = _embed_all(encoder, flat)
        self.table = {}
        pos = 0
        for i in ids:
            n = len(captions[i])
            self.table[i] = PostEvidence(text=vectors[pos : pos + n])
            self.texts[i] = flat[pos : pos + n]
            pos += n
        log.info("evidence (%s) for %d posts", style, len(self.table))

    def get(self, post_id: str) -> PostEvidence | None:
        return self.table.get(post_id)

    def to(self, device: torch.device) -> EvidenceTable:
        """Move every post's tensors (to the training device, and back to the CPU for calibration)."""
        for post_id, ev in self.table.items():
            self.table[post_id] = PostEvidence(
                **{k: None if v is None else v.to(device) for k, v in vars(ev).items()}
            )
        return self

    def update(self, evidence: dict[str, PostEvidence]) -> None:
        """Add evidence from real images (takes precedence over captions for those posts)."""
        self.table.update(evidence)
        self.n_image_posts += len(evidence)


def image_evidence(
    encoder: TextEncoder,
    cache: FeatureCache,
    posts: dict[str, list[Path]],
    tags_k: int,
) -> dict[str, PostEvidence]:
    """Real images -> evidence exactly as the service builds it: the screen tier (global vector and tags)
    for every image, which the selector reads, and the detail tier (global, regions, tags), which the
    Set Transformer reads. ``posts`` maps a post id to its image files; their features come from the
    feature cache (encoded once per image and backbone), the tags' text from the base encoder in one
    cached pass."""
    backbone = cache.backbone
    paths = list(dict.fromkeys(p for images in posts.values() for p in images))
    features = dict(zip(paths, cache.features(paths), strict=True))
    found = {
        post_id: [f for p in images if (f := features[p]) is not None] for post_id, images in posts.items()
    }
    found = {post_id: fs for post_id, fs in found.items() if fs}
    has_tags = backbone.tag_vocabulary is not None
    vectors: dict[tuple[str, str], torch.Tensor] = {}
    if has_tags:
        keys = [(post_id, tier) for post_id in found for tier in ("screen", "detail")]
        texts: list[str] = []
        for post_id, tier in keys:
            tier_tags = [f.screen_tags if tier == "screen" else f.detail_tags for f in found[post_id]]
            logits = torch.stack([t for t in tier_tags if t is not None])
            texts += [evidence_text(t) for t in backbone.tags(logits, tags_k)]
        flat = _embed_all(encoder, texts)
        pos = 0
        for post_id, tier in keys:
            n = len(found[post_id])
            vectors[(post_id, tier)] = flat[pos : pos + n]
            pos += n
    return {
        post_id: PostEvidence(
            text=vectors.get((post_id, "detail")),
            image=torch.stack([f.detail for f in fs]),
            regions=torch.stack([f.regions for f in fs]),
            screen_text=vectors.get((post_id, "screen")),
            screen_image=torch.stack([f.screen for f in fs]),
        )
        for post_id, fs in found.items()
    }
