"""``build_index``: corpus JSONL files -> a self-describing BM25 index folder.

The folder is written next to its destination under a temporary name and renamed into place, so a
crash or a concurrent reader never sees half an index. Documents keep corpus order (files in the order
given, lines in file order) and the vocabulary is numbered in first-seen order, so the same inputs give
the same bytes. Memory: token-id lists of the whole corpus are held while bm25s builds (about 2 GB at a
million 40-word passages); passage text is streamed to disk, not held.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import bm25s
import numpy as np

from knowledge.corpus import file_sha256, iter_corpus
from knowledge.errors import CorpusFormatError, KnowledgeError
from knowledge.layout import BM25_DIR, BM25_FILES, OFFSETS, PASSAGES, VOCAB
from knowledge.manifest import (
    MANIFEST,
    Bm25Settings,
    CorpusRecord,
    FileRecord,
    Manifest,
    SourceInfo,
    SourceRecord,
)
from knowledge.tokenize import TOKENIZER, passage_tokens
from knowledge.version import BUILDER_VERSION

log = logging.getLogger(__name__)


def build_index(
    corpora: Sequence[str | Path],
    out: str | Path,
    sources: Mapping[str, SourceInfo] | None = None,
    settings: Bm25Settings | None = None,
) -> Manifest:
    """Build an index of every passage in `corpora` at `out` and return its manifest.

    `sources` gives licence and credit per passage `source`; sources it does not name are recorded as
    "unspecified". An existing index at `out` is replaced; any other existing, non-empty folder is an
    error (never delete what this function did not write).
    """
    out = Path(out)
    settings = settings or Bm25Settings()
    sources = dict(sources or {})
    if not corpora:
        raise KnowledgeError("no corpus given")
    _check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        manifest = _write_index(tmp, [Path(c) for c in corpora], sources, settings)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "built knowledge index %s: %d passages, %d tokens, identity %s",
        out,
        manifest.passages,
        manifest.vocabulary,
        manifest.short_identity,
    )
    return manifest


def _write_index(
    folder: Path, corpora: list[Path], sources: dict[str, SourceInfo], settings: Bm25Settings
) -> Manifest:
    vocab: dict[str, int] = {}
    doc_ids: list[list[int]] = []
    offsets: list[int] = [0]
    seen_ids: dict[str, tuple[Path, int]] = {}
    per_source: Counter[str] = Counter()
    corpus_records: list[CorpusRecord] = []
    with (folder / PASSAGES).open("wb") as passages_out:
        for path in corpora:
            digest = hashlib.sha256()
            n_before = len(doc_ids)
            for line_no, passage in iter_corpus(path, digest):
                if passage.id in seen_ids:
                    first_path, first_line = seen_ids[passage.id]
                    raise CorpusFormatError(
                        path, line_no, f"duplicate id {passage.id!r} (first at {first_path}:{first_line})"
                    )
                seen_ids[passage.id] = (path, line_no)
                line = (passage.to_json() + "\n").encode()
                passages_out.write(line)
                offsets.append(offsets[-1] + len(line))
                tokens = passage_tokens(f"{passage.title} {passage.text}")
                doc_ids.append([vocab.setdefault(t, len(vocab)) for t in tokens])
                per_source[passage.source] += 1
            corpus_records.append(
                CorpusRecord(
                    name=path.name,
                    sha256=digest.hexdigest(),
                    bytes=path.stat().st_size,
                    passages=len(doc_ids) - n_before,
                )
            )
    if not doc_ids:
        raise KnowledgeError(f"the corpora hold no passages: {', '.join(map(str, corpora))}")
    if not vocab:
        raise KnowledgeError("the passages hold no indexable words (all empty or stopwords)")
    np.save(folder / OFFSETS, np.asarray(offsets, dtype=np.uint64), allow_pickle=False)
    (folder / VOCAB).write_text(json.dumps(list(vocab), ensure_ascii=False) + "\n", encoding="utf-8")

    retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    # create_empty_token=False: bm25s would append "" to the vocabulary outside the score matrix; empty
    # queries are answered before bm25s is asked.
    retriever.index((doc_ids, vocab), create_empty_token=False, show_progress=False)
    del doc_ids
    retriever.save(folder / BM25_DIR, show_progress=False)
    # The vocabulary lives in VOCAB (a list: smaller, and loads without bm25s' dict rebuild).
    (folder / BM25_DIR / "vocab.index.json").unlink()

    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    expected = sorted([PASSAGES, OFFSETS, VOCAB, *(f"{BM25_DIR}/{f}" for f in BM25_FILES)])
    if names != expected:  # a bm25s upgrade that writes other files must be looked at, not shipped
        raise KnowledgeError(f"unexpected index files {names}, expected {expected}")
    manifest = Manifest(
        builder_version=BUILDER_VERSION,
        bm25s_version=bm25s.__version__,
        tokenizer=TOKENIZER,
        bm25=settings,
        passages=len(offsets) - 1,
        vocabulary=len(vocab),
        sources={
            name: SourceRecord(passages=count, **asdict(sources.get(name, SourceInfo())))
            for name, count in sorted(per_source.items())
        },
        corpora=corpus_records,
        files={
            name: FileRecord(bytes=(folder / name).stat().st_size, sha256=file_sha256(folder / name))
            for name in names
        },
    ).with_identity()
    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _check_destination(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise KnowledgeError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise KnowledgeError(f"{out} is a non-empty folder that is not a knowledge index; not replacing it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an old index there is renamed aside first and removed after."""
    old: Path | None = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    # mkdtemp creates 0700; the index is data other users (a service account) may read.
    os.chmod(out, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
