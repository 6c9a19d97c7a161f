"""Fuzzing: schemathesis against the OpenAPI schema (no 5xx, responses match the schema), and hypothesis
on the tokenizer and the offset code.

The in-suite run is small and derandomised (the same examples every time). For a long run::

    SAVER_FUZZ_EXAMPLES=2000 SAVER_FUZZ_RANDOM=1 .venv/bin/pytest tests/hardening/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import positive_data_acceptance

from model.decode import char_offsets, decode_spans
from model.tokenize import SHAPES, tokenize_words, word_shape, words_from_tokens
from service.app import create_app
from service.errors import InvalidInput
from service.schemas import MAX_TEXT_CHARS, EntityRef
from service.spans import char_span_to_words, find_words, resolve_pair
from service.vision import FetchResult
from tests.service.apphelpers import app_settings, fakes

EXAMPLES = int(os.environ.get("SAVER_FUZZ_EXAMPLES", "60"))  # per operation
RANDOM = os.environ.get("SAVER_FUZZ_RANDOM", "") not in ("", "0")
_WHITESPACE = re.compile(r"\s")


@dataclass
class _Fetched:
    image: Image.Image | None
    reason: str | None


async def _offline_fetcher(urls: list[str], deadline: float) -> Sequence[FetchResult]:
    """No network in tests: every other URL "arrives" as a small picture, the rest fail."""
    return [
        _Fetched(Image.new("RGB", (8, 8), (i * 40 % 256, 90, 200)), None)
        if i % 2 == 0
        else _Fetched(None, "dns")
        for i, _ in enumerate(urls)
    ]


_APP = create_app(app_settings(allow_loopback=False, warmup=False), fakes(), _offline_fetcher)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_errors_and_matches_its_schema(case: schemathesis.Case) -> None:
    # Every default check (no 5xx, status codes, content types, headers and bodies matching the schema,
    # schema-invalid input refused with a 4xx) except one: the schema cannot express "exactly one of text
    # or tokens" or "head inside the text", so a schema-valid body may rightly get a 422.
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500


# ---- hypothesis on the tokenizer and offsets --------------------------------------------------------------

# Every code point, lone surrogates, controls and unassigned ones included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
# Text that looks like posts: words, mentions, URLs, emoji, combining marks, odd spaces.
POSTS = st.lists(
    st.sampled_from(
        ["Kevin", "durant", "@nba", "#Warriors", "http://t.co/x?y=1", "www.a.b", "👨\u200d👩\u200d👧", "🇺🇸",
         "e\u0301", "\u200b", "\u00a0", " ", "\n", "’s", "don't", "co-op", "-", "!!", "123", "A.B.", "مرحبا",
         "\u202e", "𝐊", "\x00", "\ud800"]
    ),
    max_size=40,
).map("".join)  # fmt: skip


@given(st.one_of(ANY_TEXT, POSTS))
@settings(max_examples=300, deadline=None, derandomize=not RANDOM, database=None)
def test_words_slice_back_out_of_the_text_and_cover_every_non_space(text: str) -> None:
    words = tokenize_words(text)
    for w in words:
        assert text[w.start : w.end] == w.text and w.text
        assert not _WHITESPACE.search(w.text)
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))  # ordered, disjoint
    covered = {i for w in words for i in range(w.start, w.end)}
    assert covered == {i for i, c in enumerate(text) if not _WHITESPACE.match(c)}
    assert all(0 <= word_shape(w.text) < len(SHAPES) for w in words)


@given(
    st.lists(
        st.text(st.characters(codec=None, exclude_categories=("Zs", "Zl", "Zp", "Cc")), min_size=1),
        max_size=30,
    )
)
@settings(max_examples=200, deadline=None, derandomize=not RANDOM, database=None)
def test_pretokenised_words_keep_their_offsets(tokens: list[str]) -> None:
    joined, words = words_from_tokens(tokens)
    assert joined == " ".join(tokens)
    assert [joined[w.start : w.end] for w in words] == tokens


@given(POSTS, st.integers(0, 60), st.integers(1, 60))
@settings(max_examples=300, deadline=None, derandomize=not RANDOM, database=None)
def test_character_spans_map_to_exactly_the_words_they_touch(text: str, start: int, width: int) -> None:
    words = tokenize_words(text)
    end = start + width
    span = char_span_to_words(words, start, end)
    touching = [i for i, w in enumerate(words) if w.start < end and w.end > start]
    if span is None:
        assert touching == []
    else:
        assert list(range(*span)) == touching
        first, last = char_offsets(words, *span)
        assert first < end and last > start


@given(POSTS, st.data())
@settings(max_examples=300, deadline=None, derandomize=not RANDOM, database=None)
def test_surface_search_finds_word_aligned_occurrences(text: str, data: st.DataObject) -> None:
    words = tokenize_words(text)
    if words:
        s = data.draw(st.integers(0, len(words) - 1))
        e = data.draw(st.integers(s + 1, len(words)))
        surface = text[words[s].start : words[e - 1].end]
    else:
        surface = data.draw(st.text(min_size=1, max_size=5))
    found = find_words(text, words, surface)
    if words:
        assert found is not None and found[0] <= s  # the first aligned occurrence, at or before this one
    if found is not None:
        assert text[words[found[0]].start : words[found[1] - 1].end] == surface


REFS = st.one_of(
    st.builds(lambda s, w: EntityRef(start=s, end=s + w), st.integers(0, 80), st.integers(1, 20)),
    st.builds(
        lambda t: EntityRef(text=t),
        st.sampled_from(["Kevin", "durant", "@nba", "e\u0301", "co-op", "xyz", "!!"]),
    ),
)


@given(POSTS.filter(str.strip), REFS, REFS, st.booleans())
@settings(max_examples=300, deadline=None, derandomize=not RANDOM, database=None)
def test_mre_arguments_resolve_inside_the_post_or_fail_as_422(
    text: str, head: EntityRef, tail: EntityRef, as_tokens: bool
) -> None:
    tokens = [w.text for w in tokenize_words(text)] if as_tokens else None
    if as_tokens and not tokens:
        return
    try:
        h, t = resolve_pair(None if as_tokens else text, tokens, head, tail)
    except InvalidInput as exc:
        assert exc.status == 422 and exc.field
        return
    n_words = len(tokens) if tokens else len(tokenize_words(text))
    for s, e in (h, t):
        assert 0 <= s < e <= n_words
    assert h[1] <= t[0] or t[1] <= h[0]  # never overlapping


@given(st.integers(1, 30), st.integers(2, 6), st.data())
@settings(max_examples=200, deadline=None, derandomize=not RANDOM, database=None)
def test_decoded_spans_never_overlap_and_skip_none(n_words: int, n_labels: int, data: st.DataObject) -> None:
    spans = np.array([(i, i + w) for i in range(n_words) for w in range(1, 4) if i + w <= n_words])
    probs = np.array(data.draw(st.lists(st.lists(st.floats(0, 1), min_size=n_labels, max_size=n_labels),
                                        min_size=len(spans), max_size=len(spans))))  # fmt: skip
    decoded = decode_spans(spans, probs)
    taken: set[int] = set()
    for d in decoded:
        assert d.label != 0
        assert not taken & set(range(d.start, d.end))
        taken |= set(range(d.start, d.end))
    assert [d.start for d in decoded] == sorted(d.start for d in decoded)


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(create_app(app_settings(warmup=False), fakes(), _offline_fetcher)) as client:
        yield client


@given(POSTS.filter(lambda t: 0 < len(t) <= MAX_TEXT_CHARS))
@settings(max_examples=60, deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_entity_offsets_slice_the_posted_text(http: TestClient, text: str) -> None:
    # json.dumps escapes lone surrogates as \udXXX, as a client in another language might send them.
    body = json.dumps({"text": text, "image_urls": ["https://example.org/a.jpg"]})
    r = http.post("/mner", content=body, headers={"content-type": "application/json"})
    if not text.strip() or "\ud800" in text:
        assert r.status_code == 422
        return
    assert r.status_code == 200, r.text
    for entity in r.json()["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
