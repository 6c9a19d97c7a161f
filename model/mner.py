"""MNER: every span up to width W is a unit; labels are NONE plus the entity types."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from model.answer import mner_answer
from model.base import NEVER, GateSchedule, SaverBase, TextUnits, UnitScores, mean_word_vector
from model.config import SaverConfig
from model.decode import DecodedSpan, decode_spans
from model.evidence import PostEvidence
from model.gate import VisionMode
from model.pipeline import MnerResult, Pair, TextResult
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
    text: TextUnits  # the text stage (spans, posts, gate, text-only scores)
    probs: torch.Tensor  # (A, C) p(y|u)
    scores: UnitScores
    entities: list[list[DecodedSpan]]  # per post

    @property
    def spans(self) -> torch.Tensor:
        return self.text.spans

    @property
    def post_of_unit(self) -> list[int]:
        return self.text.post_of_unit.tolist()


class MnerModel(SaverBase):
    eligibility_rule = "spans whose text-only P(NONE) < candidate_none_max, whatever the post's evidence"

    def __init__(self, cfg: SaverConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__(cfg, encoder)
        self.span_rep = SpanRepresentation(
            self.encoder.out_dim, cfg.d_model, cfg.max_span_width, cfg.width_dim, cfg.dropout
        )

    # --- text stage -----------------------------------------------------------------------------------
    def text_units(self, words: list[list[str]]) -> TextUnits:
        """Every span up to W words of every post: vectors, gate and text-only scores."""
        vectors, mask = self.encoder.encode_words(words)  # (B, N, H), (B, N)
        b, n, _ = vectors.shape
        grid, valid = span_grid(mask.sum(1), n, self.cfg.max_span_width)  # (U, 2), (B, U)
        reps = self.span_rep(vectors, grid.unsqueeze(0).expand(b, -1, -1))  # (B, U, d)
        post, slot = valid.nonzero(as_tuple=True)
        units = reps[post, slot]  # (A, d)
        text = self.head.text_scores(units)
        context = mean_word_vector(vectors, mask)[post]  # (A, H)
        features = self.gate_features(units, text.scores, context)
        gate_logit = self.gate(features)
        return TextUnits(
            units,
            gate_logit,
            self.gate_probability(gate_logit, text.scores),
            text.scores,
            post,
            grid[slot],
            text.balance_loss,
            gate_input=features.detach(),
        )

    def text_graph(
        self, vectors: torch.Tensor, word_mask: torch.Tensor, spans: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``text_units`` on padded tensors for export: vectors (B, N, H), word_mask (B, N), spans (B, U, 2)
        -> units (B, U, d), gate probabilities (B, U), text logits (B, U, C)."""
        reps = self.span_rep(vectors, spans)
        logits = self.head.text_scores_dense(reps)
        context = mean_word_vector(vectors, word_mask).unsqueeze(1)  # (B, 1, H): once per post, broadcast
        gate = self.gate_probability(self.gate.forward_parts(self.gate_parts(reps, logits, context)), logits)
        return reps, gate, logits

    def text_units_for(self, words: list[list[str]], pairs: list[Pair] | None = None) -> TextUnits:
        """The serving pipeline's entry: MNER takes no marked pairs."""
        if pairs is not None:
            raise ValueError("MNER takes no head/tail pairs")
        return self.text_units(words)

    def graph_spans(self, word_mask: torch.Tensor, n: int, pairs: list[Pair] | None) -> torch.Tensor:
        """The exported text graph's ``spans`` input (B, U, 2): the span slots that fit the batch's longest
        post. Slots running past every post's end would be computed and thrown away (a post of N words
        has N·W slots but N·W - W(W-1)/2 spans); ``from_graph`` keeps each post's own valid ones."""
        grid, valid = span_grid(word_mask.sum(1), n, self.cfg.max_span_width)
        grid = grid[valid.any(0)]
        return grid.unsqueeze(0).expand(word_mask.size(0), -1, -1)

    def graph_example_spans(self, n_words: int) -> tuple[torch.Tensor, bool]:
        return torch.tensor([[[0, 1], [2, 3], [4, 6], [0, n_words]]]), True

    def from_graph(
        self,
        units: torch.Tensor,
        gate: torch.Tensor,
        logits: torch.Tensor,
        spans: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> TextUnits:
        """The graph's padded outputs (B, U, ...) -> the valid units, as ``text_units`` gives them."""
        lengths = word_mask.sum(1)
        valid = spans[..., 1] <= lengths.unsqueeze(1)  # (B, U)
        post, slot = valid.nonzero(as_tuple=True)
        g = gate[post, slot]
        return TextUnits(
            units[post, slot],
            torch.logit(g.clamp(1e-6, 1 - 1e-6)),
            g,
            logits[post, slot],
            post,
            spans[post, slot],
            units.new_zeros(()),
        )

    def units_in_post(self, n_words: int) -> int:
        w = min(self.cfg.max_span_width, n_words)
        return n_words * w - w * (w - 1) // 2  # spans of width 1..w starting anywhere they fit

    def eligible(self, text_logits: torch.Tensor) -> torch.Tensor:
        # only spans the text path finds plausible are gate candidates: the rest keep their confident
        # text-only answer, so a post without a plausible entity never fetches images
        return torch.softmax(text_logits.detach(), dim=-1)[:, 0] < self.cfg.candidate_none_max

    # --- whole batch ----------------------------------------------------------------------------------
    def forward(
        self,
        batch: MnerBatch,
        targets: MnerTargets | None = None,
        *,
        threshold: float = NEVER,
        mode: VisionMode = "never",
        schedule: GateSchedule | None = None,
    ) -> tuple[MnerOutput, torch.Tensor | None]:
        text = self.text_units(batch.words)
        evidence = batch.evidence or [None] * len(batch.words)
        scores = self.run_scores(text, evidence, threshold, mode, schedule)
        probs = F.softmax(scores.logits, dim=-1)
        entities: list[list[DecodedSpan]] = [[] for _ in batch.words]
        if not self.training:
            post_of_unit = text.post_of_unit
            for p in range(len(batch.words)):
                rows = (post_of_unit == p).nonzero(as_tuple=True)[0]
                if rows.numel():
                    found = self.decode(text.spans[rows], probs[rows])
                    entities[p] = [
                        DecodedSpan(d.start, d.end, d.label, d.score, int(rows[d.unit])) for d in found
                    ]
        output = MnerOutput(text, probs, scores, entities)
        if targets is None:
            return output, None
        labels, groundable = self.unit_targets(text.spans, text.post_of_unit.tolist(), targets)
        return output, self.unit_loss(scores, text.gate_logit, labels, groundable)

    @staticmethod
    def decode(spans: torch.Tensor, probs: torch.Tensor) -> list[DecodedSpan]:
        """One post's units -> its best non-overlapping entities (``unit`` indexes the given rows)."""
        return decode_spans(spans.cpu().numpy(), probs.detach().float().cpu().numpy())

    def result(
        self, post: TextResult, probs: torch.Tensor, activated: np.ndarray, used: list[list[int]]
    ) -> MnerResult:
        """A served post's entities with character offsets and per-entity vision facts."""
        return mner_answer(post, probs.detach().float().cpu().numpy(), activated, used, list(self.cfg.labels))

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
        return labels.to(spans.device), groundable.to(spans.device)
