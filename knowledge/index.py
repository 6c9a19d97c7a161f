"""``KnowledgeIndex``: a loaded index folder that answers BM25 queries.

Loading memory-maps the score matrix, the passage offsets and the passages, so a million-passage index
opens in a fraction of a second and is shared between processes through the page cache. Everything read
after loading is read-only and each query allocates its own score array, so `search` needs no lock and
may be called from any number of threads.

Top-k is taken among the documents that share at least one query token (`top_k`): bm25s' own `retrieve`
runs an argpartition over the whole score array, mostly zeros, and was 20-70x slower for post-length
queries (measured by the previous implementation of this package).
"""

from __future__ import annotations

import json
import logging
import mmap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from knowledge.corpus import Passage, file_sha256, parse_passage
from knowledge.errors import IndexCorruptError, IndexMissingError, KnowledgeError
from knowledge.layout import BM25_DIR, OFFSETS, PASSAGES, VOCAB
from knowledge.manifest import MANIFEST, Manifest, read_manifest
from knowledge.tokenize import TOKENIZER, query_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Hit:
    passage: Passage
    score: float  # BM25 score; comparable within one query only
    rank: int  # 0 = best


class KnowledgeIndex:
    """Open with `KnowledgeIndex.load(folder)`; `manifest.identity` names the exact index."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        retriever: bm25s.BM25,
        vocab: dict[str, int],
        offsets: np.ndarray,
        passages: mmap.mmap,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self._retriever = retriever
        self._vocab = vocab
        self._offsets = offsets
        self._passages = passages

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> KnowledgeIndex:
        """Open an index. `verify` re-hashes every file against the manifest (about 1 s per 500 MB);
        without it sizes and array shapes are still checked, which catches truncation but not bit rot.

        Raises IndexMissingError when there is no index at `folder`, IndexCorruptError when there is one
        that cannot be trusted."""
        folder = Path(folder)
        started = time.perf_counter()
        if not (folder / MANIFEST).is_file():
            what = "no manifest.json in" if folder.is_dir() else "no such folder"
            raise IndexMissingError(f"no knowledge index at {folder} ({what})")
        manifest = read_manifest(folder / MANIFEST)
        if manifest.tokenizer != TOKENIZER:
            raise IndexCorruptError(
                f"{folder}: built with tokenizer {manifest.tokenizer!r}, this code uses {TOKENIZER!r}; rebuild it"
            )
        _check_files(folder, manifest, verify)
        try:
            retriever = bm25s.BM25.load(
                folder / BM25_DIR, mmap=True, load_vocab=False, show_progress=False, verbosity=0
            )
            tokens = json.loads((folder / VOCAB).read_text(encoding="utf-8"))
            offsets = np.load(folder / OFFSETS, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
            raise IndexCorruptError(
                f"{folder}: unreadable index file ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise IndexCorruptError(f"{folder}/{VOCAB}: not a list of tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        _check_shapes(folder, manifest, retriever, vocab, offsets)
        with (folder / PASSAGES).open("rb") as f:
            passages = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if int(offsets[-1]) != len(passages):
            raise IndexCorruptError(
                f"{folder}: passage offsets end at {int(offsets[-1])}, file has {len(passages)}"
            )
        log.info(
            "loaded knowledge index %s (%d passages, identity %s) in %.0f ms",
            folder,
            manifest.passages,
            manifest.short_identity,
            1000 * (time.perf_counter() - started),
        )
        return cls(folder, manifest, retriever, vocab, offsets, passages)

    def __len__(self) -> int:
        return self.manifest.passages

    @property
    def identity(self) -> str:
        return self.manifest.identity

    def passage(self, doc: int) -> Passage:
        start, end = int(self._offsets[doc]), int(self._offsets[doc + 1])
        try:
            return parse_passage(self._passages[start:end], self.folder / PASSAGES, doc + 1)
        except KnowledgeError as exc:  # only reachable in an index loaded with verify=False
            raise IndexCorruptError(str(exc)) from None

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The top `k` passages for `query`, best first; ties go to the earlier passage. A query with no
        indexed word returns []."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        ids = [self._vocab[t] for t in query_tokens(query) if t in self._vocab]
        if not ids:
            return []
        scores = self._retriever.get_scores_from_ids(ids)
        return [Hit(self.passage(int(d)), float(scores[d]), rank) for rank, d in enumerate(top_k(scores, k))]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        return [self.search(q, k) for q in queries]

    def close(self) -> None:
        self._passages.close()


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Documents of the `k` highest non-zero scores, best first, ties to the lower document number.

    Exact, including ties at the k-th place (argpartition alone would pick among those arbitrarily).
    When few documents score, the selection runs over those only; when most do (long queries of common
    words), over the whole array, which skips the gather."""
    matched = int(np.count_nonzero(scores))
    if matched <= k:
        docs = np.flatnonzero(scores)
    else:
        pool = np.flatnonzero(scores) if 4 * matched < len(scores) else None
        values = scores[pool] if pool is not None else scores
        kth = np.partition(values, len(values) - k)[len(values) - k]  # the k-th highest score, > 0
        above = np.flatnonzero(values > kth)
        chosen = np.concatenate([above, np.flatnonzero(values == kth)[: k - len(above)]])
        docs = pool[chosen] if pool is not None else chosen
    # lexsort: the last key is primary -> descending score, then ascending document number
    return docs[np.lexsort((docs, -scores[docs]))]


def _check_files(folder: Path, manifest: Manifest, verify: bool) -> None:
    for name, record in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise IndexCorruptError(f"{folder}: file {name} listed in the manifest is missing")
        size = path.stat().st_size
        if size != record.bytes:
            raise IndexCorruptError(f"{folder}: {name} has {size} bytes, the manifest says {record.bytes}")
        if verify and file_sha256(path) != record.sha256:
            raise IndexCorruptError(f"{folder}: {name} does not match its SHA-256 in the manifest")


def _check_shapes(
    folder: Path, manifest: Manifest, retriever: bm25s.BM25, vocab: dict[str, int], offsets: np.ndarray
) -> None:
    scores = retriever.scores
    problems = []
    if scores["num_docs"] != manifest.passages:
        problems.append(f"score matrix has {scores['num_docs']} documents")
    if len(scores["indptr"]) != manifest.vocabulary + 1 or len(vocab) != manifest.vocabulary:
        problems.append(f"vocabulary {len(vocab)} / matrix columns {len(scores['indptr']) - 1}")
    if offsets.shape != (manifest.passages + 1,):
        problems.append(f"offsets shape {offsets.shape}")
    if len(scores["data"]) != len(scores["indices"]) or int(scores["indptr"][-1]) != len(scores["data"]):
        problems.append("CSC arrays disagree")
    if problems:
        raise IndexCorruptError(
            f"{folder}: manifest says {manifest.passages} passages, {manifest.vocabulary} tokens; "
            + "; ".join(problems)
        )


__all__ = ["Hit", "KnowledgeError", "KnowledgeIndex"]
