"""MRE arguments to word spans: character offsets, token indices, surface text, and the 422 cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.tokenize import tokenize_words
from service.errors import InvalidInput
from service.schemas import EntityRef
from service.spans import char_span_to_words, find_words, resolve_pair

TEXT = "RT @nba: Kevin Durant joins the Golden State Warriors!"


def ref(**kwargs: object) -> EntityRef:
    return EntityRef.model_validate(kwargs)


def test_char_offsets_expand_to_the_words_they_touch() -> None:
    words = tokenize_words(TEXT)
    start = TEXT.index("Kevin")
    assert char_span_to_words(words, start, start + len("Kevin Durant")) == (3, 5)
    assert char_span_to_words(words, start + 1, start + 3) == (3, 4)  # inside one word
    assert char_span_to_words(words, start - 1, start) is None  # only the space before it


def test_surface_text_matches_word_aligned_first_occurrence() -> None:
    text = "Golden Goldens Golden State"
    words = tokenize_words(text)
    assert find_words(text, words, "Golden State") == (2, 4)
    assert find_words(text, words, "Golden") == (0, 1)
    assert find_words(text, words, "olden") is None


def test_resolve_pair_by_text_offsets_and_tokens() -> None:
    head = ref(text="Kevin Durant")
    tail = ref(start=TEXT.index("Golden"), end=TEXT.index("!"))
    assert resolve_pair(TEXT, None, head, tail) == ((3, 5), (7, 10))
    tokens = ["Kevin", "Durant", "joins", "Warriors"]
    assert resolve_pair(None, tokens, ref(start=0, end=2), ref(start=3, end=4)) == ((0, 2), (3, 4))
    assert resolve_pair(None, tokens, ref(text="Durant"), ref(text="Warriors")) == ((1, 2), (3, 4))


@pytest.mark.parametrize(
    ("head", "tail", "field"),
    [
        ({"start": 0, "end": 999}, {"text": "Warriors"}, "head.end"),
        ({"text": "LeBron"}, {"text": "Warriors"}, "head.text"),
        ({"text": "Kevin"}, {"text": "Kevin"}, "tail"),
        ({"text": "Kevin Durant"}, {"text": "Durant joins"}, "tail"),
    ],
)
def test_bad_pairs_name_the_field(head: dict[str, object], tail: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_pair(TEXT, None, ref(**head), ref(**tail))
    assert err.value.field == field


def test_token_index_past_the_end_and_whitespace_only_span() -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_pair(None, ["a", "b"], ref(start=0, end=1), ref(start=1, end=3))
    assert err.value.field == "tail.end"
    with pytest.raises(InvalidInput) as err:
        resolve_pair("a  b", None, ref(start=1, end=3), ref(text="b"))
    assert err.value.field == "head"


@given(st.text(alphabet="ab .!", min_size=1, max_size=30), st.integers(0, 30), st.integers(1, 30))
def test_char_span_covers_exactly_the_touched_words(text: str, start: int, length: int) -> None:
    words = tokenize_words(text)
    end = min(start + length, len(text))
    span = char_span_to_words(words, start, end)
    touched = [i for i, w in enumerate(words) if set(range(w.start, w.end)) & set(range(start, end))]
    if not touched:
        assert span is None
    else:
        assert span == (touched[0], touched[-1] + 1)
