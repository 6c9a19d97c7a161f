"""MNER model: gate off is exactly the text path with no vision work; gate on uses evidence; it learns."""

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
from model.mner import MnerBatch, MnerModel, MnerTargets
from model.spans import enumerate_spans
from model.text_encoder import TextEncoder

WORDS = [
    ["Kevin", "Durant", "joins", "the", "Golden", "State", "Warriors", "!"],
    ["just", "landed", "in", "Paris", "😀", "#travel"],
    ["@nasa", "launch", "today", "http://t.co/x"],
]


def evidence(seed: int, m: int, image: bool = True, text: bool = True) -> PostEvidence:
    gen = torch.Generator().manual_seed(seed)
    return PostEvidence(
        text=torch.randn(m, 384, generator=gen) if text else None,
        image=torch.randn(m, 1280, generator=gen) if image else None,
        regions=torch.randn(m, 6, 1280, generator=gen) if image else None,
    )


EVIDENCE: list[PostEvidence | None] = [evidence(0, 3), None, evidence(1, 2, image=False)]


@pytest.fixture(scope="module")
def model(encoder: TextEncoder, wake: Callable[[EnergyHead], None]) -> MnerModel:
    torch.manual_seed(0)
    m = MnerModel(SaverConfig(), encoder=encoder).eval()
    wake(m.head)  # zero-initialised on purpose; give vision a voice for these tests
    return m


@pytest.fixture
def count_pool(model: MnerModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = model.pool_evidence

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "pool_evidence", counting)
    return calls


def run(model: MnerModel, mode: VisionMode, threshold: float = 0.5, with_evidence: bool = True) -> Any:
    with torch.no_grad():
        out, _ = model(
            MnerBatch(WORDS, list(EVIDENCE) if with_evidence else []), threshold=threshold, mode=mode
        )
    return out


def test_every_span_up_to_w_is_a_unit(model: MnerModel) -> None:
    out = run(model, "never")
    for p, words in enumerate(WORDS):
        spans = [tuple(s) for s, q in zip(out.spans.tolist(), out.post_of_unit, strict=True) if q == p]
        assert spans == enumerate_spans(len(words), model.cfg.max_span_width)
    assert out.probs.shape == (len(out.post_of_unit), model.cfg.n_classes)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(len(out.post_of_unit)))


@pytest.mark.parametrize(("mode", "threshold"), [("never", 0.5), ("never", 0.0), ("auto", math.inf)])
def test_gate_off_is_exactly_the_text_path_and_does_no_vision_work(
    model: MnerModel, count_pool: list[int], mode: VisionMode, threshold: float
) -> None:
    before = model.vision_calls
    out = run(model, mode, threshold)
    text_only = run(model, "always", with_evidence=False)  # no evidence anywhere: the pure text path
    assert model.vision_calls == before
    assert count_pool == []
    assert not out.scores.gamma.any()
    assert torch.equal(out.scores.logits, out.scores.text_logits)
    assert torch.equal(out.probs, text_only.probs)
    assert out.entities == text_only.entities


def test_gate_on_changes_the_scores_of_units_with_evidence(model: MnerModel, count_pool: list[int]) -> None:
    before = model.vision_calls
    text = run(model, "never")
    out = run(model, "always")
    assert model.vision_calls > before and count_pool
    post = torch.tensor(out.post_of_unit)
    with_ev = (post == 0) | (post == 2)
    assert out.scores.gamma.tolist() == with_ev.tolist()
    assert torch.equal(out.probs[~with_ev], text.probs[~with_ev])  # post 1 has no images
    assert (out.probs[with_ev] - text.probs[with_ev]).abs().amax(-1).min() > 0  # every activated unit moves
    for a, chosen in enumerate(out.scores.selected):
        n_items = len(EVIDENCE[out.post_of_unit[a]] or [])
        assert len(chosen) == (min(model.cfg.select_k, n_items) if with_ev[a] else 0)
        assert len(set(chosen)) == len(chosen) and all(0 <= i < n_items for i in chosen)


def test_auto_mode_activates_only_units_above_the_threshold(model: MnerModel) -> None:
    out = run(model, "auto", threshold=0.5)
    assert not (out.scores.gamma & (out.scores.gate < 0.5)).any()
    post = torch.tensor(out.post_of_unit)
    assert not out.scores.gamma[post == 1].any()
    off = ~out.scores.gamma
    assert torch.equal(out.scores.logits[off], out.scores.text_logits[off])


def test_a_post_scores_the_same_alone_and_in_a_batch(model: MnerModel) -> None:
    batch = run(model, "never")
    with torch.no_grad():
        alone, _ = model(MnerBatch([WORDS[1]]))
    rows = [a for a, p in enumerate(batch.post_of_unit) if p == 1]
    torch.testing.assert_close(batch.probs[rows], alone.probs, atol=1e-5, rtol=1e-4)


def test_empty_posts_have_no_units(model: MnerModel) -> None:
    with torch.no_grad():
        only_empty, _ = model(MnerBatch([[]]))
        mixed, _ = model(MnerBatch([[], WORDS[2]], [evidence(3, 2), None]))
    assert only_empty.entities == [[]] and only_empty.probs.shape[0] == 0
    assert mixed.entities[0] == [] and set(mixed.post_of_unit) == {1}


def test_decoded_entities_do_not_overlap(model: MnerModel) -> None:
    out = run(model, "always")
    for ents in out.entities:
        taken: set[int] = set()
        for e in ents:
            assert e.label >= 1 and not taken & set(range(e.start, e.end))
            taken |= set(range(e.start, e.end))


def lower_loss_by_training(
    model: torch.nn.Module, step: Callable[[], torch.Tensor], steps: int = 12
) -> tuple[float, float]:
    """AdamW on everything trainable; returns the loss before and after (same dropout noise for both)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()

    def measure() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return float(step())

    first = measure()
    for _ in range(steps):
        opt.zero_grad()
        step().backward()
        opt.step()
    return first, measure()


def freeze_adapters(encoder: TextEncoder) -> None:
    # keeps the test fast: no backward pass through MiniLM (the gradient test below covers the adapters)
    for p in encoder.bert.parameters():
        p.requires_grad_(False)


# small heads keep the optimisation test quick; the behaviour under test does not depend on the sizes
SMALL = SaverConfig(dropout=0.0, d_model=64, gate_hidden=32, expert_hidden=32, set_heads=2, width_dim=8)
TARGETS = MnerTargets([[(0, 2, "PER"), (4, 7, "ORG")], [(3, 4, "LOC")], [(0, 1, "ORG")]])


def mner_step(model: MnerModel) -> Callable[[], torch.Tensor]:
    batch = MnerBatch(WORDS, list(EVIDENCE))

    def step() -> torch.Tensor:
        # the training path: γ by the gate schedule (no forced warm-up, floor 0), forced-vision scores
        # computed for the eligible units with evidence
        _, loss = model(batch, TARGETS, schedule=GateSchedule())
        assert loss is not None
        return loss

    return step


def test_a_few_optimisation_steps_lower_the_loss(fresh_encoder: TextEncoder) -> None:
    torch.manual_seed(0)
    freeze_adapters(fresh_encoder)
    model = MnerModel(SMALL, encoder=fresh_encoder)
    first, last = lower_loss_by_training(model, mner_step(model))
    assert math.isfinite(first)
    assert last < 0.8 * first, (first, last)


def test_gradients_reach_adapters_gate_and_heads(fresh_encoder: TextEncoder) -> None:
    torch.manual_seed(0)
    model = MnerModel(SMALL, encoder=fresh_encoder).train()
    mner_step(model)().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # lora_b starts at zero, so at the first step only it (not lora_a) can receive a gradient
    for part in ("lora_b", "shape_embedding", "gate.", "head.text", "head.vision", "pooler.", "evidence."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if part in n), part
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("encoder.bert.") and "lora" not in n for n in frozen)
