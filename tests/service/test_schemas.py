"""Request schemas: limits, exactly one of text/tokens, URL checks, strict options, MRE arguments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.schemas import (
    MAX_IMAGE_URLS,
    MAX_TEXT_CHARS,
    MAX_URL_CHARS,
    EntityRef,
    MnerRequest,
    MreRequest,
    Options,
)


def _error_locs(exc: ValidationError) -> list[tuple[object, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_text_at_cap_passes_and_one_past_fails() -> None:
    assert MnerRequest(text="x" * MAX_TEXT_CHARS).text is not None
    with pytest.raises(ValidationError) as err:
        MnerRequest(text="x" * (MAX_TEXT_CHARS + 1))
    assert ("text",) in _error_locs(err.value)


@pytest.mark.parametrize("kwargs", [{}, {"text": "a", "tokens": ["a"]}, {"text": "   "}, {"tokens": []}])
def test_exactly_one_non_blank_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MnerRequest.model_validate(kwargs)


def test_tokens_must_be_single_words_within_the_char_cap() -> None:
    assert MnerRequest(tokens=["New", "York"]).tokens == ["New", "York"]
    with pytest.raises(ValidationError):
        MnerRequest(tokens=["New York"])
    with pytest.raises(ValidationError):
        MnerRequest(tokens=["x" * 199] * 21)  # 21 * 200 - 1 characters joined


def test_image_url_count_and_length_caps() -> None:
    ok = [f"https://example.org/{i}.jpg" for i in range(MAX_IMAGE_URLS)]
    assert len(MnerRequest(text="a", image_urls=ok).image_urls) == MAX_IMAGE_URLS
    with pytest.raises(ValidationError):
        MnerRequest(text="a", image_urls=[*ok, "https://example.org/x.jpg"])
    long_url = "https://example.org/" + "a" * MAX_URL_CHARS
    with pytest.raises(ValidationError):
        MnerRequest(text="a", image_urls=[long_url])


@pytest.mark.parametrize(
    "url",
    [
        "example.org/a.jpg",
        "file:///etc/passwd",
        "gopher://example.org/",
        "http://",
        "http://user:pw@example.org/a.jpg",
        "http://example.org:99999/a.jpg",
        "http://exa mple.org/a.jpg",
        "http://example.org/a\n.jpg",
    ],
)
def test_malformed_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as err:
        MnerRequest(text="a", image_urls=[url])
    assert ("image_urls", 0) in _error_locs(err.value)


def test_literal_private_address_is_left_to_the_fetcher() -> None:
    # Well-formed: refused at fetch time (a fallback, not a 422), so the schema accepts it.
    assert MnerRequest(text="a", image_urls=["http://10.0.0.1/a.jpg"]).image_urls


def test_options_are_strict_and_bounded() -> None:
    assert Options().vision == "auto" and Options().vision_budget_ms is None
    for bad in ({"vision": "maybe"}, {"vision_budget_ms": -1}, {"vision_budget_ms": 10**9}, {"x": 1}):
        with pytest.raises(ValidationError):
            Options.model_validate(bad)


@pytest.mark.parametrize(
    "ref",
    [{"start": 3, "end": 3}, {"start": 4, "end": 2}, {"start": 1}, {"start": 0, "end": 2, "text": "ab"},
     {}, {"text": " "}, {"start": -1, "end": 2}, {"begin": 0, "end": 2}],
)  # fmt: skip
def test_invalid_entity_refs(ref: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EntityRef.model_validate(ref)


def test_mre_request_takes_span_or_text_arguments() -> None:
    req = MreRequest.model_validate(
        {"text": "Kevin met Lisa", "head": {"start": 0, "end": 5}, "tail": {"text": "Lisa"}}
    )
    assert (req.head.start, req.head.end, req.tail.text) == (0, 5, "Lisa")


def test_openapi_examples_validate() -> None:
    for model in (MnerRequest, MreRequest):
        for example in model.model_json_schema()["examples"]:
            model.model_validate(example)
