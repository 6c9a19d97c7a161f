"""The knowledge index (SPEC §8): passages from openly licensed corpora, searchable with BM25.

Import rules (SPEC §1): this package imports neither service/, training/ nor fastapi, so the service,
training and benchmarks can all use it.
"""

from knowledge.build import build_index
from knowledge.corpus import Passage, read_corpus
from knowledge.errors import (
    CorpusFormatError,
    CorpusSourceMissingError,
    IndexCorruptError,
    IndexMissingError,
    KnowledgeError,
)
from knowledge.handle import IndexHandle, IndexStatus
from knowledge.index import Hit, KnowledgeIndex
from knowledge.manifest import Bm25Settings, Manifest, SourceInfo

__all__ = [
    "Bm25Settings",
    "CorpusFormatError",
    "CorpusSourceMissingError",
    "Hit",
    "IndexCorruptError",
    "IndexHandle",
    "IndexMissingError",
    "IndexStatus",
    "KnowledgeError",
    "KnowledgeIndex",
    "Manifest",
    "Passage",
    "SourceInfo",
    "build_index",
    "read_corpus",
]
