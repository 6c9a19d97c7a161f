"""TorchPipeline, the staged protocol: text first; with the gate off no image work at all and exactly the
text-only answer; with it on, screen -> select -> detail -> fuse changes the answer; offsets always slice."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.config import SaverConfig
from model.evidence import PostEvidence
from model.gate import VisionMode
from model.head import EnergyHead
from model.inference import TorchPipeline
from model.loading import MNRE_RELATIONS, untrained_pipeline
from model.mner import MnerBatch, MnerModel
from model.mre import MreBatch, MreModel
from model.pipeline import MnerResult, MreResult, SaverPipeline, TextRequest
from model.runner import StagedRun, run_pipeline
from model.text_encoder import TextEncoder

TWEET = "Kevin Durant joins the Golden State Warriors tonight in #Oakland @warriors 🏀 http://t.co/xyz"


def staged(
    pipe: TorchPipeline, mode: VisionMode, images: list[Image.Image], **text: Any
) -> tuple[MnerResult | MreResult, np.ndarray]:
    """Drive the protocol the way the service does (images are only touched if some unit is activated);
    -> the answer and the gate's decision per unit."""
    run = run_pipeline(pipe, TextRequest(**text), images, mode)
    return run.result, run.wanted


class Counters:
    def __init__(self) -> None:
        self.factory = 0
        self.pool = 0


@pytest.fixture
def counters() -> Counters:
    return Counters()


def build(
    model: MnerModel | MreModel,
    fake_backbone: Any,
    counters: Counters,
    monkeypatch: pytest.MonkeyPatch,
    threshold: float = 0.5,
) -> TorchPipeline:
    def factory() -> Any:
        counters.factory += 1
        return fake_backbone

    original = model.pool_evidence

    def counting(*args: Any, **kwargs: Any) -> Any:
        counters.pool += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "pool_evidence", counting)
    return TorchPipeline(model, factory, name="test", version="0", trained=False, threshold=threshold)


@pytest.fixture(scope="module")
def mner_model(encoder: TextEncoder, wake: Callable[[EnergyHead], None]) -> MnerModel:
    torch.manual_seed(0)
    model = MnerModel(SaverConfig(), encoder=encoder).eval()
    wake(model.head)
    return model


@pytest.fixture(scope="module")
def mre_model(encoder: TextEncoder, wake: Callable[[EnergyHead], None]) -> MreModel:
    torch.manual_seed(0)
    model = MreModel(SaverConfig(task="mre", labels=list(MNRE_RELATIONS)), encoder=encoder).eval()
    wake(model.head)
    return model


@pytest.fixture
def mner_pipe(
    mner_model: MnerModel, fake_backbone: Any, counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> TorchPipeline:
    return build(mner_model, fake_backbone, counters, monkeypatch)


@pytest.fixture
def mre_pipe(
    mre_model: MreModel, fake_backbone: Any, counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> TorchPipeline:
    return build(mre_model, fake_backbone, counters, monkeypatch)


def test_torch_pipeline_satisfies_the_protocol(mner_pipe: TorchPipeline) -> None:
    assert isinstance(mner_pipe, SaverPipeline)


@pytest.mark.parametrize(("mode", "threshold"), [("never", 0.5), ("auto", math.inf)])
def test_mner_gate_off_touches_no_image_and_is_the_text_answer(
    mner_model: MnerModel, counters: Counters, fake_backbone: Any, images: Callable[[int], list[Image.Image]],
    monkeypatch: pytest.MonkeyPatch, mode: VisionMode, threshold: float,
) -> None:  # fmt: skip
    mner_pipe = build(mner_model, fake_backbone, counters, monkeypatch, threshold)
    assert mner_pipe.threshold == threshold
    before = mner_pipe.model.vision_calls
    result, activated = staged(mner_pipe, mode, images(3), text=TWEET)
    assert not activated.any()
    assert counters.factory == 0 and counters.pool == 0 and fake_backbone.calls == {"screen": 0, "detail": 0}
    assert mner_pipe.model.vision_calls == before
    text = mner_pipe.encode_text(text=TWEET)
    nothing = np.zeros(len(text.units), dtype=bool)
    assert result == mner_pipe.fuse(text, nothing, [[] for _ in text.units], {}, {})
    assert isinstance(result, MnerResult) and result.entities
    assert all(not e.activated and e.images == [] for e in result.entities)


def test_mner_pipeline_agrees_with_the_model(mner_pipe: TorchPipeline) -> None:
    result, _ = staged(mner_pipe, "never", [], text=TWEET)
    assert isinstance(result, MnerResult)
    text = mner_pipe.encode_text(text=TWEET)
    model = mner_pipe.model
    with torch.no_grad():
        out, _ = model(MnerBatch([[w.text for w in text.words]]), mode="never")
    assert [(e.token_start, e.token_end) for e in result.entities] == [
        (d.start, d.end) for d in out.entities[0]
    ]
    assert [e.type for e in result.entities] == [model.cfg.labels[d.label - 1] for d in out.entities[0]]
    assert [e.score for e in result.entities] == pytest.approx([d.score for d in out.entities[0]], abs=1e-5)


def test_mner_always_runs_the_vision_stages_and_changes_the_answer(
    mner_pipe: TorchPipeline,
    counters: Counters,
    fake_backbone: Any,
    images: Callable[[int], list[Image.Image]],
) -> None:
    text_only, _ = staged(mner_pipe, "never", [], text=TWEET)
    result, activated = staged(mner_pipe, "always", images(3), text=TWEET)
    assert activated.all()
    assert counters.factory == 1 and counters.pool == 1
    assert fake_backbone.calls == {"screen": 1, "detail": 1}
    assert isinstance(result, MnerResult) and isinstance(text_only, MnerResult)
    assert result != text_only
    assert all(e.activated and 1 <= len(e.images) <= mner_pipe.model.cfg.select_k for e in result.entities)


def test_mner_units_whose_images_never_arrived_fall_back_to_text(
    mner_pipe: TorchPipeline, images: Callable[[int], list[Image.Image]]
) -> None:
    text_only, _ = staged(mner_pipe, "never", [], text=TWEET)
    result = mner_pipe.encode_text(text=TWEET)
    activated = mner_pipe.activation(result, "always")
    screened = mner_pipe.screen(images(3))
    selected = mner_pipe.select(result, activated, screened)
    fallback = mner_pipe.fuse(
        result, activated, selected, {}, dict(enumerate(screened))
    )  # every fetch failed
    assert isinstance(fallback, MnerResult) and isinstance(text_only, MnerResult)
    assert [(e.start, e.end, e.type, e.score) for e in fallback.entities] == [
        (e.start, e.end, e.type, e.score) for e in text_only.entities
    ]
    assert all(e.images == [] for e in fallback.entities)


def test_mner_select_picks_at_most_k_images_and_only_for_activated_units(
    mner_pipe: TorchPipeline, images: Callable[[int], list[Image.Image]]
) -> None:
    result = mner_pipe.encode_text(text=TWEET)
    activated = np.zeros(len(result.units), dtype=bool)
    activated[::3] = True
    selected = mner_pipe.select(result, activated, mner_pipe.screen(images(4)))
    assert len(selected) == len(result.units)
    for u, sel in enumerate(selected):
        assert (1 <= len(sel) <= 2) if activated[u] else sel == []
        assert all(0 <= i < 4 for i in sel)


def test_mner_empty_text_has_no_units(mner_pipe: TorchPipeline) -> None:
    result, activated = staged(mner_pipe, "always", [], text="   ")
    assert result == MnerResult([]) and activated.size == 0


def test_tokens_input_gives_word_offsets(mner_pipe: TorchPipeline) -> None:
    result = mner_pipe.encode_text(tokens=["Kevin", "Durant", "in", "Oakland"])
    assert result.text == "Kevin Durant in Oakland"
    assert [result.text[w.start : w.end] for w in result.words] == ["Kevin", "Durant", "in", "Oakland"]


def result_words(pipe: TorchPipeline) -> list[Any]:
    return pipe.encode_text(text=TWEET, head=(0, 2), tail=(4, 7)).words


@pytest.mark.parametrize(("mode", "threshold"), [("never", 0.5), ("auto", math.inf)])
def test_mre_gate_off_touches_no_image_and_is_the_text_answer(
    mre_model: MreModel, counters: Counters, fake_backbone: Any, images: Callable[[int], list[Image.Image]],
    monkeypatch: pytest.MonkeyPatch, mode: VisionMode, threshold: float,
) -> None:  # fmt: skip
    mre_pipe = build(mre_model, fake_backbone, counters, monkeypatch, threshold)
    assert mre_pipe.threshold == threshold
    result, activated = staged(mre_pipe, mode, images(2), text=TWEET, head=(0, 2), tail=(4, 7))
    assert not activated.any()
    assert counters.factory == 0 and counters.pool == 0 and fake_backbone.calls == {"screen": 0, "detail": 0}
    model = mre_pipe.model
    with torch.no_grad():
        batch = MreBatch([[w.text for w in result_words(mre_pipe)]], [(0, 2)], [(4, 7)])
        out, _ = model(batch, threshold=threshold, mode=mode)
    assert isinstance(result, MreResult) and not result.activated
    assert result.relation == MNRE_RELATIONS[int(out.probs[0].argmax())]
    assert result.score == pytest.approx(float(out.probs[0].max()), abs=1e-6)
    assert [s for _, s in result.top] == sorted((s for _, s in result.top), reverse=True)


def test_mre_always_runs_the_vision_stages_and_changes_the_answer(
    mre_pipe: TorchPipeline,
    counters: Counters,
    fake_backbone: Any,
    images: Callable[[int], list[Image.Image]],
) -> None:
    text_only, _ = staged(mre_pipe, "never", [], text=TWEET, head=(0, 2), tail=(4, 7))
    result, activated = staged(mre_pipe, "always", images(3), text=TWEET, head=(0, 2), tail=(4, 7))
    assert activated.tolist() == [True]
    assert counters.pool == 1 and fake_backbone.calls == {"screen": 1, "detail": 1}
    assert isinstance(result, MreResult) and isinstance(text_only, MreResult)
    assert result.activated and 1 <= len(result.images) <= 2
    assert result.top != text_only.top


# --- the served path and the evaluation path are one path, with vision on ---------------------------------
def evidence_of(pipe: TorchPipeline, run: StagedRun, images: list[Image.Image]) -> PostEvidence:
    """The post's evidence as ``forward`` reads it, from the tensors the served run produced: the screen
    tier for selection, the detail tier for pooling. Images no unit chose were never detail-encoded by
    the run; they are encoded here only so every item has both tiers (no unit may pick them)."""
    missing = [i for i in range(len(images)) if i not in run.detailed]
    detailed = dict(run.detailed)
    detailed.update(zip(missing, pipe.detail([images[i] for i in missing]), strict=True))
    screen = [s.payload for s in run.screened]
    detail = [detailed[i].payload for i in range(len(images))]

    def stack(payloads: list[dict[str, torch.Tensor | None]], key: str) -> torch.Tensor:
        values = [p[key] for p in payloads]
        assert all(v is not None for v in values), key  # the fake backbone has tags: every channel is there
        return torch.stack([v for v in values if v is not None])

    return PostEvidence(
        text=stack(detail, "text"),
        image=stack(detail, "image"),
        regions=stack(detail, "regions"),
        screen_text=stack(screen, "text"),
        screen_image=stack(screen, "image"),
    )


@pytest.mark.parametrize("task", ["mner", "mre"])
def test_served_answer_with_vision_equals_the_model_forward(
    task: str,
    mner_model: MnerModel,
    mre_model: MreModel,
    fake_backbone: Any,
    images: Callable[[int], list[Image.Image]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Vision on: the staged service path (screen -> select -> detail -> fuse) and ``forward`` (training,
    evaluation, calibration) give the same units, selections, probabilities and answer."""
    model: MnerModel | MreModel = mner_model if task == "mner" else mre_model
    pipe = TorchPipeline(model, lambda: fake_backbone, name="test", version="0", trained=False, threshold=0.5)
    served: list[torch.Tensor] = []  # the (U, C) label distributions the served answer was decoded from
    answer = model.result

    def spy(post: Any, probs: torch.Tensor, activated: np.ndarray, used: list[list[int]]) -> Any:
        served.append(probs.clone())
        return answer(post, probs, activated, used)

    monkeypatch.setattr(model, "result", spy)
    pictures = images(3)
    head, tail = ((0, 2), (4, 7)) if task == "mre" else (None, None)
    run = run_pipeline(pipe, TextRequest(text=TWEET, head=head, tail=tail), pictures, "always")
    assert run.activated.all() and len(run.screened) == len(pictures) and run.detailed
    assert all(sel for sel in run.selected)  # every unit really used images
    assert len(served) == 1

    words = [[w.text for w in run.text.words]]
    evidence: list[PostEvidence | None] = [evidence_of(pipe, run, pictures)]
    with torch.no_grad():
        if isinstance(model, MnerModel):
            out: Any = model(MnerBatch(words, evidence), mode="always")[0]
        else:
            out = model(MreBatch(words, [(0, 2)], [(4, 7)], evidence), mode="always")[0]
    assert out.scores.gamma.all()
    assert out.scores.selected == run.selected  # the same images for every unit, by index
    torch.testing.assert_close(served[0], out.probs, atol=1e-5, rtol=0)
    text_only = torch.softmax(out.scores.text_logits, dim=-1)
    assert (out.probs - text_only).abs().amax() > 1e-3  # vision really moved the scores

    result = run.result
    if isinstance(result, MnerResult):
        assert [tuple(s) for s in out.spans.tolist()] == run.text.units
        found = out.entities[0]
        assert found  # something to compare
        assert [(e.token_start, e.token_end, e.type, e.activated, e.images) for e in result.entities] == [
            (d.start, d.end, model.cfg.labels[d.label - 1], True, out.scores.selected[d.unit]) for d in found
        ]
        assert [e.score for e in result.entities] == pytest.approx([d.score for d in found], abs=1e-5)
    else:
        assert isinstance(result, MreResult)
        probs = out.probs[0]
        order = torch.argsort(probs, descending=True)[:5].tolist()
        assert result.relation == model.cfg.labels[order[0]] and result.activated
        assert result.images == out.scores.selected[0]
        assert [r for r, _ in result.top] == [model.cfg.labels[i] for i in order]
        assert [s for _, s in result.top] == pytest.approx([float(probs[i]) for i in order], abs=1e-5)


# --- random tweets through the real untrained pipeline -------------------------------------------------
FRAGMENTS = [
    "Obama", "NASA", "paris", "iPhone", "Kevin", "Durant", "2017", "don't", "well-known", "naïve", "😀",
    "👨‍👩‍👧", "🇫🇷🇩🇪", "🏳️‍🌈", "👍🏽", "@bob_99", "#NBA2017", "http://t.co/AbC?x=1", "www.example.com/a",
    ".", "!!", "…", "“quoted”", "(", "-", "مرحبا", "بالعالم", "שלום", "e\u0301te\u0301", "\u0301", "\u200d",
    "\u200b", "日本語", "Ünïcödé", "RT", ":)", "&amp;", "x" * 40,
]  # fmt: skip
SEPARATORS = [" ", "  ", "\n", "\u00a0", ""]
tweets = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)), max_size=30).map(
    lambda parts: "".join(f + s for f, s in parts)
)


@pytest.fixture(scope="module")
def untrained(encoder: TextEncoder) -> TorchPipeline:
    return untrained_pipeline("mner", encoder=encoder)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=tweets)
def test_entities_never_overlap_and_offsets_slice_the_text(untrained: TorchPipeline, text: str) -> None:
    result, _ = staged(untrained, "never", [], text=text)
    assert isinstance(result, MnerResult)
    words = untrained.encode_text(text=text).words
    previous_end = -1
    for e in result.entities:
        assert 0 <= e.token_start < e.token_end <= len(words)
        assert e.token_end - e.token_start <= untrained.model.cfg.max_span_width
        assert (e.start, e.end) == (words[e.token_start].start, words[e.token_end - 1].end)
        assert text[e.start : e.end] == e.text and e.text == e.text.strip()
        assert e.start >= previous_end and e.token_start >= 0  # sorted, disjoint
        previous_end = e.end
        assert e.type in untrained.labels and 0 < e.score <= 1


def test_the_untrained_pipeline_finds_entities_to_check(untrained: TorchPipeline) -> None:
    # guards the property test above against passing vacuously on an always-empty answer
    result, _ = staged(untrained, "never", [], text=TWEET)
    assert isinstance(result, MnerResult) and len(result.entities) >= 2
    assert untrained.trained is False and untrained.name == "saver-mner-untrained"
