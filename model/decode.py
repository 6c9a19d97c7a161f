"""Decoding: the best set of non-overlapping spans, with word and character offsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.tokenize import Word


@dataclass(frozen=True)
class DecodedSpan:
    start: int  # word offsets, end exclusive
    end: int
    label: int  # class index (0 = NONE is never returned)
    score: float
    unit: int  # index of the unit that produced it


def decode_spans(spans: np.ndarray, probs: np.ndarray, none_index: int = 0) -> list[DecodedSpan]:
    """spans (U, 2), probs (U, C) -> non-overlapping spans, greedily by score, sorted by position.

    Greedy by confidence is what span-based NER decoders do in practice; it never returns overlaps.
    """
    labels = probs.argmax(-1)
    scores = probs.max(-1)
    candidates = [u for u in range(len(spans)) if labels[u] != none_index]
    candidates.sort(key=lambda u: (-scores[u], spans[u][0], spans[u][1]))
    taken = np.zeros(int(spans[:, 1].max()) + 1 if len(spans) else 0, dtype=bool)
    out: list[DecodedSpan] = []
    for u in candidates:
        s, e = int(spans[u][0]), int(spans[u][1])
        if not taken[s:e].any():
            taken[s:e] = True
            out.append(DecodedSpan(s, e, int(labels[u]), float(scores[u]), u))
    return sorted(out, key=lambda d: d.start)


def char_offsets(words: list[Word], start: int, end: int) -> tuple[int, int]:
    """Word span (end exclusive) -> character span in the original text."""
    return words[start].start, words[end - 1].end
