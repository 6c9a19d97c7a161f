"""Turn the MRE arguments of a request (character offsets, token indices or surface text) into word spans.

The conversion needs the words before ``encode_text`` runs (that call takes the word spans), so it uses
the same tokeniser as the model, ``model.tokenize``; the engine checks that the pipeline saw the same words.
"""

from __future__ import annotations

from model.tokenize import Word, tokenize_words, words_from_tokens
from service.errors import InvalidInput
from service.schemas import EntityRef

WordSpan = tuple[int, int]  # word offsets, end exclusive


def words_of(text: str | None, tokens: list[str] | None) -> tuple[str, list[Word]]:
    if tokens is not None:
        return words_from_tokens(tokens)
    assert text is not None
    return text, tokenize_words(text)


def char_span_to_words(words: list[Word], start: int, end: int) -> WordSpan | None:
    """The words a half-open character span touches, or None when it covers only whitespace."""
    touched = [i for i, w in enumerate(words) if w.start < end and w.end > start]
    if not touched:
        return None
    return touched[0], touched[-1] + 1


def find_words(text: str, words: list[Word], surface: str) -> WordSpan | None:
    """First occurrence of ``surface`` in ``text`` that starts and ends on word boundaries."""
    starts = {w.start: i for i, w in enumerate(words)}
    ends = {w.end: i for i, w in enumerate(words)}
    pos = text.find(surface)
    while pos != -1:
        end = pos + len(surface)
        if pos in starts and end in ends:
            return starts[pos], ends[end] + 1
        pos = text.find(surface, pos + 1)
    return None


def resolve_argument(field: str, ref: EntityRef, text: str, words: list[Word], by_tokens: bool) -> WordSpan:
    if ref.text is not None:
        span = find_words(text, words, ref.text)
        if span is None:
            message = f"`{field}.text` does not occur word-aligned in the post"
            raise InvalidInput(message, field=f"{field}.text")
        return span
    assert ref.start is not None and ref.end is not None
    limit = len(words) if by_tokens else len(text)
    unit = "tokens" if by_tokens else "characters"
    if ref.end > limit:
        raise InvalidInput(f"`{field}.end` is past the post's {limit} {unit}", field=f"{field}.end")
    if by_tokens:
        return ref.start, ref.end
    span = char_span_to_words(words, ref.start, ref.end)
    if span is None:
        raise InvalidInput(f"`{field}` covers no word", field=field)
    return span


def resolve_pair(
    text: str | None, tokens: list[str] | None, head: EntityRef, tail: EntityRef
) -> tuple[WordSpan, WordSpan]:
    """Word spans of head and tail; 422 naming the field when out of range, empty or overlapping."""
    joined, words = words_of(text, tokens)
    by_tokens = tokens is not None
    h = resolve_argument("head", head, joined, words, by_tokens)
    t = resolve_argument("tail", tail, joined, words, by_tokens)
    if h == t:
        raise InvalidInput("`head` and `tail` are the same span", field="tail")
    if h[0] < t[1] and t[0] < h[1]:
        raise InvalidInput("`head` and `tail` overlap", field="tail")
    return h, t
