"""Tweet-aware word tokenisation that keeps character offsets, and the word-shape vocabulary.

The text encoder is uncased, so the casing signal that matters for names (``Obama`` vs ``obama``)
comes back through a small shape embedding per word.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# `\w` excludes combining marks, so decomposed accents ("Ame\u0301lie") would split a word: allow them
# after a word character.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = rf"\w[\w{_MARKS}]*"
# Order matters: URLs before mentions/hashtags before words, so `http://t.co/x` is one token.
_TOKEN_RE = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)\S+)
  | (?P<mention>@{_WORD})
  | (?P<hashtag>\#{_WORD})
  | (?P<word>{_WORD}(?:['’\-]{_WORD})*)
  | (?P<other>\S)
    """,
    re.VERBOSE | re.UNICODE,
)

SHAPES = (
    "pad", "Xx", "XX", "xx", "x", "X", "Xx_mixed", "digit", "alnum",
    "mention", "hashtag", "url", "punct", "emoji", "other",
)  # fmt: skip
SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: int  # character offset in the original text
    end: int  # exclusive


def tokenize_words(text: str) -> list[Word]:
    """Split a post into words; ``text[w.start:w.end] == w.text`` holds for every word."""
    return [Word(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def words_from_tokens(tokens: list[str]) -> tuple[str, list[Word]]:
    """Join pre-tokenised words with single spaces, keeping offsets (the benchmark formats)."""
    words: list[Word] = []
    pos = 0
    for tok in tokens:
        words.append(Word(tok, pos, pos + len(tok)))
        pos += len(tok) + 1
    return " ".join(tokens), words


def word_shape(token: str) -> int:
    """Index into ``SHAPES`` for a word."""
    if not token:
        return SHAPE_INDEX["pad"]
    if token.startswith(("http://", "https://", "www.")):
        return SHAPE_INDEX["url"]
    if token.startswith("@") and len(token) > 1:
        return SHAPE_INDEX["mention"]
    if token.startswith("#") and len(token) > 1:
        return SHAPE_INDEX["hashtag"]
    if token.isdigit():
        return SHAPE_INDEX["digit"]
    letters = [c for c in token if c.isalpha()]
    if not letters:
        if all(unicodedata.category(c).startswith("P") for c in token):
            return SHAPE_INDEX["punct"]
        if any(unicodedata.category(c) == "So" for c in token):
            return SHAPE_INDEX["emoji"]
        return SHAPE_INDEX["other"]
    if any(c.isdigit() for c in token):
        return SHAPE_INDEX["alnum"]
    if len(letters) == 1:
        return SHAPE_INDEX["X"] if letters[0].isupper() else SHAPE_INDEX["x"]
    if all(c.isupper() for c in letters):
        return SHAPE_INDEX["XX"]
    if all(c.islower() for c in letters):
        return SHAPE_INDEX["xx"]
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return SHAPE_INDEX["Xx"]
    return SHAPE_INDEX["Xx_mixed"]
