"""Span decoding: never overlapping, best spans first, character offsets that slice the text."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.decode import char_offsets, decode_spans
from model.spans import enumerate_spans
from model.tokenize import tokenize_words


@st.composite
def scored_spans(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 12))
    w = draw(st.integers(1, 5))
    spans = enumerate_spans(n, w)
    c = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 5.0])), size=(len(spans), c))
    if draw(st.booleans()) and len(spans):  # exact ties in score
        logits[rng.integers(len(spans))] = logits[0]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2), probs


@settings(max_examples=300, deadline=None)
@given(scored_spans())
def test_decoded_spans_never_overlap_and_are_maximal(case: tuple[np.ndarray, np.ndarray]) -> None:
    spans, probs = case
    out = decode_spans(spans, probs)
    covered: set[int] = set()
    for d in out:
        assert d.label != 0
        assert (d.start, d.end) == tuple(spans[d.unit])
        assert d.label == probs[d.unit].argmax() and d.score == probs[d.unit].max()
        words = set(range(d.start, d.end))
        assert not covered & words
        covered |= words
    assert [d.start for d in out] == sorted(d.start for d in out)
    # greedy maximality: every entity-labelled span left out overlaps a kept span at least as confident
    kept = {d.unit for d in out}
    for u in range(len(spans)):
        if probs[u].argmax() != 0 and u not in kept:
            s, e = spans[u]
            assert any(d.start < e and s < d.end and d.score >= probs[u].max() for d in out)


def test_decode_prefers_the_confident_span() -> None:
    spans = np.array([[0, 1], [0, 2], [1, 2], [2, 3]])
    probs = np.array([
        [0.2, 0.8, 0.0], [0.1, 0.0, 0.9], [0.3, 0.7, 0.0], [0.9, 0.1, 0.0],
    ])  # fmt: skip
    out = decode_spans(spans, probs)
    assert [(d.start, d.end, d.label) for d in out] == [(0, 2, 2)]


def test_decode_of_nothing() -> None:
    assert decode_spans(np.zeros((0, 2), dtype=np.int64), np.zeros((0, 5))) == []
    assert decode_spans(np.array([[0, 1]]), np.array([[0.9, 0.1]])) == []


def test_char_offsets_cover_the_words() -> None:
    text = "hi  @bob 👨‍👩‍👧 Paris!"
    words = tokenize_words(text)
    start, end = char_offsets(words, 1, 4)
    assert text[start:end].startswith("@bob") and text[start:end].endswith(words[3].text)
