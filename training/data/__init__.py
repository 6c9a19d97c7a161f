"""Dataset records and readers for training and evaluation."""

from training.data.bio import bio_to_spans, spans_to_bio
from training.data.images import ImageStore
from training.data.readers import (
    attach_captions,
    attach_groundability,
    read_captions,
    read_groundability,
    read_manifest,
    read_mnre,
    read_rel2id,
    read_umt,
)
from training.data.records import Example, MnerExample, MreExample

__all__ = [
    "Example",
    "ImageStore",
    "MnerExample",
    "MreExample",
    "attach_captions",
    "attach_groundability",
    "bio_to_spans",
    "read_captions",
    "read_groundability",
    "read_manifest",
    "read_mnre",
    "read_rel2id",
    "read_umt",
    "spans_to_bio",
]
