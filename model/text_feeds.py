"""From pre-split words to the text graph's inputs, and from its padded outputs back to each post's units,
in numpy: the glue on both sides of the exported text graph (model/onnx_export.py ``TextGraph``).

``TextEncoder.prepare`` (torch) and the torch-free ONNX pipeline both call ``word_pieces``, so the
word -> first-subword map exists once. The span slots are ``model.spans.span_grid``'s, pinned to it by a
test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model.pipeline import Pair
from model.tokenize import word_shape


class Encoding(Protocol):
    """What a ``tokenizers.Encoding`` offers (HF fast tokenizers hand the same objects out)."""

    ids: list[int]
    attention_mask: list[int]
    word_ids: list[int | None]


@dataclass
class WordPieces:
    """Subword inputs for a batch of pre-split posts."""

    input_ids: np.ndarray  # (B, S) int64
    attention_mask: np.ndarray  # (B, S) int64
    first_subword: np.ndarray  # (B, N) subword index of each word's first piece (0 = [CLS] if it has none)
    shapes: np.ndarray  # (B, N) word-shape ids, 0 = padding
    word_mask: np.ndarray  # (B, N) bool


def word_pieces(encodings: Sequence[Any], batch_words: list[list[str]]) -> WordPieces:
    """Every word maps to its first subword (truncated words to the last kept one). ``encodings`` are the
    padded per-post encodings of ``batch_words`` (``is_split_into_words``, empty posts as ``[""]``)."""
    n_words = max((len(w) for w in batch_words), default=0)
    first = np.zeros((len(batch_words), max(n_words, 1)), dtype=np.int64)
    shapes = np.zeros_like(first)
    mask = np.zeros(first.shape, dtype=bool)
    for b, words in enumerate(batch_words):
        seen: dict[int, int] = {}
        last_kept = 0
        for pos, wid in enumerate(encodings[b].word_ids):
            if wid is not None:
                seen.setdefault(wid, pos)
                last_kept = pos
        max_seen = max(seen, default=-1)
        for i, word in enumerate(words):
            # no piece at all: truncated away -> last kept piece; empty/invisible word -> [CLS]
            first[b, i] = seen.get(i, last_kept if i > max_seen else 0)
            shapes[b, i] = word_shape(word)
            mask[b, i] = True
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1)
    att = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(encodings), -1)
    return WordPieces(ids, att, first, shapes, mask)


def pad_words(a: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad the word axis (index 0 = [CLS], shape 0 = padding); padded words are in no valid span."""
    return a if a.shape[1] >= n else np.pad(a, ((0, 0), (0, n - a.shape[1])))


def span_slots(lengths: np.ndarray, n_words: int, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """``span_grid``: slots ``i * W + (w - 1)`` for every start i and width w -> (spans (U, 2), valid (B, U))."""
    starts = np.repeat(np.arange(n_words), max_width)
    widths = np.tile(np.arange(1, max_width + 1), n_words)
    spans = np.stack([starts, starts + widths], axis=-1).astype(np.int64)
    return spans, spans[:, 1][None, :] <= np.asarray(lengths)[:, None]


@dataclass
class GraphUnits:
    """One post's units as the text graph gives them (MNER: its valid spans; MRE: its one pair)."""

    units: np.ndarray  # (U, d)
    gate: np.ndarray  # (U,) gate probabilities
    text_logits: np.ndarray  # (U, C)
    spans: np.ndarray  # (U, 2) MNER; (1, 2, 2) MRE head and tail


def graph_feeds(
    pieces: WordPieces, task: str, max_width: int, pairs: list[Pair] | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The text graph's inputs for a batch of non-empty posts, and its ``spans`` input (kept to unpack)."""
    n = max(pieces.first_subword.shape[1], max_width)  # the graph's span max-pool needs N >= W
    word_mask = pad_words(pieces.word_mask, n)
    if task == "mner":
        if pairs is not None:
            raise ValueError("MNER takes no head/tail pairs")
        grid, valid = span_slots(word_mask.sum(1), n, max_width)
        # only the slots that fit the batch's longest post: the rest would be computed and thrown away
        grid = grid[valid.any(0)]
        spans = np.ascontiguousarray(np.broadcast_to(grid, (word_mask.shape[0], *grid.shape)))
    else:
        if pairs is None:
            raise ValueError("MRE needs head and tail spans")
        spans = np.array([[h, t] for h, t in pairs], dtype=np.int64).reshape(-1, 2, 2)
    feeds = {
        "input_ids": pieces.input_ids,
        "attention_mask": pieces.attention_mask,
        "first_subword": pad_words(pieces.first_subword, n),
        "shapes": pad_words(pieces.shapes, n),
        "spans": spans,
    }
    return feeds, spans


def graph_units(
    task: str, outputs: Sequence[np.ndarray], spans: np.ndarray, word_mask: np.ndarray
) -> list[GraphUnits]:
    """The graph's padded outputs -> each post's units (MNER: the spans inside the post)."""
    units, gate, logits = (np.asarray(o) for o in outputs)
    if task != "mner":
        return [
            GraphUnits(units[b : b + 1], gate[b : b + 1], logits[b : b + 1], spans[b : b + 1])
            for b in range(len(units))
        ]
    lengths = word_mask.sum(1)
    posts = []
    for b in range(units.shape[0]):
        keep = spans[b, :, 1] <= lengths[b]
        posts.append(GraphUnits(units[b, keep], gate[b, keep], logits[b, keep], spans[b, keep]))
    return posts
