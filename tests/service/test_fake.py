"""The fake model honours the SaverPipeline contract that the real one implements, and says it is fake."""

from __future__ import annotations

import numpy as np
from PIL import Image

from model.pipeline import BatchTextEncoder, MnerResult, MreResult, SaverPipeline, TextRequest
from model.runner import run_pipeline
from service.engine import model_info
from service.fake import FakePipeline
from tests.service.fakes import InstrumentedFake


def test_is_a_saver_pipeline() -> None:
    assert isinstance(FakePipeline("mner"), SaverPipeline)
    assert isinstance(FakePipeline("mre"), SaverPipeline)
    assert isinstance(FakePipeline("mner"), BatchTextEncoder)


def test_says_it_is_fake() -> None:
    for task in ("mner", "mre"):
        info = model_info(FakePipeline(task))
        assert info.name == f"fake-{task}"
        assert info.trained is False and info.warning is not None


def test_has_no_test_hooks() -> None:
    pipe = FakePipeline("mner")
    for hook in ("calls", "images_seen", "batch_sizes", "block_stage", "release", "entered"):
        assert not hasattr(pipe, hook), hook


def test_text_only_path_equals_fuse_with_nothing_activated() -> None:
    pipe = FakePipeline("mner")
    result = pipe.encode_text(text="Barack Obama visits paris")
    off = np.zeros(len(result.gate), dtype=bool)
    out = pipe.fuse(result, off, [[] for _ in off], {}, {})
    assert isinstance(out, MnerResult)
    assert [(e.text, e.activated, e.images) for e in out.entities] == [("Barack Obama", False, [])]
    assert result.text[out.entities[0].start : out.entities[0].end] == "Barack Obama"


def test_gate_and_selection_are_deterministic_and_bounded() -> None:
    pipe = FakePipeline("mner", select_k=2)
    result = pipe.encode_text(tokens=["Barack", "Obama", "visits", "paris"])
    on = pipe.activation(result, "auto")
    assert on.sum() == 3  # Barack, Obama, Barack Obama
    images = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    screened = pipe.screen(images)
    picks = pipe.select(result, on, screened)
    assert picks == pipe.select(result, on, screened)
    assert all(len(p) == 2 for p, a in zip(picks, on, strict=True) if a)
    assert all(p == [] for p, a in zip(picks, on, strict=True) if not a)


def test_mre_pair_gate_and_vision_raise_the_score() -> None:
    pipe = FakePipeline("mre")
    result = pipe.encode_text(text="Kevin met Lisa", head=(0, 1), tail=(2, 3))
    assert result.gate.shape == (1,)
    on = pipe.activation(result, "auto")
    details = dict(enumerate(pipe.detail([Image.new("RGB", (8, 8))])))
    with_vision = pipe.fuse(result, on, [[0]], details, {})
    without = pipe.fuse(result, np.zeros(1, bool), [[]], {}, {})
    assert isinstance(with_vision, MreResult) and isinstance(without, MreResult)
    assert with_vision.relation == without.relation != "None"
    assert with_vision.score > without.score and with_vision.images == [0]


def test_instrumented_fake_counts_and_answers_like_the_plain_one() -> None:
    plain, counted = FakePipeline("mner"), InstrumentedFake("mner")
    request = TextRequest("Barack Obama visits paris")
    images = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    expected = run_pipeline(plain, request, images, "auto")
    got = run_pipeline(counted, request, images, "auto")
    assert got.result == expected.result and got.selected == expected.selected
    assert counted.calls == dict.fromkeys(
        ("encode_text", "activation", "screen", "select", "detail", "fuse"), 1
    )
    assert counted.images_seen["screen"] == 3 and counted.images_seen["detail"] == len(got.detailed)
    assert counted.encode_text_batch([request, request])[0].units == got.text.units
    assert counted.batch_sizes == [2] and counted.calls["encode_text"] == 1
