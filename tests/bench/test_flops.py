"""The FLOP table: stage costs measured by torch's counter, and a request's FLOPs from its counts."""

from __future__ import annotations

import pytest
from PIL import Image

from bench.flops import FlopTable, count_flops, measure_table, measure_texts
from tests.bench.toy import (
    DETAIL_PER_IMAGE,
    FUSE_PER_UNIT_IMAGE,
    SCREEN_PER_IMAGE,
    SELECT_K,
    TEXT_PER_WORD,
    ToyPipeline,
)


@pytest.fixture
def images() -> list[Image.Image]:
    return [Image.new("RGB", (32, 24), (i * 60, 0, 0)) for i in range(4)]


def test_count_flops_matches_a_known_matmul() -> None:
    import torch

    flops, out = count_flops(torch.matmul, torch.ones(3, 5), torch.ones(5, 7))
    assert flops == 2 * 3 * 5 * 7
    assert out.shape == (3, 7)


def test_measured_table_recovers_the_stage_costs(images: list[Image.Image]) -> None:
    table = measure_table(ToyPipeline(), images, "toy 1")
    assert table.screen_per_image == pytest.approx(SCREEN_PER_IMAGE)
    assert table.detail_per_image == pytest.approx(DETAIL_PER_IMAGE)
    assert table.vision_per_unit == {
        n: pytest.approx(FUSE_PER_UNIT_IMAGE * min(SELECT_K, n)) for n in (1, 2, 3, 4)
    }


def test_texts_are_counted_exactly_up_to_the_cap_and_fitted_beyond() -> None:
    pipe = ToyPipeline()
    table = FlopTable("toy", 0.0, 0.0, {})
    texts = ["one two", "a b c d e", "x y y", "one two", "w " * 9]
    measure_texts(pipe, table, texts, max_texts=3)
    assert set(table.text) == {"one two", "a b c d e", "x y y"}  # distinct, first come
    assert table.text_flops("a b c d e") == (5 * TEXT_PER_WORD, True)
    flops, exact = table.text_flops("w " * 9)
    assert not exact
    assert flops == pytest.approx(9 * TEXT_PER_WORD)  # cost is linear in words here, so the fit is exact


def test_request_flops_add_up_the_stages_the_response_reports() -> None:
    table = FlopTable("t", screen_per_image=10.0, detail_per_image=100.0, vision_per_unit={1: 1.0, 2: 3.0})
    table.text["hello world"] = 5.0
    assert table.request_flops("hello world", 0, 0, 0) == (5.0, True)  # text only
    assert table.request_flops("hello world", 4, 3, 2) == (5.0 + 30.0 + 200.0 + 4 * 3.0, True)
    # fetched but nothing encoded (e.g. every image failed to decode): no fusion of evidence
    assert table.request_flops("hello world", 4, 1, 0) == (15.0, True)
    # more images than measured: the per-unit cost of the largest measured count
    assert table.request_flops("hello world", 1, 5, 1) == (5.0 + 50.0 + 100.0 + 3.0, True)
    with pytest.raises(KeyError):
        table.text_flops("never measured")  # no fit without measured texts
