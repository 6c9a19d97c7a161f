"""Small hand-written corpora: enough passages for BM25 to rank, few enough that every test builds its own
index in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from knowledge import KnowledgeIndex, SourceInfo, build_index

ROWS = [
    {
        "id": "nba:1",
        "title": "Boston Celtics",
        "text": "The Boston Celtics are a basketball team based in Boston.",
        "source": "nba",
    },
    {"id": "geo:1", "title": "Boston", "text": "Boston is the capital of Massachusetts.", "source": "geo"},
    {
        "id": "geo:2",
        "title": "Paris",
        "text": "Paris is the capital and largest city of France.",
        "source": "geo",
    },
    {
        "id": "mlb:1",
        "title": "Boston Red Sox",
        "text": "The Red Sox are a baseball team that plays at Fenway Park.",
        "source": "mlb",
    },
    {
        "id": "wiki:1",
        "title": "Barack Obama",
        "text": "Barack Obama served as the 44th president of the United States.",
        "source": "wiki",
    },
    {
        "id": "wiki:2",
        "title": "Apple Inc.",
        "text": "Apple is a technology company headquartered in Cupertino.",
        "source": "wiki",
    },
]

WriteCorpus = Callable[..., Path]


@pytest.fixture
def write_corpus(tmp_path: Path) -> WriteCorpus:
    def write(rows: list[dict] | None = None, name: str = "corpus.jsonl", raw: str | None = None) -> Path:
        path = tmp_path / name
        text = (
            raw
            if raw is not None
            else "".join(json.dumps(r) + "\n" for r in (ROWS if rows is None else rows))
        )
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def index_dir(tmp_path: Path, write_corpus: WriteCorpus) -> Path:
    out = tmp_path / "index"
    build_index([write_corpus()], out, sources={"geo": SourceInfo(licence="CC BY 4.0", credit="GeoNames")})
    return out


@pytest.fixture
def index(index_dir: Path) -> KnowledgeIndex:
    return KnowledgeIndex.load(index_dir)
