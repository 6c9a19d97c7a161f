"""Tweet tokenisation: exact character offsets, no whitespace inside words, every visible character kept."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from model.tokenize import SHAPES, tokenize_words, word_shape, words_from_tokens

FRAGMENTS = [
    "Obama", "NASA", "paris", "iPhone", "x", "A", "2017", "B2B", "don't", "well-known", "naïve",
    "😀", "👨‍👩‍👧", "🇫🇷", "🏳️‍🌈", "👍🏽", "@bob_99", "#NBA2017", "#", "@", "http://t.co/AbC?x=1",
    "www.example.com/a", "https://x.org", ".", "!!", "…", "“quoted”", "(", "-", "مرحبا", "שלום",
    "e\u0301", "\u0301", "\u200d", "\u200b", "日本語", "Ünïcödé", "RT", ":)", "&amp;",
]  # fmt: skip
SEPARATORS = [" ", "  ", "\n", "\t", "\u00a0", "\u3000", ""]

tweets = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)), max_size=25).map(
    lambda parts: "".join(f + s for f, s in parts)
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(tweets, st.text(max_size=60)))
def test_offsets_slice_the_text_and_words_hold_no_whitespace(text: str) -> None:
    words = tokenize_words(text)
    for w in words:
        assert text[w.start : w.end] == w.text
        assert w.text
        assert not any(c.isspace() for c in w.text)
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))  # ordered, disjoint
    # nothing visible is dropped: what is not in a word is whitespace
    covered: set[int] = set()
    for w in words:
        covered.update(range(w.start, w.end))
    assert all(text[i].isspace() for i in range(len(text)) if i not in covered)


def test_tweet_units_stay_whole() -> None:
    text = "RT @bob_99: see http://t.co/AbC?x=1 #NBA2017 don't miss it!"
    assert [w.text for w in tokenize_words(text)] == [
        "RT", "@bob_99", ":", "see", "http://t.co/AbC?x=1", "#NBA2017", "don't", "miss", "it", "!",
    ]  # fmt: skip


def test_words_from_tokens_keeps_offsets() -> None:
    text, words = words_from_tokens(["Kevin", "Durant", "@", "NBA", "😀"])
    assert text == "Kevin Durant @ NBA 😀"
    assert [text[w.start : w.end] for w in words] == ["Kevin", "Durant", "@", "NBA", "😀"]
    assert words_from_tokens([]) == ("", [])


def test_word_shapes() -> None:
    cases = {
        "Obama": "Xx", "NASA": "XX", "paris": "xx", "a": "x", "A": "X", "iPhone": "Xx_mixed", "2017": "digit",
        "B2B": "alnum", "@bob": "mention", "#nba": "hashtag", "http://t.co/x": "url", "www.x.com": "url",
        "!": "punct", "...": "punct", "😀": "emoji", "": "pad", "@": "punct", "#": "punct", "+": "other",
    }  # fmt: skip
    assert {t: SHAPES[word_shape(t)] for t in cases} == cases
