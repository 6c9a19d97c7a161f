"""The per-request glue both serving backends share, in numpy: a post's words, which selected images a
unit really used, label distributions from final scores, and the answer a task gives from them.

It holds no model logic (decisions, selection, pooling and scoring are the model's, and ONNX graphs are
compiled from them); it exists once, here, so the torch and the torch-free ONNX pipeline cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from model.decode import char_offsets, decode_spans
from model.pipeline import MnerEntity, MnerResult, MreResult, Pair, TextRequest, TextResult
from model.tokenize import Word, tokenize_words, words_from_tokens


def request_words(request: TextRequest) -> tuple[str, list[Word]]:
    if request.tokens is not None:
        return words_from_tokens(request.tokens)
    text = request.text or ""
    return text, tokenize_words(text)


def request_pairs(requests: Sequence[TextRequest], posts: list[tuple[str, list[Word]]]) -> list[Pair] | None:
    """MRE: every request's (head, tail) word spans; MNER (no request has any): None."""
    if not any(r.head is not None or r.tail is not None for r in requests):
        return None
    pairs: list[Pair] = []
    for r in requests:
        if r.head is None or r.tail is None:
            raise ValueError("MRE needs head and tail spans")
        pairs.append((r.head, r.tail))
    if not all(words for _, words in posts):
        raise ValueError("an MRE post needs words for its head and tail spans")
    return pairs


def evidence_text(tags: list[str]) -> str:
    """How backbone tags (and, in training, pseudo-tags) are phrased for the evidence-text channel."""
    return "a photo of " + ", ".join(tags) if tags else "a photo"


def top_tags(
    tag_logits: np.ndarray, vocabulary: Sequence[str], k: int, min_prob: float = 0.0
) -> list[list[str]]:
    """Top-k tag names per image, most probable first (lower index on ties), dropping those below
    ``min_prob``."""
    k = max(0, min(k, len(vocabulary)))
    logits = np.asarray(tag_logits, dtype=np.float64)
    if logits.shape[0] == 0 or k == 0:
        return [[] for _ in range(logits.shape[0])]
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[vocabulary[int(i)] for i in row if probs[r, i] >= min_prob] for r, row in enumerate(order)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """p(y|u) = softmax(-E) over the last axis, computed in float64 and returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def used_images(
    activated: np.ndarray, selected: list[list[int]], details: Mapping[int, Any]
) -> list[list[int]]:
    """Per unit, the images its score may read: its selection if it is activated and every selected image
    was detail-encoded (a late or failed image makes the unit fall back to text only)."""
    return [
        sel if activated[u] and sel and all(i in details for i in sel) else []
        for u, sel in enumerate(selected)
    ]


def mner_answer(
    post: TextResult, probs: np.ndarray, activated: np.ndarray, used: list[list[int]], labels: list[str]
) -> MnerResult:
    """A served post's entities with character offsets and per-entity vision facts."""
    if not post.units:
        return MnerResult([])
    entities = []
    for d in decode_spans(np.asarray(post.units, dtype=np.int64), np.asarray(probs, dtype=np.float32)):
        start, end = char_offsets(post.words, d.start, d.end)
        entities.append(
            MnerEntity(
                text=post.text[start:end],
                type=labels[d.label - 1],
                score=round(d.score, 6),
                start=start,
                end=end,
                token_start=d.start,
                token_end=d.end,
                gate=float(post.gate[d.unit]),
                activated=bool(activated[d.unit]),
                images=used[d.unit],
            )
        )
    return MnerResult(entities)


def mre_answer(
    post: TextResult, probs: np.ndarray, activated: np.ndarray, used: list[list[int]], labels: list[str]
) -> MreResult:
    """A served pair's relation, its top five alternatives and the pair's vision facts."""
    p = np.asarray(probs, dtype=np.float32)[0]
    order = np.argsort(-p, kind="stable")[:5]
    top = [(labels[i], float(p[i])) for i in order]
    return MreResult(top[0][0], top[0][1], top, float(post.gate[0]), bool(activated[0]), used[0])


Answer = Callable[[TextResult, np.ndarray, np.ndarray, list[list[int]], list[str]], MnerResult | MreResult]
ANSWERS: dict[str, Answer] = {"mner": mner_answer, "mre": mre_answer}
