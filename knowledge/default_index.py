"""The default index: built from the default corpus once per machine, then found in a cache folder.

Its folder is ``<cache>/default-<key16>``, where the key hashes the builder, tokenizer and assembler
versions and every source's package version and data-file hashes. Finding it costs hashing ~25 MB of
package data, not assembling the corpus; a change to any input yields a new folder instead of silently
reusing a stale one. Old folders are left alone (a running service may have one open).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from knowledge.build import build_index
from knowledge.corpus import write_corpus
from knowledge.default_corpus import ASSEMBLER_VERSION, SOURCES
from knowledge.errors import IndexCorruptError, IndexMissingError
from knowledge.index import KnowledgeIndex
from knowledge.sources import PackageSource
from knowledge.tokenize import TOKENIZER
from knowledge.version import BUILDER_VERSION

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".cache/knowledge")


def default_key(sources: Sequence[PackageSource] = SOURCES) -> str:
    body = {
        "builder": BUILDER_VERSION,
        "assembler": ASSEMBLER_VERSION,
        "tokenizer": TOKENIZER,
        "sources": [s.fingerprint() for s in sources],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def default_index_dir(cache: str | Path = DEFAULT_CACHE, sources: Sequence[PackageSource] = SOURCES) -> Path:
    return Path(cache) / f"default-{default_key(sources)[:16]}"


def find_default_index(
    cache: str | Path = DEFAULT_CACHE, sources: Sequence[PackageSource] = SOURCES
) -> Path | None:
    """The cached default index's folder if a sound one is there (hashes checked), else None."""
    folder = default_index_dir(cache, sources)
    try:
        KnowledgeIndex.load(folder).close()
    except IndexMissingError:
        return None
    except IndexCorruptError as exc:
        log.warning("cached default index is damaged, it will be rebuilt: %s", exc)
        return None
    return folder


def ensure_default_index(
    cache: str | Path = DEFAULT_CACHE, sources: Sequence[PackageSource] = SOURCES, rebuild: bool = False
) -> Path:
    """Find the default index or build it; returns its folder."""
    folder = default_index_dir(cache, sources)
    if not rebuild and find_default_index(cache, sources) is not None:
        log.info("default knowledge index found at %s", folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".corpus-", dir=folder.parent) as tmp:
        corpora = []
        for source in sources:
            path = Path(tmp) / f"{source.key}.jsonl"
            with path.open("w", encoding="utf-8") as out:
                n = write_corpus(source.read(source.locate()), out)
            log.info("default corpus: %d passages from %s %s", n, source.distribution, source.version())
            corpora.append(path)
        build_index(corpora, folder, sources={s.key: s.info() for s in sources})
    return folder
