"""Groundability gate: vision modes, τ = ∞, and the MRE pair rules."""

from __future__ import annotations

import math

import pytest
import torch

from model.gate import GroundabilityGate, PairGate, gate_decision


def test_always_and_never_ignore_the_scores() -> None:
    gate = torch.tensor([0.0, 0.2, 0.7, 1.0])
    assert gate_decision(gate, 0.5, "always").all()
    assert not gate_decision(gate, 0.5, "never").any()
    assert gate_decision(gate, 0.5, "always").dtype == torch.bool


def test_auto_compares_with_the_threshold_inclusively() -> None:
    gate = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert gate_decision(gate, 0.5, "auto").tolist() == [False, False, True, True, True]
    assert gate_decision(gate, 0.0, "auto").all()


def test_infinite_threshold_never_activates() -> None:
    gate = torch.tensor([0.0, 0.5, 1.0])
    assert not gate_decision(gate, math.inf, "auto").any()
    assert gate_decision(gate, math.inf, "always").all()  # an explicit request still wins


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown vision mode"):
        gate_decision(torch.tensor([0.5]), 0.5, "sometimes")  # type: ignore[arg-type]


def test_gate_gives_one_logit_per_unit() -> None:
    gate = GroundabilityGate(16, 8)
    assert gate(torch.randn(3, 5, 16)).shape == (3, 5)


@pytest.mark.parametrize("rule", ["max", "noisy_or", "mean", "learned"])
def test_pair_rules_give_probabilities(rule: str) -> None:
    torch.manual_seed(0)
    pair_gate = PairGate(rule, 16, 8)  # type: ignore[arg-type]
    head, tail = 10 * torch.randn(200), 10 * torch.randn(200)
    p = pair_gate(head, tail, torch.randn(200, 16))
    assert p.shape == (200,)
    assert ((p >= 0) & (p <= 1)).all()


def test_pair_rules_are_ordered_noisy_or_max_mean() -> None:
    torch.manual_seed(1)
    head, tail, pair = 4 * torch.randn(500), 4 * torch.randn(500), torch.randn(500, 16)
    by_rule = {rule: PairGate(rule, 16, 8)(head, tail, pair) for rule in ("max", "noisy_or", "mean")}  # type: ignore[arg-type]
    gh, gt = torch.sigmoid(head), torch.sigmoid(tail)
    assert (by_rule["noisy_or"] >= by_rule["max"] - 1e-7).all()
    assert (by_rule["max"] >= by_rule["mean"] - 1e-7).all()
    torch.testing.assert_close(by_rule["max"], torch.maximum(gh, gt))
    assert (by_rule["mean"] >= torch.minimum(gh, gt) - 1e-7).all()


def test_learned_rule_reads_the_pair_not_the_entity_gates() -> None:
    torch.manual_seed(2)
    pair_gate = PairGate("learned", 16, 8)
    pair = torch.randn(4, 16)
    a = pair_gate(torch.zeros(4), torch.zeros(4), pair)
    b = pair_gate(torch.full((4,), 5.0), torch.full((4,), -5.0), pair)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, pair_gate(torch.zeros(4), torch.zeros(4), pair + 1))
