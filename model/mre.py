"""MRE: one unit per marked (head, tail) pair; labels are the relation set including ``None``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model.base import SaverBase, UnitScores
from model.config import SaverConfig
from model.evidence import PostEvidence
from model.gate import PairGate
from model.spans import PairRepresentation, SpanRepresentation
from model.text_encoder import TextEncoder


@dataclass
class MreBatch:
    words: list[list[str]]
    heads: list[tuple[int, int]]  # word spans, end exclusive
    tails: list[tuple[int, int]]
    evidence: list[PostEvidence | None] = field(default_factory=list)


@dataclass
class MreTargets:
    relations: list[str]


@dataclass
class MreOutput:
    probs: torch.Tensor  # (B, C)
    scores: UnitScores
    entity_gates: torch.Tensor  # (B, 2) head and tail gate probabilities


class MreModel(SaverBase):
    def __init__(self, cfg: SaverConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__(cfg, encoder)
        self.span_rep = SpanRepresentation(
            self.encoder.out_dim, cfg.d_model, cfg.max_span_width, cfg.width_dim, cfg.dropout
        )
        self.pair_rep = PairRepresentation(cfg.d_model, cfg.dropout)
        self.pair_gate = PairGate(cfg.pair_rule, cfg.d_model, cfg.gate_hidden)

    def units(
        self, words: list[list[str]], heads: list[tuple[int, int]], tails: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> pair vectors (B, d), pair gate probabilities (B,), entity gate probabilities (B, 2)."""
        vectors, _ = self.encoder.encode_words(words)
        spans = torch.tensor(
            [[h, t] for h, t in zip(heads, tails, strict=True)], dtype=torch.long
        )  # (B, 2, 2)
        ents = self.span_rep(vectors, spans)  # (B, 2, d)
        pair = self.pair_rep(ents[:, 0], ents[:, 1])
        ent_logits = self.gate(ents)  # (B, 2)
        gate = self.pair_gate(ent_logits[:, 0], ent_logits[:, 1], pair)
        return pair, gate, torch.sigmoid(ent_logits)

    def forward(
        self, batch: MreBatch, targets: MreTargets | None = None
    ) -> tuple[MreOutput, torch.Tensor | None]:
        pair, gate, ent_gates = self.units(batch.words, batch.heads, batch.tails)
        evidence = batch.evidence or [None] * len(batch.words)
        gate_logit = torch.logit(gate.clamp(1e-6, 1 - 1e-6))
        scores = self.score_units(pair, gate_logit, list(range(len(batch.words))), evidence, gate_prob=gate)
        output = MreOutput(F.softmax(scores.logits, dim=-1), scores, ent_gates)
        if targets is None:
            return output, None
        index = {r: i for i, r in enumerate(self.cfg.labels)}
        labels = torch.tensor([index[r] for r in targets.relations], dtype=torch.long)
        return output, self.unit_loss(scores, gate_logit, labels, None)
