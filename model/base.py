"""What MNER and MRE share: text encoder, gate, evidence path, set pooling, scoring head and losses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import SaverConfig
from model.evidence import EvidenceEncoder, PostEvidence
from model.gate import GroundabilityGate, VisionMode, gate_decision
from model.head import EnergyHead, HeadOutput
from model.selector import select_evidence
from model.set_transformer import SetPooler
from model.text_encoder import TextEncoder


@dataclass
class GateSchedule:
    """Training-time control of γ: forced vision first, then a gate floor annealed towards 0."""

    forced: bool = False  # warm-up: every unit with evidence uses vision
    floor: float = 0.0  # γ = 1 where max(g, floor) >= 0.5


@dataclass
class UnitScores:
    """Scores of A units (flattened over the batch)."""

    logits: torch.Tensor  # (A, C) final scores, = text_logits where γ = 0
    text_logits: torch.Tensor  # (A, C)
    gate: torch.Tensor  # (A,) gate probability
    gamma: torch.Tensor  # (A,) bool decision used
    selected: list[list[int]]  # per unit, evidence item indices used
    vision_rows: torch.Tensor  # (V,) units whose forced-vision scores were computed
    vision: HeadOutput | None  # forced-vision head output for those rows
    balance_loss: torch.Tensor  # router load-balancing loss of the text path


class SaverBase(nn.Module):
    def __init__(self, cfg: SaverConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder or TextEncoder(cfg)
        d = cfg.d_model
        self.gate = GroundabilityGate(d, cfg.gate_hidden)
        text_dim = self.encoder.bert.config.hidden_size
        self.evidence = EvidenceEncoder(text_dim, cfg.vision_dim, d, cfg.evidence_channels)
        self.pooler = SetPooler(d, cfg.set_heads, cfg.set_blocks, cfg.set_inducing, cfg.dropout)
        self.head = EnergyHead(
            d,
            cfg.n_classes,
            cfg.n_experts,
            cfg.expert_top_k,
            cfg.expert_hidden,
            cfg.consistency_beta,
            cfg.dropout,
        )
        self.threshold = 0.5  # calibrated τ, replaced from calibration.json at load time
        self.vision_mode: VisionMode = "auto"
        self.schedule = GateSchedule()
        self.vision_calls = 0  # counts vision-path invocations (tests prove gate-off does no vision work)

    # --- selection and evidence pooling -------------------------------------------------------------
    def select(self, queries: torch.Tensor, items: torch.Tensor) -> list[list[int]]:
        """Per unit query (A, d) against a post's item vectors (M, d)."""
        m, k = items.size(0), self.cfg.select_k
        if m <= k:  # F is monotone: with room for every item, greedy takes them all
            return [list(range(m))] * queries.size(0)
        q = queries.detach().float().numpy()
        it = items.detach().float().numpy()
        return [
            select_evidence(
                q[a], it, k, self.cfg.selector, self.cfg.lambda_relevance, self.cfg.lambda_coverage
            )
            for a in range(len(q))
        ]

    def pool_evidence(
        self,
        units: torch.Tensor,
        post_of_unit: list[int],
        evidence: list[PostEvidence | None],
        selected: list[list[int]] | None = None,
    ) -> tuple[torch.Tensor, list[list[int]]]:
        """units (A, d) -> e(u) (A, d): select per unit, gather tokens, Set Transformer pooling."""
        self.vision_calls += 1
        queries = self.head.query(units)
        chosen: list[list[int]] = [[] for _ in range(units.size(0))]
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        by_post: dict[int, list[int]] = {}
        for a, p in enumerate(post_of_unit):
            by_post.setdefault(p, []).append(a)
        for p, rows in by_post.items():
            ev = evidence[p]
            assert ev is not None and len(ev) > 0
            picks = (
                [selected[a] for a in rows]
                if selected is not None
                else self.select(queries[rows], self.evidence.items(ev))
            )
            for a, pick in zip(rows, picks, strict=True):
                chosen[a] = list(pick)
                groups.setdefault((p, tuple(pick)), []).append(a)
        out = units.new_zeros(units.shape)
        for (p, key), members in groups.items():
            ev = evidence[p]
            assert ev is not None
            tokens = self.evidence.tokens(ev, list(key), queries[members], self.cfg.top_regions)  # (n, T, d)
            out = out.index_copy(0, torch.tensor(members), self.pooler(tokens))
        return out, chosen

    # --- scoring --------------------------------------------------------------------------------------
    def score_units(
        self,
        units: torch.Tensor,
        gate_logit: torch.Tensor,
        post_of_unit: list[int],
        evidence: list[PostEvidence | None],
        gate_prob: torch.Tensor | None = None,
    ) -> UnitScores:
        """units (A, d) -> UnitScores. Vision work happens only for units whose γ is 1."""
        gate = torch.sigmoid(gate_logit) if gate_prob is None else gate_prob
        text = self.head.text_scores(units)
        available = [ev is not None and len(ev) > 0 for ev in evidence]
        # explicit dtype: with no units at all torch.tensor([]) would be float
        has_ev = torch.tensor([available[p] for p in post_of_unit], dtype=torch.bool)
        if self.cfg.task == "mner" and (self.training or self.vision_mode == "auto"):
            none_prob = torch.softmax(text.scores.detach(), dim=-1)[:, 0]
            has_ev = has_ev & (none_prob < self.cfg.candidate_none_max)
        if self.training:
            soft = torch.clamp(gate, min=self.schedule.floor)
            gamma = has_ev if self.schedule.forced else (soft >= 0.5) & has_ev
        else:
            gamma = gate_decision(gate, self.threshold, self.vision_mode) & has_ev
        # training computes the forced-vision path for units with evidence (the utility target needs it),
        # capped per batch by a uniform sample: gate and vision-head gradients stay unbiased, steps stay cheap
        need = has_ev if self.training else gamma
        cap = self.cfg.train_vision_units
        if self.training and cap and int(need.sum()) > cap:
            rows = need.nonzero(as_tuple=True)[0]
            keep = rows[torch.randperm(rows.numel())[:cap]]
            need = torch.zeros_like(need).index_fill_(0, keep, True)
            gamma = gamma & need
        logits = text.scores
        selected: list[list[int]] = [[] for _ in range(units.size(0))]
        forced: HeadOutput | None = None
        rows = need.nonzero(as_tuple=True)[0]
        if rows.numel():
            e, chosen = self.pool_evidence(units[rows], [post_of_unit[int(r)] for r in rows], evidence)
            forced = self.head(units[rows], e, torch.ones(rows.numel()))
            g = gamma[rows].float()
            if self.training and not self.schedule.forced:  # straight-through: gradients reach the gate
                g = g + soft[rows] - soft[rows].detach()
            mixed = text.scores[rows] + g.unsqueeze(-1) * (forced.logits - text.scores[rows])
            logits = text.scores.index_copy(0, rows, mixed)
            for i, r in enumerate(rows.tolist()):
                if gamma[r]:
                    selected[r] = chosen[i]
        return UnitScores(logits, text.scores, gate, gamma, selected, rows, forced, text.balance_loss)

    def unit_loss(
        self,
        scores: UnitScores,
        gate_logit: torch.Tensor,
        labels: torch.Tensor,
        groundable: torch.Tensor | None,
    ) -> torch.Tensor:
        """Task CE (mixed and text-only paths) + gate BCE + activation budget + consistency + balance."""
        cfg = self.cfg
        weight = torch.ones(cfg.n_classes)
        weight[0] = cfg.none_weight
        loss = F.cross_entropy(scores.logits, labels, weight=weight) + F.cross_entropy(
            scores.text_logits, labels, weight=weight
        )
        rows, forced = scores.vision_rows, scores.vision
        loss = loss + cfg.lambda_balance * scores.balance_loss
        if forced is None:
            return loss
        vis_ce = F.cross_entropy(forced.logits, labels[rows], reduction="none")
        txt_ce = F.cross_entropy(scores.text_logits[rows], labels[rows], reduction="none")
        loss = loss + vis_ce.mean() + cfg.lambda_balance * forced.balance_loss
        if cfg.gate_target == "groundability" and groundable is not None:
            target = groundable[rows]
            known = target >= 0
        else:
            target = (vis_ce < txt_ce).float().detach()
            known = torch.ones_like(target, dtype=torch.bool)
        if known.any():
            loss = loss + cfg.lambda_gate * F.binary_cross_entropy_with_logits(
                gate_logit[rows][known], target[known].float()
            )
        loss = loss + cfg.lambda_budget * (scores.gate.mean() - cfg.target_activation) ** 2
        loss = loss + cfg.lambda_consistency * (1 - forced.consistency).mean()
        return loss


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
