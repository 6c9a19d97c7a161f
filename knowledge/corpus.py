"""Passages and the JSONL corpus format: one ``{"id", "title", "text", "source"}`` object per line.

Reading is strict: a malformed line raises `CorpusFormatError` naming the file and line, because a
silently skipped passage would change what the index answers without anyone noticing. Blank lines are
allowed; fields other than the four are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from knowledge.errors import CorpusFormatError

FIELDS = ("id", "title", "text", "source")


@dataclass(frozen=True, slots=True)
class Passage:
    id: str  # unique across every corpus of one index
    title: str  # the name the passage is about ("Boston Celtics"); may be empty
    text: str  # the passage itself; title and text are both indexed
    source: str  # short source key ("wikipedia-vital"); manifest counts and licences are per source

    def to_json(self) -> str:
        """One compact line; key order fixed so rebuilt indexes are byte-identical."""
        return json.dumps(
            {"id": self.id, "title": self.title, "text": self.text, "source": self.source},
            ensure_ascii=False,
            separators=(",", ":"),
        )


def parse_passage(line: str | bytes, path: str | Path, line_no: int) -> Passage:
    try:
        obj: Any = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusFormatError(path, line_no, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorpusFormatError(path, line_no, f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise CorpusFormatError(path, line_no, f"missing field(s) {', '.join(missing)}")
    for field in FIELDS:
        if not isinstance(obj[field], str):
            raise CorpusFormatError(path, line_no, f"field {field!r} must be a string")
    if not obj["id"].strip():
        raise CorpusFormatError(path, line_no, "field 'id' is empty")
    if not obj["source"].strip():
        raise CorpusFormatError(path, line_no, "field 'source' is empty")
    return Passage(id=obj["id"], title=obj["title"], text=obj["text"], source=obj["source"])


def iter_corpus(path: str | Path, digest: Any = None) -> Iterator[tuple[int, Passage]]:
    """(line number, passage) for each non-blank line; `digest` (a hashlib object) sees every byte read."""
    path = Path(path)
    if not path.is_file():
        raise CorpusFormatError(path, 0, "no such corpus file")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if digest is not None:
                digest.update(raw)
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            yield line_no, parse_passage(raw, path, line_no)


def read_corpus(path: str | Path) -> list[Passage]:
    return [p for _, p in iter_corpus(path)]


def write_corpus(passages: Iterable[Passage], out: IO[str]) -> int:
    n = 0
    for p in passages:
        out.write(p.to_json() + "\n")
        n += 1
    return n


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
