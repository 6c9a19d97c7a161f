"""MRE: one unit per marked (head, tail) pair; labels are the relation set including ``None``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from model.answer import mre_answer
from model.base import NEVER, GateSchedule, SaverBase, TextUnits, UnitScores, mean_word_vector
from model.config import SaverConfig
from model.evidence import PostEvidence
from model.gate import PairGate, VisionMode
from model.pipeline import MreResult, Pair, TextResult
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
    text: TextUnits
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

    # --- text stage -----------------------------------------------------------------------------------
    def text_units(
        self, words: list[list[str]], heads: list[tuple[int, int]], tails: list[tuple[int, int]]
    ) -> TextUnits:
        """One unit per pair: its vector, pair gate and text-only relation scores."""
        vectors, mask = self.encoder.encode_words(words)
        spans = torch.tensor(
            [[h, t] for h, t in zip(heads, tails, strict=True)], dtype=torch.long, device=vectors.device
        )  # (B, 2, 2)
        pair, ent_logits, gate, text, features = self._pairs(vectors, mask, spans, dense=False)
        gate_logit = torch.logit(gate.clamp(1e-6, 1 - 1e-6))
        post = torch.arange(len(words), device=vectors.device)
        return TextUnits(
            pair,
            gate_logit,
            gate,
            text[0],
            post,
            spans,
            text[1],
            torch.sigmoid(ent_logits),
            features.detach(),
        )

    def _pairs(
        self, vectors: torch.Tensor, mask: torch.Tensor, spans: torch.Tensor, dense: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """-> pair vectors (B, d), entity gate logits (B, 2), pair gate probabilities (B,), (text logits
        (B, C), balance loss), gate inputs (B, 2, D_g). Each entity's gate reads the entity, the pair's relation distribution and
        the post; the pair gate follows from the two by the configured rule."""
        ents = self.span_rep(vectors, spans)  # (B, 2, d)
        pair = self.pair_rep(ents[:, 0], ents[:, 1])  # (B, d)
        if dense:
            logits, balance = self.head.text_scores_dense(pair), pair.new_zeros(())
        else:
            route = self.head.text_scores(pair)
            logits, balance = route.scores, route.balance_loss
        context = mean_word_vector(vectors, mask).unsqueeze(1).expand(-1, 2, -1)  # (B, 2, H)
        features = self.gate_features(ents, logits.unsqueeze(1).expand(-1, 2, -1), context)
        ent_logits = self.gate(features)  # (B, 2)
        gate = self.with_confidence(self.pair_gate(ent_logits[:, 0], ent_logits[:, 1], pair), logits)  # (B,)
        return pair, ent_logits, gate, (logits, balance), features

    def text_graph(
        self, vectors: torch.Tensor, word_mask: torch.Tensor, spans: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``text_units`` on padded tensors for export: spans (B, 2, 2) -> pair vectors (B, d), pair gate
        probabilities (B,), text logits (B, C)."""
        pair, _, gate, (logits, _), _ = self._pairs(vectors, word_mask, spans, dense=True)
        return pair, gate, logits

    def text_units_for(self, words: list[list[str]], pairs: list[Pair] | None = None) -> TextUnits:
        """The serving pipeline's entry: one (head, tail) pair per post."""
        if pairs is None:
            raise ValueError("MRE needs head and tail spans")
        return self.text_units(words, [h for h, _ in pairs], [t for _, t in pairs])

    def graph_spans(self, word_mask: torch.Tensor, n: int, pairs: list[Pair] | None) -> torch.Tensor:
        """The exported text graph's ``spans`` input: (B, 2, 2) head then tail."""
        if pairs is None:
            raise ValueError("MRE needs head and tail spans")
        return torch.tensor([[h, t] for h, t in pairs], dtype=torch.long)

    def graph_example_spans(self, n_words: int) -> tuple[torch.Tensor, bool]:
        return torch.tensor([[[0, 1], [2, 3]]]), False

    def from_graph(
        self,
        units: torch.Tensor,
        gate: torch.Tensor,
        logits: torch.Tensor,
        spans: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> TextUnits:
        """The graph's outputs, one pair per post, as ``text_units`` gives them."""
        return TextUnits(
            units,
            torch.logit(gate.clamp(1e-6, 1 - 1e-6)),
            gate,
            logits,
            torch.arange(units.size(0)),
            spans,
            units.new_zeros(()),
        )

    # --- whole batch ----------------------------------------------------------------------------------
    def forward(
        self,
        batch: MreBatch,
        targets: MreTargets | None = None,
        *,
        threshold: float = NEVER,
        mode: VisionMode = "never",
        schedule: GateSchedule | None = None,
    ) -> tuple[MreOutput, torch.Tensor | None]:
        text = self.text_units(batch.words, batch.heads, batch.tails)
        evidence = batch.evidence or [None] * len(batch.words)
        scores = self.run_scores(text, evidence, threshold, mode, schedule)
        assert text.entity_gate is not None
        output = MreOutput(text, F.softmax(scores.logits, dim=-1), scores, text.entity_gate)
        if targets is None:
            return output, None
        index = {r: i for i, r in enumerate(self.cfg.labels)}
        labels = torch.tensor(
            [index[r] for r in targets.relations], dtype=torch.long, device=text.units.device
        )
        return output, self.unit_loss(scores, text.gate_logit, labels, None)

    def result(
        self, post: TextResult, probs: torch.Tensor, activated: np.ndarray, used: list[list[int]]
    ) -> MreResult:
        """A served pair's relation, its top five alternatives and the pair's vision facts."""
        return mre_answer(post, probs.detach().float().cpu().numpy(), activated, used, list(self.cfg.labels))
