"""The torch implementation of the staged ``SaverPipeline`` interface (see model/pipeline.py).

Every stage calls the model's one scoring path (model/base.py): ``text_units_for`` for the text stage,
``decide`` for the gate decision, ``select_units`` for selection and ``score`` for fusion. Nothing here
re-implements a decision or a score; the pipeline only moves tensors between stages and the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from model.answer import evidence_text, request_pairs, request_words, softmax, used_images
from model.base import SaverBase, TextUnits
from model.evidence import PostEvidence
from model.gate import VisionMode
from model.pipeline import (
    DetailedImage,
    MnerResult,
    MreResult,
    Pair,
    ScreenedImage,
    TextRequest,
    TextResult,
)
from model.vision.backbone import VisionBackbone


def unit_spans(units: TextUnits) -> list[tuple[int, int]]:
    """MNER: one span per unit; MRE: the pair's head and tail spans."""
    return [(int(s), int(e)) for s, e in units.spans.reshape(-1, 2).tolist()]


class TorchPipeline:
    def __init__(
        self,
        model: SaverBase,
        backbone_factory: Callable[[], VisionBackbone],
        *,
        name: str,
        version: str,
        trained: bool,
        threshold: float,
    ) -> None:
        self.model = model.eval()
        self.task = model.cfg.task
        self.labels = list(model.cfg.labels)
        self.name, self.version, self.trained = name, version, trained
        self._threshold = float(threshold)
        self._backbone_factory = backbone_factory
        self._backbone: VisionBackbone | None = None

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def backbone(self) -> VisionBackbone:
        # built on first use: a text-only deployment never pays for the image model
        if self._backbone is None:
            self._backbone = self._backbone_factory()
        return self._backbone

    # --- text stage -------------------------------------------------------------------------------
    def encode_text(
        self,
        text: str | None = None,
        tokens: list[str] | None = None,
        head: tuple[int, int] | None = None,
        tail: tuple[int, int] | None = None,
    ) -> TextResult:
        return self.encode_text_batch([TextRequest(text, tokens, head, tail)])[0]

    @torch.inference_mode()
    def encode_text_batch(self, requests: Sequence[TextRequest]) -> list[TextResult]:
        """Several posts through one encoder forward; each result equals that post's ``encode_text``."""
        posts = [request_words(r) for r in requests]
        pairs = request_pairs(requests, posts)
        todo = [i for i, (_, words) in enumerate(posts) if words]
        states = {i: self.model.empty_units() for i in range(len(posts))}
        if todo:
            strings = [[w.text for w in posts[i][1]] for i in todo]
            batch = self._text_units(strings, None if pairs is None else [pairs[i] for i in todo])
            for k, i in enumerate(todo):
                states[i] = batch.post(k)
        return [
            TextResult(text, words, unit_spans(states[i]), states[i].gate.numpy().copy(), states[i])
            for i, (text, words) in enumerate(posts)
        ]

    def _text_units(self, words: list[list[str]], pairs: list[Pair] | None) -> TextUnits:
        """The text stage of a batch of non-empty posts; the one hook the ONNX pipeline replaces."""
        return self.model.text_units_for(words, pairs)

    def activation(self, result: TextResult, mode: VisionMode) -> np.ndarray:
        return self.model.decide(result.state, self.threshold, mode).numpy()

    # --- vision stages ----------------------------------------------------------------------------
    def _evidence_texts(
        self, tag_logits: torch.Tensor | None, n_images: int
    ) -> tuple[list[list[str]], torch.Tensor | None]:
        # one (maybe empty) tag list per image, also for towers without tags (CLIP, SigLIP)
        if tag_logits is None or "text" not in self.model.cfg.evidence_channels:
            return [[] for _ in range(n_images)], None
        tags = self.backbone.tags(tag_logits, self.model.cfg.evidence_tags_k)
        return tags, self._embed_evidence([evidence_text(t) for t in tags])

    def _embed_evidence(self, texts: list[str]) -> torch.Tensor:
        """(T, H) evidence-text vectors; the ONNX pipeline runs this through its own graph."""
        return self.model.encoder.embed_evidence(texts)

    @torch.inference_mode()
    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]:
        out = self.backbone.screen(images)
        tags, text = self._evidence_texts(out.tag_logits, len(images))
        items = self.model.evidence.items(PostEvidence(text=text, image=out.global_vectors))
        return [
            ScreenedImage(
                items[i].numpy().copy(),
                tags[i],
                {"image": out.global_vectors[i], "text": None if text is None else text[i]},
            )
            for i in range(len(images))
        ]

    @torch.inference_mode()
    def select(
        self, result: TextResult, activated: np.ndarray, screened: list[ScreenedImage]
    ) -> list[list[int]]:
        # one entry per scored unit (the gate): an MRE result lists two entity spans but is one unit
        chosen: list[list[int]] = [[] for _ in range(len(result.gate))]
        rows = np.flatnonzero(activated)
        if rows.size == 0 or not screened:
            return chosen
        items = torch.from_numpy(np.stack([s.vector for s in screened]))
        picks = self.model.select_units(result.state.units[torch.from_numpy(rows)], items)
        for r, pick in zip(rows.tolist(), picks, strict=True):
            chosen[r] = pick
        return chosen

    @torch.inference_mode()
    def detail(self, images: list[Image.Image]) -> list[DetailedImage]:
        out = self.backbone.detail(images)
        _, text = self._evidence_texts(out.tag_logits, len(images))
        return [
            DetailedImage(
                {
                    "image": out.global_vectors[i],
                    "regions": out.regions[i],
                    "text": None if text is None else text[i],
                }
            )
            for i in range(len(images))
        ]

    # --- fusion -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def fuse(
        self,
        result: TextResult,
        activated: np.ndarray,
        selected: list[list[int]],
        details: dict[int, DetailedImage],
        screened: dict[int, ScreenedImage],
    ) -> MnerResult | MreResult:
        used = used_images(activated, selected, details)
        images = sorted({i for sel in used for i in sel})
        position = {img: p for p, img in enumerate(images)}
        evidence = _stack_evidence([details[i].payload for i in images]) if images else None
        local = [[position[i] for i in sel] for sel in used]
        gamma = torch.tensor([bool(sel) for sel in used], dtype=torch.bool)
        scores = self.model.score(result.state, gamma, [evidence], selected=local)
        probs = softmax(scores.logits.float().numpy())
        return self.model.result(result, torch.from_numpy(probs), activated, used)  # model/answer.py


def _stack_evidence(payloads: list[dict[str, torch.Tensor | None]]) -> PostEvidence:
    def stack(key: str) -> torch.Tensor | None:
        values = [v for p in payloads if (v := p.get(key)) is not None]
        return torch.stack(values) if values and len(values) == len(payloads) else None

    return PostEvidence(text=stack("text"), image=stack("image"), regions=stack("regions"))
