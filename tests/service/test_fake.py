"""The fake model honours the SaverPipeline contract that the real one implements."""

from __future__ import annotations

import numpy as np
from PIL import Image

from model.pipeline import MnerResult, MreResult, SaverPipeline
from service.fake import FakePipeline


def test_is_a_saver_pipeline() -> None:
    assert isinstance(FakePipeline("mner"), SaverPipeline)
    assert isinstance(FakePipeline("mre"), SaverPipeline)


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
    assert pipe.calls["screen"] == 1 and pipe.images_seen["screen"] == 3


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
