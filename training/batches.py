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


def rank_batches(  # type: ignore[type-arg]
    items: Sequence, size: int, shuffle: bool, seed: int, rank: int, world_size: int
) -> Iterator[list]:
    """This rank's share of each global batch of ``batched``: every rank forms the same length-bucketed
    batches of ``size`` posts and takes every ``world_size``-th post of each, so ``size`` is the global
    batch whatever the number of processes. (torch's DistributedSampler shards the posts before batching
    and would lose the length bucketing.) A batch with fewer posts than ranks is dropped: every rank must
    take part in every step."""
    for chunk in batched(items, size, shuffle, seed):
        if len(chunk) >= world_size:
            yield chunk[rank::world_size]


def n_rank_batches(n_items: int, size: int, world_size: int) -> int:
    """How many batches ``rank_batches`` yields per epoch (the same on every rank)."""
    full, rest = divmod(n_items, size)
    return full + (1 if rest >= world_size else 0)
