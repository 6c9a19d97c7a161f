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
from model.head import EnergyHead
from model.inference import TorchPipeline
from model.loading import MNRE_RELATIONS, untrained_pipeline
from model.mner import MnerBatch, MnerModel
from model.mre import MreBatch, MreModel
from model.pipeline import MnerResult, MreResult, SaverPipeline
from model.text_encoder import TextEncoder

TWEET = "Kevin Durant joins the Golden State Warriors tonight in #Oakland @warriors 🏀 http://t.co/xyz"


def staged(
    pipe: TorchPipeline, mode: str, images: list[Image.Image], **text: Any
) -> tuple[MnerResult | MreResult, np.ndarray]:
    """Drive the protocol the way the service does: images are only touched if some unit is activated."""
    result = pipe.encode_text(**text)
    activated = pipe.activation(result, mode)  # type: ignore[arg-type]
    if not activated.any() or not images:
        return pipe.fuse(result, activated, [[] for _ in activated], {}, {}), activated
    screened = pipe.screen(images)
    selected = pipe.select(result, activated, screened)
    wanted = sorted({i for sel in selected for i in sel})
    details = dict(zip(wanted, pipe.detail([images[i] for i in wanted]), strict=True))
    return pipe.fuse(result, activated, selected, details, dict(enumerate(screened))), activated


class Counters:
    def __init__(self) -> None:
        self.factory = 0
        self.pool = 0


@pytest.fixture
def counters() -> Counters:
    return Counters()


def build(
    model: MnerModel | MreModel, fake_backbone: Any, counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> TorchPipeline:
    def factory() -> Any:
        counters.factory += 1
        return fake_backbone

    original = model.pool_evidence

    def counting(*args: Any, **kwargs: Any) -> Any:
        counters.pool += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "pool_evidence", counting)
    return TorchPipeline(model, factory, name="test", version="0", trained=False)


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
def mner_pipe(mner_model: MnerModel, fake_backbone: Any, counters: Counters, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    yield build(mner_model, fake_backbone, counters, monkeypatch)
    mner_model.threshold = 0.5


@pytest.fixture
def mre_pipe(mre_model: MreModel, fake_backbone: Any, counters: Counters, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    yield build(mre_model, fake_backbone, counters, monkeypatch)
    mre_model.threshold = 0.5


def test_torch_pipeline_satisfies_the_protocol(mner_pipe: TorchPipeline) -> None:
    assert isinstance(mner_pipe, SaverPipeline)


@pytest.mark.parametrize(("mode", "threshold"), [("never", 0.5), ("auto", math.inf)])
def test_mner_gate_off_touches_no_image_and_is_the_text_answer(
    mner_pipe: TorchPipeline, counters: Counters, fake_backbone: Any, images: Callable[[int], list[Image.Image]],
    mode: str, threshold: float,
) -> None:  # fmt: skip
    mner_pipe.model.threshold = threshold
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
    model.vision_mode = "never"
    try:
        with torch.no_grad():
            out, _ = model(MnerBatch([[w.text for w in text.words]]))
    finally:
        model.vision_mode = "auto"
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
    mre_pipe: TorchPipeline, counters: Counters, fake_backbone: Any, images: Callable[[int], list[Image.Image]],
    mode: str, threshold: float,
) -> None:  # fmt: skip
    mre_pipe.model.threshold = threshold
    result, activated = staged(mre_pipe, mode, images(2), text=TWEET, head=(0, 2), tail=(4, 7))
    assert not activated.any()
    assert counters.factory == 0 and counters.pool == 0 and fake_backbone.calls == {"screen": 0, "detail": 0}
    model = mre_pipe.model
    with torch.no_grad():
        out, _ = model(MreBatch([[w.text for w in result_words(mre_pipe)]], [(0, 2)], [(4, 7)]))
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
