"""Dev posts carved, before any training, into three parts that are each used for one thing only.

* ``selection``: early stopping, checkpoint choice and the choice of gate target.
* ``calibration``: the gate threshold τ (SPEC §3), and nothing else.
* ``check``: the realised harm among activated units with its interval, and nothing else.

The cut is per dataset (each dev file keeps its share in every part), by a seeded shuffle of whole posts:
units of one post are correlated, so they never straddle two parts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

PARTS = ("selection", "calibration", "check")


class HasId(Protocol):
    id: str

    @property
    def post_key(self) -> str: ...


E = TypeVar("E", bound=HasId)


@dataclass
class SplitSpec:
    selection: float = 0.4  # share of each dev file for early stopping and model choice
    calibration: float = 0.3  # share for the gate threshold
    check: float = 0.3  # share for the realised-harm report
    seed: int = 13

    def __post_init__(self) -> None:
        shares = (self.selection, self.calibration, self.check)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-9:
            raise ValueError(f"split shares must be >= 0 and sum to 1, got {shares}")


def split_posts(examples: Sequence[E], spec: SplitSpec, name: str) -> dict[str, list[E]]:
    """One dataset's examples -> {part: examples in file order}, cut by whole posts (an MRE post carries
    several pairs; they always land in the same part); the same inputs always give the same cut."""
    posts: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        posts.setdefault(ex.post_key, []).append(i)
    keys = list(posts)
    random.Random(f"{spec.seed}:{name}").shuffle(keys)
    n_sel = round(len(keys) * spec.selection)
    n_cal = round(len(keys) * spec.calibration)
    cuts = {
        "selection": keys[:n_sel],
        "calibration": keys[n_sel : n_sel + n_cal],
        "check": keys[n_sel + n_cal :],
    }
    return {part: [examples[i] for i in sorted(i for k in ks for i in posts[k])] for part, ks in cuts.items()}


def split_datasets(datasets: dict[str, Sequence[E]], spec: SplitSpec) -> dict[str, dict[str, list[E]]]:
    """{dataset: posts} -> {dataset: {part: posts}}."""
    return {name: split_posts(posts, spec, name) for name, posts in datasets.items()}


def part(splits: dict[str, dict[str, list[E]]], name: str) -> list[E]:
    """One part, pooled over the datasets."""
    return [e for by_part in splits.values() for e in by_part[name]]


def describe(splits: Mapping[str, Mapping[str, Sequence[HasId]]], spec: SplitSpec) -> dict[str, Any]:
    """What ``calibration.json`` and the model card record: the rule, the counts and a digest of the post
    ids in each part (the ids themselves stay out of the artifacts)."""
    parts: dict[str, Any] = {}
    for dataset, by_part in splits.items():
        parts[dataset] = {
            name: {
                "posts": len({p.post_key for p in examples}),
                "examples": len(examples),
                "ids_sha256": hashlib.sha256("\n".join(sorted(p.id for p in examples)).encode()).hexdigest(),
            }
            for name, examples in by_part.items()
        }
    return {
        "rule": "per dev file, a seeded shuffle of whole posts, cut into selection / calibration / check "
        "before training; early stopping and every model choice read selection only",
        **asdict(spec),
        "parts": parts,
    }
