"""Energy-inspired joint scoring head with sparse top-k expert routing.

E(y|u) = -[ s_text(y|u) + γ(u)·(s_vis(y|u,e) + β_y·c(u,e)) + s_route(y|u,γe) ],  p(y|u) = softmax(-E).

With γ = 0 the vision terms vanish and the router sees a zero evidence vector, so the output is exactly
the text-only path. The expert list is open: more experts (e.g. retrieval experts) can join the router.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _linear(module: nn.Module) -> nn.Linear:
    assert isinstance(module, nn.Linear)
    return module


@dataclass
class RouteOutput:
    scores: torch.Tensor  # (A, C)
    balance_loss: torch.Tensor  # scalar


class SparseExpertRouter(nn.Module):
    """Top-k gating over small MLP experts (Shazeer et al.), Switch-style load-balancing loss."""

    def __init__(self, d_in: int, n_classes: int, n_experts: int, top_k: int, hidden: int) -> None:
        super().__init__()
        self.top_k = min(top_k, n_experts)
        self.router = nn.Linear(d_in, n_experts)
        self.n_classes = n_classes
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, n_classes))
            for _ in range(n_experts)
        )

    def forward(self, x: torch.Tensor) -> RouteOutput:
        """x (A, d_in) -> scores (A, C)."""
        probs = F.softmax(self.router(x), dim=-1)  # (A, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (A, k)
        weights = top_p / top_p.sum(-1, keepdim=True)
        out = x.new_zeros(x.size(0), self.n_classes)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel():
                # under autocast the expert's output is bf16/fp16 while ``out`` keeps x's dtype
                contribution = weights[rows, slot].unsqueeze(-1) * expert(x[rows])
                out = out.index_add(0, rows, contribution.to(out.dtype))
        n_experts = len(self.experts)
        dispatch = (
            F.one_hot(top_i[:, 0], n_experts).float().mean(0) if x.size(0) else probs.new_zeros(n_experts)
        )
        importance = probs.mean(0) if x.size(0) else probs.new_zeros(n_experts)
        return RouteOutput(out, n_experts * (dispatch * importance).sum())

    def dense(self, x: torch.Tensor) -> RouteOutput:
        """``forward(x).scores`` for x of any leading shape, computed densely: every expert on every row,
        weighted by the renormalised top-k probabilities (zero elsewhere). Same numbers, without the
        data-dependent ``nonzero``, which a traced graph would freeze; no balance loss (not for training)."""
        probs = F.softmax(self.router(x), dim=-1)  # (..., E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (..., k)
        weights = top_p / top_p.sum(-1, keepdim=True)
        one_hot = (top_i.unsqueeze(-1) == torch.arange(len(self.experts), device=x.device)).to(x.dtype)
        mix = (one_hot * weights.unsqueeze(-1)).sum(-2)  # (..., E)
        experts = torch.stack([expert(x) for expert in self.experts], dim=-2)  # (..., E, C)
        return RouteOutput((mix.unsqueeze(-1) * experts).sum(-2), x.new_zeros(()))


@dataclass
class HeadOutput:
    logits: torch.Tensor  # (A, C) = -E(y|u)
    consistency: torch.Tensor  # (A,) c(u, e); 0 where γ = 0
    balance_loss: torch.Tensor


class EnergyHead(nn.Module):
    def __init__(
        self,
        d: int,
        n_classes: int,
        n_experts: int,
        top_k: int,
        expert_hidden: int,
        beta: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, d), nn.GELU(), nn.Linear(d, n_classes))
        vision_out = nn.Linear(d, n_classes)
        self.vision = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * d, d), nn.GELU(), vision_out)
        self.query = nn.Linear(d, d)
        self.beta = nn.Parameter(torch.full((n_classes,), beta))  # β_y: per-label weight of consistency
        self.router = SparseExpertRouter(2 * d, n_classes, n_experts, top_k, expert_hidden)
        nn.init.zeros_(vision_out.weight)  # vision starts as a no-op: never worse than text at init
        nn.init.zeros_(vision_out.bias)

    def text_scores(self, units: torch.Tensor) -> RouteOutput:
        """The γ=0 path: s_text + s_route(u, 0)."""
        route = self.router(torch.cat([units, torch.zeros_like(units)], dim=-1))
        return RouteOutput(self.text(units) + route.scores, route.balance_loss)

    def text_scores_dense(self, units: torch.Tensor) -> torch.Tensor:
        """``text_scores(units).scores`` for units of any leading shape, computed densely: every expert on
        every unit, weighted by the router's renormalised top-k probabilities (zero elsewhere). Same
        numbers, without the data-dependent ``nonzero`` of the sparse router, which a traced graph would
        freeze.

        Written for speed with the same weights: the router and the experts see [units; 0] on the text
        path, so only the first d input columns of their first layers matter; those, the text MLP's first
        layer and the router are one (d -> d + E + E·hidden) matmul; the experts' second layers are one
        matmul over the mix-weighted hidden units, (Σ_e m_e·(W_e h_e + b_e) = [m_e h_e]_e · [W_e]_e + m·b)."""
        router, text_in, text_act, text_out = self.router, _linear(self.text[1]), self.text[2], self.text[3]
        d = text_in.in_features  # a module size: a constant in a traced graph
        experts = [(_linear(e[0]), e[1], _linear(e[2])) for e in router.experts]  # type: ignore[index]
        n_experts, hidden = len(experts), experts[0][0].out_features
        first = torch.cat(
            [text_in.weight, router.router.weight[:, :d], *(e[0].weight[:, :d] for e in experts)]
        )  # (d + E + E·hidden, d)
        first_bias = torch.cat([text_in.bias, router.router.bias, *(e[0].bias for e in experts)])
        t, r, x = F.linear(units, first, first_bias).split(
            [text_in.out_features, n_experts, n_experts * hidden], -1
        )
        probs = torch.softmax(r, dim=-1)  # (..., E)
        top_p, top_i = probs.topk(router.top_k, dim=-1)  # (..., k)
        weights = top_p / top_p.sum(-1, keepdim=True)
        one_hot = (top_i.unsqueeze(-1) == torch.arange(n_experts, device=units.device)).to(units.dtype)
        mix = (one_hot * weights.unsqueeze(-1)).sum(-2)  # (..., E)
        h = experts[0][1](x).unflatten(-1, (n_experts, hidden)) * mix.unsqueeze(-1)  # (..., E, hidden)
        second = torch.cat([e[2].weight for e in experts], dim=1)  # (C, E·hidden)
        second_bias = torch.stack([e[2].bias for e in experts])  # (E, C)
        routed = F.linear(h.flatten(-2), second) + mix @ second_bias  # (..., C)
        return text_out(text_act(t)) + routed

    def forward(
        self, units: torch.Tensor, evidence: torch.Tensor, gamma: torch.Tensor, dense: bool = False
    ) -> HeadOutput:
        """units (A, D), evidence (A, D), gamma (A,) in {0, 1} (float, may carry straight-through grads).
        ``dense``: the router's traceable form (the ONNX fuse graph), same scores."""
        g = gamma.unsqueeze(-1)
        ge = g * evidence
        consistency = F.cosine_similarity(self.query(units), evidence, dim=-1) * gamma  # (A,)
        vis = self.vision(torch.cat([units, evidence, units * evidence], dim=-1))
        x = torch.cat([units, ge], dim=-1)
        route = self.router.dense(x) if dense else self.router(x)
        s_text = self.text(units)
        logits = s_text + g * vis + consistency.unsqueeze(-1) * self.beta + route.scores
        return HeadOutput(logits, consistency, route.balance_loss)
