"""Conformal Groundability Gate: a text-only score per unit saying whether vision can help it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

VisionMode = Literal["auto", "always", "never"]
PairRule = Literal["max", "noisy_or", "mean", "learned"]


class GroundabilityGate(nn.Module):
    """g(u) = sigmoid(MLP(features of u)); computed from the text alone, before any image is touched.

    The features (``SaverBase.gate_features``) are the unit vector, the text path's label distribution
    for it and the post's mean word vector: whether an image can show an entity depends on what kind of
    entity it is (a person far more often than a location) and on what the post is about."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (..., D_in) -> gate logits (...)."""
        return self.mlp(features).squeeze(-1)

    def forward_parts(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``forward(torch.cat(parts, -1))`` for parts that broadcast against each other: each part meets
        its own columns of the first layer at its own shape, so a part shared by many units (the post's
        context, (B, 1, H) against (B, U, ·)) is projected once per post, not once per unit."""
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        # the feature widths are fixed by the model: as constants the weight split folds away in a graph
        blocks = first.weight.split([int(p.shape[-1]) for p in parts], dim=1)
        pre: torch.Tensor = first.bias
        for part, block in zip(parts, blocks, strict=True):
            pre = pre + F.linear(part, block)
        return self.mlp[2](self.mlp[1](pre)).squeeze(-1)


class PairGate(nn.Module):
    """MRE: the pair gate from the two entity gates by a configurable rule (``learned`` looks at the pair)."""

    def __init__(self, rule: PairRule, d_model: int, hidden: int) -> None:
        super().__init__()
        self.rule = rule
        self.pair_mlp = GroundabilityGate(d_model, hidden) if rule == "learned" else None

    def forward(self, head_logit: torch.Tensor, tail_logit: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """Returns pair gate *probabilities* (B,)."""
        gh, gt = torch.sigmoid(head_logit), torch.sigmoid(tail_logit)
        if self.rule == "max":
            return torch.maximum(gh, gt)
        if self.rule == "noisy_or":
            return 1 - (1 - gh) * (1 - gt)
        if self.rule == "mean":
            return (gh + gt) / 2
        assert self.pair_mlp is not None
        return torch.sigmoid(self.pair_mlp(pair))


def gate_decision(gate: torch.Tensor, threshold: float, mode: VisionMode) -> torch.Tensor:
    """Boolean γ(u): ``auto`` compares with the calibrated τ (τ = inf never activates)."""
    if mode == "always":
        return torch.ones_like(gate, dtype=torch.bool)
    if mode == "never" or math.isinf(threshold):
        return torch.zeros_like(gate, dtype=torch.bool)
    if mode != "auto":
        raise ValueError(f"unknown vision mode {mode!r}")
    return gate >= threshold
