"""BIO tags <-> entity spans, with the conlleval / seqeval (default mode) chunking convention.

The one place the convention lives: readers, metrics and training all import it from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# (start, end_exclusive, type), zero-based word offsets.
Span = tuple[int, int, str]

OUTSIDE = "O"


def split_tag(tag: str) -> tuple[str, str]:
    """Split a BIO tag into (prefix, type); `O` gives ("O", "")."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, entity_type = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not entity_type:
        raise ValueError(f"not a BIO tag: {tag!r}")
    return prefix, entity_type


def bio_to_spans(tags: Sequence[str]) -> list[Span]:
    """Entity spans of a BIO tag sequence.

    conlleval convention, which seqeval follows in its default mode: `B-X` always starts an entity; an
    `I-X` that does not continue an entity of type X (after `O`, at the start, or after `B-Y`/`I-Y`)
    starts a new one instead of being dropped. Twitter-2015 has a few hundred such tags, so the choice
    changes reported F1.
    """
    spans: list[Span] = []
    start = -1
    current = ""
    for i, tag in enumerate(tags):
        prefix, entity_type = split_tag(tag)
        continues = prefix == "I" and entity_type == current
        if continues:
            continue
        if current:
            spans.append((start, i, current))
        start, current = (i, entity_type) if prefix != OUTSIDE else (-1, "")
    if current:
        spans.append((start, len(tags), current))
    return spans


def spans_to_bio(length: int, spans: Iterable[tuple[int, int, str]]) -> list[str]:
    """BIO tags of `length` words from non-overlapping spans; raises on overlap or out-of-range spans."""
    tags = [OUTSIDE] * length
    for start, end, entity_type in sorted(spans):
        if not 0 <= start < end <= length:
            raise ValueError(f"span ({start}, {end}) outside 0..{length} or empty")
        if not entity_type or entity_type == OUTSIDE:
            raise ValueError(f"bad entity type {entity_type!r}")
        if any(tag != OUTSIDE for tag in tags[start:end]):
            raise ValueError(f"span ({start}, {end}, {entity_type}) overlaps another entity")
        tags[start] = f"B-{entity_type}"
        for i in range(start + 1, end):
            tags[i] = f"I-{entity_type}"
    return tags
