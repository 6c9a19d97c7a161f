"""What MNER and MRE share: text encoder, gate, evidence path, set pooling, scoring head and losses.

The one scoring path (SPEC §2.3, STYLE "One path"): a task's ``text_units`` gives every unit's vector,
gate score and text-only scores; ``decide`` turns gate scores, a threshold and a mode into γ(u);
``select_units`` picks each activated unit's evidence; ``score`` pools it with the Set Transformer and
runs the energy head. Training, ``saver evaluate``, ``saver calibrate`` and both serving pipelines call
these methods; none of them re-implements a step. Mode, threshold and training schedule are arguments:
the module holds weights and configuration only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import SaverConfig
from model.evidence import EvidenceEncoder, PostEvidence
from model.gate import GroundabilityGate, VisionMode
from model.head import EnergyHead, HeadOutput
from model.pipeline import MnerResult, MreResult, Pair, TextResult
from model.selector import select_for_queries
from model.set_transformer import SetPooler
from model.text_encoder import TextEncoder

NEVER = math.inf  # the threshold that never activates vision
VISION_MODES: tuple[VisionMode, ...] = ("auto", "always", "never")  # the decide graph's ``mode`` indices


@dataclass
class GateSchedule:
    """Training-time control of γ: forced vision first, then a gate floor annealed towards 0."""

    forced: bool = False  # warm-up: every eligible unit with evidence uses vision
    floor: float = 0.0  # γ = 1 where max(g, floor) >= 0.5


@dataclass
class TextUnits:
    """The text stage of a batch, units flattened over its posts in post order."""

    units: torch.Tensor  # (A, d) unit vectors
    gate_logit: torch.Tensor  # (A,) gate logits (MRE: logit of the pair gate)
    gate: torch.Tensor  # (A,) gate probabilities g(u)
    text_logits: torch.Tensor  # (A, C) the γ = 0 scores
    post_of_unit: torch.Tensor  # (A,) long: index of each unit's post in the batch
    spans: torch.Tensor  # (A, 2) MNER word spans, end exclusive; (A, 2, 2) MRE head and tail
    balance_loss: torch.Tensor  # router load-balancing loss of the text path
    entity_gate: torch.Tensor | None = None  # (A, 2) MRE: head and tail gate probabilities
    gate_input: torch.Tensor | None = None  # (A, D_g) MNER, (A, 2, D_g) MRE: what the gate MLP read

    def __len__(self) -> int:
        return int(self.units.size(0))

    def rows(self, index: torch.Tensor) -> TextUnits:
        """The units at ``index``; their post indices are kept as they are."""
        return TextUnits(
            self.units[index],
            self.gate_logit[index],
            self.gate[index],
            self.text_logits[index],
            self.post_of_unit[index],
            self.spans[index],
            self.balance_loss,
            None if self.entity_gate is None else self.entity_gate[index],
            None if self.gate_input is None else self.gate_input[index],
        )

    def post(self, p: int) -> TextUnits:
        """One post's units, renumbered as post 0 (what a serving request holds)."""
        part = self.rows((self.post_of_unit == p).nonzero(as_tuple=True)[0])
        part.post_of_unit = torch.zeros_like(part.post_of_unit)
        return part


@dataclass
class UnitScores:
    """Scores of A units (flattened over the batch)."""

    logits: torch.Tensor  # (A, C) final scores, = text_logits where γ = 0
    text_logits: torch.Tensor  # (A, C)
    gate: torch.Tensor  # (A,) gate probability
    gamma: torch.Tensor  # (A,) bool: units whose scores used vision
    selected: list[list[int]]  # per unit, evidence item indices used (empty where γ = 0)
    vision_rows: torch.Tensor  # (V,) units whose forced-vision scores were computed
    vision: HeadOutput | None  # forced-vision head output for those rows
    balance_loss: torch.Tensor  # router load-balancing loss of the text path


def mean_word_vector(words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """words (B, N, H), mask (B, N) -> (B, H): the post's context for the gate."""
    m = mask.unsqueeze(-1).to(words.dtype)
    return (words * m).sum(1) / m.sum(1).clamp(min=1.0)


class SaverBase(nn.Module):
    # what ``eligible`` admits, in words, for calibration records and model cards
    eligibility_rule = "every unit, whatever its post's evidence"

    def __init__(self, cfg: SaverConfig, encoder: TextEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder or TextEncoder(cfg)
        d = cfg.d_model
        self.gate = GroundabilityGate(d + cfg.n_classes + self.encoder.out_dim, cfg.gate_hidden)
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
        self.vision_calls = 0  # counts vision-path invocations (tests prove gate-off does no vision work)

    # --- text stage ---------------------------------------------------------------------------------
    def gate_features(
        self, units: torch.Tensor, text_logits: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """(..., d), (..., C), (..., H) -> (..., d + C + H). The label distribution is detached: the gate's
        loss must not bend the text path's scores."""
        return torch.cat(self.gate_parts(units, text_logits, context), dim=-1)

    def gate_parts(
        self, units: torch.Tensor, text_logits: torch.Tensor, context: torch.Tensor
    ) -> list[torch.Tensor]:
        """``gate_features`` before the concatenation, for ``GroundabilityGate.forward_parts``."""
        return [units, torch.softmax(text_logits.detach(), dim=-1), context]

    def gate_probability(self, gate_logit: torch.Tensor, text_logits: torch.Tensor) -> torch.Tensor:
        """g(u) from the gate MLP's logit: its probability, times a power of the text path's confidence
        when the config asks for it (``gate_confidence_power``). Both come before any image is touched."""
        return self.with_confidence(torch.sigmoid(gate_logit), text_logits)

    def with_confidence(self, gate: torch.Tensor, text_logits: torch.Tensor) -> torch.Tensor:
        power = self.cfg.gate_confidence_power
        if power == 0:
            return gate
        return gate * torch.softmax(text_logits.detach(), dim=-1).amax(-1) ** power

    def empty_units(self) -> TextUnits:
        """A post without words: no units (its answer is "nothing found")."""
        cfg = self.cfg
        none = torch.zeros(0)
        return TextUnits(
            torch.zeros(0, cfg.d_model),
            none,
            none,
            torch.zeros(0, cfg.n_classes),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 2, dtype=torch.long),
            torch.zeros(()),
        )

    def text_units_for(self, words: list[list[str]], pairs: list[Pair] | None = None) -> TextUnits:
        """The text stage of non-empty posts (MRE: one marked pair per post)."""
        raise NotImplementedError

    def graph_spans(self, word_mask: torch.Tensor, n: int, pairs: list[Pair] | None) -> torch.Tensor:
        """The exported text graph's ``spans`` input for a padded batch."""
        raise NotImplementedError

    def graph_example_spans(self, n_words: int) -> tuple[torch.Tensor, bool]:
        """An example ``spans`` input for tracing the text graph of a post of ``n_words`` words, and whether
        the graph has a units axis (MNER: many spans per post; MRE: one pair)."""
        raise NotImplementedError

    def from_graph(
        self,
        units: torch.Tensor,
        gate: torch.Tensor,
        logits: torch.Tensor,
        spans: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> TextUnits:
        """The exported text graph's outputs as ``text_units_for`` gives them."""
        raise NotImplementedError

    def units_in_post(self, n_words: int) -> int:
        """How many units a post of ``n_words`` words has (MRE: its one pair)."""
        return 1

    def eligible(self, text_logits: torch.Tensor) -> torch.Tensor:
        """(A, C) -> (A,) bool: units the gate may activate in ``auto``. Every unit, unless a task says
        otherwise (MNER leaves out spans its text path is sure are not entities)."""
        return torch.ones(text_logits.size(0), dtype=torch.bool)

    def result(
        self, post: TextResult, probs: torch.Tensor, activated: np.ndarray, used: list[list[int]]
    ) -> MnerResult | MreResult:
        """A served post's answer from its units' label distributions (per task)."""
        raise NotImplementedError

    # --- decisions ----------------------------------------------------------------------------------
    def decide(self, text: TextUnits, threshold: float, mode: VisionMode) -> torch.Tensor:
        """(A,) bool γ(u): ``always`` all units, ``never`` none, ``auto`` the eligible units with g ≥ τ."""
        if mode not in VISION_MODES:
            raise ValueError(f"unknown vision mode {mode!r}")
        tau = torch.tensor(threshold, dtype=text.gate.dtype, device=text.gate.device)
        return self.decide_tensors(text.gate, text.text_logits, tau, torch.tensor(VISION_MODES.index(mode)))

    def decide_tensors(
        self, gate: torch.Tensor, text_logits: torch.Tensor, threshold: torch.Tensor, mode: torch.Tensor
    ) -> torch.Tensor:
        """``decide`` on tensors, as the ONNX decide graph is traced: gate (A,), text_logits (A, C),
        threshold () (inf never activates), mode () index into ``VISION_MODES``."""
        # ``gate_decision``'s rule, on a threshold tensor (τ = inf compares false everywhere)
        auto = (gate >= threshold) & self.eligible(text_logits)
        return (mode == 1) | ((mode == 0) & auto)  # always, or auto and the rule (never: neither)

    def training_decisions(
        self, text: TextUnits, has_evidence: torch.Tensor, schedule: GateSchedule
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (γ, units whose forced-vision scores are computed, soft gate for straight-through or None).

        Forced-vision scores are computed for eligible units with evidence (the utility target needs
        them), capped per batch by a uniform sample: gate and vision-head gradients stay unbiased, steps
        stay cheap."""
        need = has_evidence & self.eligible(text.text_logits)
        cap = self.cfg.train_vision_units
        if cap and int(need.sum()) > cap:
            rows = need.nonzero(as_tuple=True)[0]
            keep = rows[torch.randperm(rows.numel(), device=rows.device)[:cap]]
            need = torch.zeros_like(need).index_fill_(0, keep, True)
        if schedule.forced:
            return need, need, None
        soft = torch.clamp(text.gate, min=schedule.floor)
        return (soft >= 0.5) & need, need, soft

    # --- selection and evidence pooling -------------------------------------------------------------
    def select(self, queries: torch.Tensor, items: torch.Tensor) -> list[list[int]]:
        """Per unit query (A, d) against a post's item vectors (M, d)."""
        cfg = self.cfg
        q = queries.detach().float().cpu().numpy()
        it = items.detach().float().cpu().numpy()
        return select_for_queries(
            q, it, cfg.select_k, cfg.selector, cfg.lambda_relevance, cfg.lambda_coverage
        )

    def select_units(self, units: torch.Tensor, items: torch.Tensor) -> list[list[int]]:
        """Units (A, d) of one post against that post's screened item vectors (M, d)."""
        return self.select(self.head.query(units), items)

    def pool_evidence(
        self,
        units: torch.Tensor,
        post_of_unit: list[int],
        evidence: list[PostEvidence | None],
        selected: list[list[int]] | None = None,
    ) -> tuple[torch.Tensor, list[list[int]]]:
        """units (A, d) -> e(u) (A, d): select per unit (unless given), gather tokens, Set Transformer."""
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
                else self.select(queries[rows], self.evidence.screen_items(ev))
            )
            for a, pick in zip(rows, picks, strict=True):
                chosen[a] = list(pick)
                groups.setdefault((p, tuple(pick)), []).append(a)
        out = units.new_zeros(units.shape)
        for (p, key), members in groups.items():
            ev = evidence[p]
            assert ev is not None
            tokens = self.evidence.tokens(ev, list(key), queries[members], self.cfg.top_regions)  # (n, T, d)
            out = out.index_copy(
                0, torch.tensor(members, device=out.device), self.pooler(tokens).to(out.dtype)
            )
        return out, chosen

    def fuse_units(
        self,
        units: torch.Tensor,
        selected: torch.Tensor,
        valid: torch.Tensor,
        text: torch.Tensor | None,
        image: torch.Tensor | None,
        regions: torch.Tensor | None,
    ) -> torch.Tensor:
        """``score``'s vision path for activated units in one padded batch, as the ONNX fuse graph is
        traced: units (A, d); selected (A, K) indices into a post's I detail-encoded images, valid (A, K)
        which of them are real (each unit has at least one); the images' evidence text (I, H), image
        (I, D_v) and regions (I, R, D_v) as the config's channels have them -> forced-vision logits (A, C).
        Selection, tokens, Set Transformer and head are the methods ``score`` runs, on padded sets."""
        ev = self.evidence.uses(PostEvidence(text=text, image=image, regions=regions))
        queries = self.head.query(units)
        items = self.evidence.items(ev)[selected]  # (A, K, d)
        region_tokens = None if ev.regions is None else self.evidence.regions(ev.regions)[selected]
        tokens = self.evidence.unit_tokens(items, region_tokens, queries, self.cfg.top_regions)
        top = self.cfg.top_regions
        per_item = 0 if region_tokens is None or top <= 0 else min(top, region_tokens.size(2))  # R' per item
        pad = ~torch.cat([valid, valid.repeat_interleave(per_item, dim=1)], dim=1)  # (A, T) True = padding
        e = self.pooler(tokens, pad)
        return self.head(units, e, torch.ones(units.size(0), dtype=units.dtype), dense=True).logits

    @staticmethod
    def has_evidence(text: TextUnits, evidence: list[PostEvidence | None]) -> torch.Tensor:
        """(A,) bool: units whose post has at least one evidence item."""
        return torch.tensor(
            [(ev := evidence[p]) is not None and len(ev) > 0 for p in text.post_of_unit.tolist()],
            dtype=torch.bool,
            device=text.units.device,
        )

    # --- scoring --------------------------------------------------------------------------------------
    def score(
        self,
        text: TextUnits,
        gamma: torch.Tensor,
        evidence: list[PostEvidence | None],
        selected: list[list[int]] | None = None,
        compute: torch.Tensor | None = None,
        soft_gate: torch.Tensor | None = None,
    ) -> UnitScores:
        """Label scores of every unit. Vision work happens only for units whose γ is 1 and whose post has
        evidence (``compute`` widens that set in training); with γ = 0 the text-only scores are returned
        bit for bit. ``selected`` (per unit, indices into its post's evidence) skips selection: the service
        selects on the cheap screen tier before it detail-encodes only the chosen images."""
        post = text.post_of_unit.tolist()
        has_ev = self.has_evidence(text, evidence)
        gamma = gamma & has_ev
        if selected is not None:
            gamma = gamma & torch.tensor([bool(s) for s in selected], dtype=torch.bool, device=gamma.device)
        need = gamma if compute is None else (compute & has_ev) | gamma
        logits = text.text_logits
        chosen_out: list[list[int]] = [[] for _ in range(len(text))]
        forced: HeadOutput | None = None
        rows = need.nonzero(as_tuple=True)[0]
        if rows.numel():
            picks = None if selected is None else [selected[int(r)] for r in rows]
            e, chosen = self.pool_evidence(text.units[rows], [post[int(r)] for r in rows], evidence, picks)
            forced = self.head(text.units[rows], e, torch.ones(rows.numel(), device=rows.device))
            on = gamma[rows]
            if soft_gate is None:
                mixed = torch.where(on.unsqueeze(-1), forced.logits, text.text_logits[rows])
            else:  # straight-through: the hard decision forward, the gate's gradient backward
                g = on.float() + soft_gate[rows] - soft_gate[rows].detach()
                mixed = text.text_logits[rows] + g.unsqueeze(-1) * (forced.logits - text.text_logits[rows])
            logits = text.text_logits.index_copy(0, rows, mixed)
            for i, r in enumerate(rows.tolist()):
                if gamma[r]:
                    chosen_out[r] = chosen[i]
        return UnitScores(
            logits, text.text_logits, text.gate, gamma, chosen_out, rows, forced, text.balance_loss
        )

    def run_scores(
        self,
        text: TextUnits,
        evidence: list[PostEvidence | None],
        threshold: float,
        mode: VisionMode,
        schedule: GateSchedule | None,
    ) -> UnitScores:
        """Decide and score: by the schedule in training, by threshold and mode otherwise."""
        if schedule is None:
            return self.score(text, self.decide(text, threshold, mode), evidence)
        gamma, need, soft = self.training_decisions(text, self.has_evidence(text, evidence), schedule)
        return self.score(text, gamma, evidence, compute=need, soft_gate=soft)

    def unit_loss(
        self,
        scores: UnitScores,
        gate_logit: torch.Tensor,
        labels: torch.Tensor,
        groundable: torch.Tensor | None,
    ) -> torch.Tensor:
        """Task CE (mixed and text-only paths) + gate BCE + activation budget + consistency + balance."""
        cfg = self.cfg
        weight = torch.ones(cfg.n_classes, device=labels.device)
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
