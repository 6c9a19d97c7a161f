"""``manifest.json``: what an index directory holds, where it came from, and its identity.

Everything in it is a function of the inputs (corpus bytes, licences, settings, builder and bm25s
versions): no timestamps or absolute paths, so a rebuild from the same inputs is byte-identical and two
machines agree on the identity. The identity is the SHA-256 of the manifest's canonical JSON without the
identity field; since the manifest lists every file's SHA-256, it names the index's exact bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from knowledge.errors import IndexCorruptError

FORMAT = "saver-knowledge-index/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Bm25Settings:
    k1: float = 1.5  # term-frequency saturation
    b: float = 0.75  # length normalisation
    method: str = "lucene"  # bm25s scoring variant; lucene needs no non-occurrence array


@dataclass(frozen=True)
class SourceInfo:
    licence: str = "unspecified"  # licence of the passages' text
    package: str | None = None  # the pip package the passages were read from (default corpus)
    package_version: str | None = None
    credit: str | None = None  # the attribution line a user of the index must show


@dataclass(frozen=True)
class SourceRecord:
    passages: int
    licence: str
    package: str | None
    package_version: str | None
    credit: str | None


@dataclass(frozen=True)
class CorpusRecord:
    name: str  # file name only: the identity must not depend on where the file lay
    sha256: str
    bytes: int
    passages: int


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    builder_version: str
    bm25s_version: str
    tokenizer: str
    bm25: Bm25Settings
    passages: int
    vocabulary: int
    sources: dict[str, SourceRecord]
    corpora: list[CorpusRecord]
    files: dict[str, FileRecord]  # path relative to the index folder -> size and hash
    dense: None = None  # no dense retrieval yet; the field is where its encoder and ANN settings will go
    format: str = FORMAT
    identity: str = field(default="")

    @property
    def short_identity(self) -> str:
        return self.identity[:16]

    def body(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("identity")
        return d

    def with_identity(self) -> Manifest:
        return replace(self, identity=compute_identity(self.body()))

    def to_json(self) -> str:
        return json.dumps({**self.body(), "identity": self.identity}, indent=2, sort_keys=True) + "\n"

    def credits(self) -> list[str]:
        return [s.credit or f"{name}: {s.licence}" for name, s in sorted(self.sources.items())]


def compute_identity(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_manifest(path: Path) -> Manifest:
    """Parse and check a manifest; any deviation is `IndexCorruptError` (the caller checks existence)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise IndexCorruptError(f"{path}: not a {FORMAT} manifest (format {got!r})")
    try:
        manifest = Manifest(
            format=raw["format"],
            builder_version=str(raw["builder_version"]),
            bm25s_version=str(raw["bm25s_version"]),
            tokenizer=str(raw["tokenizer"]),
            bm25=Bm25Settings(**raw["bm25"]),
            passages=int(raw["passages"]),
            vocabulary=int(raw["vocabulary"]),
            sources={k: SourceRecord(**v) for k, v in raw["sources"].items()},
            corpora=[CorpusRecord(**c) for c in raw["corpora"]],
            files={k: FileRecord(**v) for k, v in raw["files"].items()},
            dense=raw["dense"],
            identity=str(raw["identity"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IndexCorruptError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    expected = compute_identity(manifest.body())
    if manifest.identity != expected:
        raise IndexCorruptError(
            f"{path}: identity {manifest.identity[:16]}… does not match its contents ({expected[:16]}…); "
            "the manifest was edited or damaged"
        )
    return manifest
