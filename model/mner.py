"""MNER: every span up to width W is a unit; labels are NONE plus the entity types."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model.base import SaverBase, UnitScores
from model.config import SaverConfig
from model.decode import DecodedSpan, decode_spans
from model.evidence import PostEvidence
from model.spans import SpanRepresentation, span_grid
from model.text_encoder import TextEncoder


@dataclass
class MnerBatch:
    words: list[list[str]]
    evidence: list[PostEvidence | None] = field(default_factory=list)  # empty list = no evidence anywhere


@dataclass
class MnerTargets:
    entities: list[list[tuple[int, int, str]]]  # gold (start, end_exclusive, type) per post
    groundable: list[dict[tuple[int, int], bool]] | None = None  # optional per-entity annotation


@dataclass
class MnerOutput:
    spans: torch.Tensor  # (A, 2) word spans of the valid units
    post_of_unit: list[int]  # (A,)
    probs: torch.Tensor  # (A, C) p(y|u)
    scores: UnitScores
    entities: list[list[DecodedSpan]]  # per post


class MnerModel(SaverBase):
    def __init__(self, cfg: SaverConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__(cfg, encoder)
        self.span_rep = SpanRepresentation(
            self.encoder.out_dim, cfg.d_model, cfg.max_span_width, cfg.width_dim, cfg.dropout
        )

    def units(self, words: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
        """-> unit vectors (A, d), spans (A, 2), post index per unit, gate logits (A,)."""
        vectors, mask = self.encoder.encode_words(words)  # (B, N, H), (B, N)
        b, n, _ = vectors.shape
        grid, valid = span_grid(mask.sum(1), n, self.cfg.max_span_width)  # (U, 2), (B, U)
        reps = self.span_rep(vectors, grid.unsqueeze(0).expand(b, -1, -1))  # (B, U, d)
        post, slot = valid.nonzero(as_tuple=True)
        units = reps[post, slot]  # (A, d)
        return units, grid[slot], post.tolist(), self.gate(units)

    def forward(
        self, batch: MnerBatch, targets: MnerTargets | None = None
    ) -> tuple[MnerOutput, torch.Tensor | None]:
        units, spans, post_of_unit, gate_logit = self.units(batch.words)
        evidence = batch.evidence or [None] * len(batch.words)
        scores = self.score_units(units, gate_logit, post_of_unit, evidence)
        probs = F.softmax(scores.logits, dim=-1)
        entities = [[] for _ in batch.words]  # type: list[list[DecodedSpan]]
        if not self.training:
            for p in range(len(batch.words)):
                rows = [a for a, q in enumerate(post_of_unit) if q == p]
                if rows:
                    found = decode_spans(spans[rows].numpy(), probs[rows].detach().numpy())
                    entities[p] = [DecodedSpan(d.start, d.end, d.label, d.score, rows[d.unit]) for d in found]
        output = MnerOutput(spans, post_of_unit, probs, scores, entities)
        if targets is None:
            return output, None
        labels, groundable = self.unit_targets(spans, post_of_unit, targets)
        return output, self.unit_loss(scores, gate_logit, labels, groundable)

    def unit_targets(
        self, spans: torch.Tensor, post_of_unit: list[int], targets: MnerTargets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label per unit (0 = NONE) and groundability (-1 unknown; non-entity spans are not groundable)."""
        index = {t: i + 1 for i, t in enumerate(self.cfg.labels)}
        gold = [{(s, e): index[t] for s, e, t in ents if t in index} for ents in targets.entities]
        labels = torch.zeros(len(post_of_unit), dtype=torch.long)
        groundable = torch.zeros(len(post_of_unit))
        for a, (p, (s, e)) in enumerate(zip(post_of_unit, spans.tolist(), strict=True)):
            label = gold[p].get((s, e), 0)
            labels[a] = label
            if label and targets.groundable is not None:
                flag = targets.groundable[p].get((s, e))
                groundable[a] = -1.0 if flag is None else float(flag)
        return labels, groundable
