"""The torch implementation of the staged ``SaverPipeline`` interface (see model/pipeline.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.base import SaverBase
from model.decode import char_offsets, decode_spans
from model.evidence import PostEvidence
from model.gate import VisionMode, gate_decision
from model.mner import MnerModel
from model.mre import MreModel
from model.pipeline import (
    DetailedImage,
    MnerEntity,
    MnerResult,
    MreResult,
    ScreenedImage,
    TextRequest,
    TextResult,
)
from model.tokenize import Word, tokenize_words, words_from_tokens
from model.vision.backbone import VisionBackbone

Pair = tuple[tuple[int, int], tuple[int, int]]  # MRE (head, tail) word spans
TextUnits = tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor]


def _request_words(request: TextRequest) -> tuple[str, list[Word]]:
    if request.tokens is not None:
        return words_from_tokens(request.tokens)
    text = request.text or ""
    return text, tokenize_words(text)


def evidence_text(tags: list[str]) -> str:
    """How backbone tags (and, in training, pseudo-tags) are phrased for the evidence-text channel."""
    return "a photo of " + ", ".join(tags) if tags else "a photo"


class TorchPipeline:
    def __init__(
        self,
        model: SaverBase,
        backbone_factory: Callable[[], VisionBackbone],
        *,
        name: str,
        version: str,
        trained: bool,
    ) -> None:
        self.model = model.eval()
        self.task = model.cfg.task
        self.labels = list(model.cfg.labels)
        self.name, self.version, self.trained = name, version, trained
        self._backbone_factory = backbone_factory
        self._backbone: VisionBackbone | None = None

    @property
    def threshold(self) -> float:
        return self.model.threshold

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
        posts = [_request_words(r) for r in requests]
        results: list[TextResult | None] = [None] * len(requests)
        if self.task == "mner":
            for i, (text, words) in enumerate(posts):
                if not words:
                    # same state shape as a post with units, so fuse (always called) answers "no entities"
                    cfg = self.model.cfg
                    empty = {
                        "units": torch.zeros(0, cfg.d_model),
                        "text_logits": torch.zeros(0, cfg.n_classes),
                        "gate": torch.zeros(0),
                    }
                    results[i] = TextResult(text, words, [], np.zeros(0), empty)
            pairs: list[Pair] | None = None
        else:
            pairs = []
            for r in requests:
                assert r.head is not None and r.tail is not None, "MRE needs head and tail spans"
                pairs.append((r.head, r.tail))
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            strings = [[w.text for w in posts[i][1]] for i in todo]
            chosen = None if pairs is None else [pairs[i] for i in todo]
            for i, (units, spans, gate, text_logits) in zip(
                todo, self._text_units(strings, chosen), strict=True
            ):
                state = {"units": units, "text_logits": text_logits, "gate": gate}
                text, post_words = posts[i]
                results[i] = TextResult(text, post_words, spans, gate.numpy().copy(), state)
        return [r for r in results if r is not None]

    def _text_units(self, words: list[list[str]], pairs: list[Pair] | None) -> list[TextUnits]:
        """Per non-empty post: unit vectors (U, d), unit spans, gate probabilities (U,), text logits (U, C).
        The one hook the ONNX pipeline replaces."""
        if pairs is None:
            assert isinstance(self.model, MnerModel)
            units, spans, post_of_unit, gate_logit = self.model.units(words)
            gate = torch.sigmoid(gate_logit)
            text_logits = self.model.head.text_scores(units).scores
            counts = np.bincount(np.asarray(post_of_unit, dtype=np.int64), minlength=len(words)).tolist()
            span_list = [(int(s), int(e)) for s, e in spans.tolist()]
            out: list[TextUnits] = []
            start = 0
            for n in counts:  # units come grouped by post, in post order
                end = start + n
                out.append((units[start:end], span_list[start:end], gate[start:end], text_logits[start:end]))
                start = end
            return out
        assert isinstance(self.model, MreModel)
        heads, tails = [h for h, _ in pairs], [t for _, t in pairs]
        pair_units, pair_gate, _ = self.model.units(words, heads, tails)
        text_logits = self.model.head.text_scores(pair_units).scores
        return [
            (pair_units[b : b + 1], [heads[b], tails[b]], pair_gate[b : b + 1], text_logits[b : b + 1])
            for b in range(len(words))
        ]

    def activation(self, result: TextResult, mode: VisionMode) -> np.ndarray:
        gate = torch.from_numpy(result.gate)
        decision = gate_decision(gate, self.model.threshold, mode)
        if self.task == "mner" and mode == "auto" and len(result.units):
            none_prob = torch.softmax(result.state["text_logits"], dim=-1)[:, 0]
            decision = decision & (none_prob < self.model.cfg.candidate_none_max)
        return decision.numpy()

    # --- vision stages ----------------------------------------------------------------------------
    def _evidence_texts(self, tag_logits: torch.Tensor | None) -> tuple[list[list[str]], torch.Tensor | None]:
        if tag_logits is None or "text" not in self.model.cfg.evidence_channels:
            return [[] for _ in range(0 if tag_logits is None else len(tag_logits))], None
        tags = self.backbone.tags(tag_logits, self.model.cfg.evidence_tags_k)
        return tags, self._embed_evidence([evidence_text(t) for t in tags])

    def _embed_evidence(self, texts: list[str]) -> torch.Tensor:
        """(T, H) evidence-text vectors; the ONNX pipeline runs this through its own graph."""
        return self.model.encoder.embed_evidence(texts)

    @torch.inference_mode()
    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]:
        out = self.backbone.screen(images)
        tags, text = self._evidence_texts(out.tag_logits)
        ev = PostEvidence(text=text, image=out.global_vectors)
        items = self.model.evidence.items(ev)
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
        queries = self.model.head.query(result.state["units"][torch.from_numpy(rows)])
        items = torch.from_numpy(np.stack([s.vector for s in screened]))
        for r, pick in zip(rows.tolist(), self.model.select(queries, items), strict=True):
            chosen[r] = pick
        return chosen

    @torch.inference_mode()
    def detail(self, images: list[Image.Image]) -> list[DetailedImage]:
        out = self.backbone.detail(images)
        _, text = self._evidence_texts(out.tag_logits)
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
        logits = result.state["text_logits"]
        used = [
            sel if activated[u] and sel and all(i in details for i in sel) else []
            for u, sel in enumerate(selected)
        ]
        rows = [u for u, sel in enumerate(used) if sel]
        if rows:
            logits = logits.clone()
            self.model.vision_calls += 1
            images = sorted({i for u in rows for i in used[u]})
            position = {img: p for p, img in enumerate(images)}
            ev = _stack_evidence([details[i].payload for i in images])
            units = result.state["units"][torch.tensor(rows)]
            local = [[position[i] for i in used[u]] for u in rows]
            e, _ = self.model.pool_evidence(units, [0] * len(rows), [ev], selected=local)
            out = self.model.head(units, e, torch.ones(len(rows)))
            logits[torch.tensor(rows)] = out.logits
        probs = F.softmax(logits, dim=-1).numpy()
        if self.task == "mner":
            return self._mner_result(result, probs, activated, used)
        return self._mre_result(result, probs, activated, used)

    def _mner_result(
        self, result: TextResult, probs: np.ndarray, activated: np.ndarray, used: list[list[int]]
    ) -> MnerResult:
        if not result.units:
            return MnerResult([])
        spans = np.asarray(result.units)
        entities = []
        for d in decode_spans(spans, probs):
            start, end = char_offsets(result.words, d.start, d.end)
            entities.append(
                MnerEntity(
                    text=result.text[start:end],
                    type=self.labels[d.label - 1],
                    score=round(d.score, 6),
                    start=start,
                    end=end,
                    token_start=d.start,
                    token_end=d.end,
                    gate=float(result.gate[d.unit]),
                    activated=bool(activated[d.unit]),
                    images=used[d.unit],
                )
            )
        return MnerResult(entities)

    def _mre_result(
        self, result: TextResult, probs: np.ndarray, activated: np.ndarray, used: list[list[int]]
    ) -> MreResult:
        p = probs[0]
        order = np.argsort(-p)[:5]
        top = [(self.labels[i], float(p[i])) for i in order]
        return MreResult(top[0][0], top[0][1], top, float(result.gate[0]), bool(activated[0]), used[0])


def _stack_evidence(payloads: list[dict[str, torch.Tensor | None]]) -> PostEvidence:
    def stack(key: str) -> torch.Tensor | None:
        values = [v for p in payloads if (v := p.get(key)) is not None]
        return torch.stack(values) if values and len(values) == len(payloads) else None

    return PostEvidence(text=stack("text"), image=stack("image"), regions=stack("regions"))
