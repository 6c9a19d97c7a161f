"""Loading a task's examples and evidence from the benchmark formats (or the JSONL manifest)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from model.pipeline import MAX_IMAGES_PER_POST
from training.data import (
    ImageStore,
    MnerExample,
    MreExample,
    attach_captions,
    attach_groundability,
    read_captions,
    read_groundability,
    read_manifest,
    read_mnre,
    read_umt,
)

log = logging.getLogger(__name__)

UNIFIED_TYPES = {"OTHER": "MISC"}  # Twitter-2015's OTHER is Twitter-2017's MISC


def load_mner(
    paths: Sequence[str | Path],
    captions: Sequence[str | Path] = (),
    groundability: str | Path | None = None,
) -> list[MnerExample]:
    examples: list[MnerExample] = []
    for path in paths:
        examples += (
            read_manifest(path, task="mner")
            if str(path).endswith(".jsonl")
            else read_umt(path, UNIFIED_TYPES)
        )
    table: dict[str, str] = {}
    for cap in captions:
        table.update(read_captions(cap))
    if table:
        examples = attach_captions(examples, table)
    if groundability:
        examples = attach_groundability(examples, read_groundability(groundability))
    log.info("loaded %d MNER posts from %s", len(examples), ", ".join(map(str, paths)))
    return examples


def load_mre(paths: Sequence[str | Path], captions: Sequence[str | Path] = ()) -> list[MreExample]:
    examples: list[MreExample] = []
    for path in paths:
        examples += read_manifest(path, task="mre") if str(path).endswith(".jsonl") else read_mnre(path)
    table: dict[str, str] = {}
    for cap in captions:
        table.update(read_captions(cap))
    if table:
        examples = attach_captions(examples, table)
    log.info("loaded %d MRE pairs from %s", len(examples), ", ".join(map(str, paths)))
    return examples


def post_image_files(
    examples: Sequence[MnerExample | MreExample], store: ImageStore, max_images: int = MAX_IMAGES_PER_POST
) -> dict[str, list[Path]]:
    """Post id -> the post's image files that the store can find (posts with none are left out)."""
    out: dict[str, list[Path]] = {}
    for ex in examples:
        files = [path for ref in ex.images[:max_images] if (path := store.get(ref)) is not None]
        if files:
            out[ex.id] = files
    return out
