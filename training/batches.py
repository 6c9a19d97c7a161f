"""Examples -> model batches and targets."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from model.mner import MnerBatch, MnerTargets
from model.mre import MreBatch, MreTargets
from training.data import MnerExample, MreExample
from training.evidence import EvidenceTable


def mner_batch(
    examples: Sequence[MnerExample], evidence: EvidenceTable | None
) -> tuple[MnerBatch, MnerTargets]:
    ev = [evidence.get(e.id) if evidence else None for e in examples]
    batch = MnerBatch([list(e.tokens) for e in examples], ev)
    targets = MnerTargets([list(e.spans) for e in examples], [dict(e.groundable) for e in examples])
    return batch, targets


def mre_batch(examples: Sequence[MreExample], evidence: EvidenceTable | None) -> tuple[MreBatch, MreTargets]:
    ev = [evidence.get(e.id) if evidence else None for e in examples]
    batch = MreBatch(
        [list(e.tokens) for e in examples], [e.head for e in examples], [e.tail for e in examples], ev
    )
    return batch, MreTargets([e.relation for e in examples])


def batched(items: Sequence, size: int, shuffle: bool, seed: int = 0) -> Iterator[list]:  # type: ignore[type-arg]
    """Length-bucketed batches (similar lengths together keeps padding small on CPU)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].tokens))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    if shuffle:
        random.Random(seed).shuffle(chunks)
    for chunk in chunks:
        yield [items[i] for i in chunk]
