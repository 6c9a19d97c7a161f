"""MRE model: one unit per marked pair; the pair gate; gate off is exactly the text path; it learns."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from model.base import GateSchedule
from model.config import SaverConfig
from model.evidence import PostEvidence
from model.gate import VisionMode
from model.head import EnergyHead
from model.loading import MNRE_RELATIONS
from model.mre import MreBatch, MreModel, MreTargets
from model.text_encoder import TextEncoder

WORDS = [
    ["Kevin", "Durant", "signs", "with", "the", "Warriors"],
    ["Obama", "and", "Michelle", "in", "Hawaii"],
    ["@taylorswift13", "live", "at", "Wembley", "tonight", "🎤"],
    ["Messi", "scores", "again", "for", "Inter", "Miami"],
]
HEADS = [(0, 2), (0, 1), (0, 1), (0, 1)]
TAILS = [(5, 6), (2, 3), (3, 4), (4, 6)]
RELATIONS = ["/per/org/member_of", "/per/per/couple", "/per/misc/present_in", "/per/org/member_of"]


def text_evidence(seed: int, m: int) -> PostEvidence:
    return PostEvidence(text=torch.randn(m, 384, generator=torch.Generator().manual_seed(seed)))


EVIDENCE: list[PostEvidence | None] = [text_evidence(0, 3), None, text_evidence(1, 1), None]


def config(**overrides: Any) -> SaverConfig:
    return SaverConfig(task="mre", labels=list(MNRE_RELATIONS), **overrides)


@pytest.fixture(scope="module")
def model(encoder: TextEncoder, wake: Callable[[EnergyHead], None]) -> MreModel:
    torch.manual_seed(0)
    m = MreModel(config(), encoder=encoder).eval()
    wake(m.head)  # zero-initialised on purpose; give vision a voice for these tests
    return m


def run(model: MreModel, mode: VisionMode, threshold: float = 0.5, with_evidence: bool = True) -> Any:
    batch = MreBatch(WORDS, HEADS, TAILS, list(EVIDENCE) if with_evidence else [])
    with torch.no_grad():
        out, _ = model(batch, threshold=threshold, mode=mode)
    return out


def test_one_distribution_per_pair(model: MreModel) -> None:
    out = run(model, "never")
    assert out.probs.shape == (len(WORDS), len(MNRE_RELATIONS))
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(len(WORDS)))
    assert out.entity_gates.shape == (len(WORDS), 2)


def test_default_pair_gate_is_the_max_of_the_entity_gates(model: MreModel) -> None:
    out = run(model, "never")
    torch.testing.assert_close(out.scores.gate, out.entity_gates.max(dim=-1).values)


def test_swapping_head_and_tail_changes_the_pair(model: MreModel) -> None:
    with torch.no_grad():
        a, _ = model(MreBatch(WORDS[:1], HEADS[:1], TAILS[:1]))
        b, _ = model(MreBatch(WORDS[:1], TAILS[:1], HEADS[:1]))
    assert not torch.allclose(a.probs, b.probs)


@pytest.mark.parametrize(("mode", "threshold"), [("never", 0.5), ("never", 0.0), ("auto", math.inf)])
def test_gate_off_is_exactly_the_text_path_and_does_no_vision_work(
    model: MreModel, monkeypatch: pytest.MonkeyPatch, mode: VisionMode, threshold: float
) -> None:
    calls: list[int] = []
    original = model.pool_evidence

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "pool_evidence", counting)
    before = model.vision_calls
    out = run(model, mode, threshold)
    text_only = run(model, "always", with_evidence=False)
    assert model.vision_calls == before and calls == []
    assert torch.equal(out.probs, text_only.probs)
    assert torch.equal(out.scores.logits, out.scores.text_logits)


def test_gate_on_changes_only_pairs_with_evidence(model: MreModel) -> None:
    before = model.vision_calls
    text = run(model, "never")
    out = run(model, "always")
    assert model.vision_calls > before
    assert out.scores.gamma.tolist() == [True, False, True, False]
    assert torch.equal(out.probs[[1, 3]], text.probs[[1, 3]])
    assert (out.probs[[0, 2]] - text.probs[[0, 2]]).abs().amax(-1).min() > 0
    assert [len(s) for s in out.scores.selected] == [min(model.cfg.select_k, 3), 0, 1, 0]


@pytest.mark.parametrize("rule", ["noisy_or", "mean", "learned"])
def test_other_pair_rules_build_and_give_probabilities(encoder: TextEncoder, rule: str) -> None:
    model = MreModel(config(pair_rule=rule), encoder=encoder).eval()
    with torch.no_grad():
        out, _ = model(MreBatch(WORDS, HEADS, TAILS))
    assert ((out.scores.gate >= 0) & (out.scores.gate <= 1)).all()


def test_a_few_optimisation_steps_lower_the_loss(fresh_encoder: TextEncoder) -> None:
    torch.manual_seed(0)
    for p in fresh_encoder.bert.parameters():  # no backward through MiniLM: keeps the test quick
        p.requires_grad_(False)
    model = MreModel(
        config(dropout=0.0, d_model=64, gate_hidden=32, expert_hidden=32, set_heads=2, width_dim=8),
        encoder=fresh_encoder,
    ).train()
    batch, targets = MreBatch(WORDS, HEADS, TAILS, list(EVIDENCE)), MreTargets(RELATIONS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss() -> torch.Tensor:
        _, value = model(batch, targets, schedule=GateSchedule())  # the training path's γ
        assert value is not None
        return value

    def measure() -> float:
        torch.manual_seed(7)  # identical dropout noise for both measurements
        with torch.no_grad():
            return float(loss())

    first = measure()
    for _ in range(12):
        opt.zero_grad()
        loss().backward()
        opt.step()
    last = measure()
    assert math.isfinite(first)
    assert last < 0.8 * first, (first, last)
