from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge import Bm25Settings, CorpusFormatError, KnowledgeError, KnowledgeIndex, SourceInfo, build_index
from knowledge.corpus import file_sha256
from knowledge.manifest import MANIFEST, compute_identity

from .conftest import ROWS, WriteCorpus


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_describes_sources_corpora_and_files(index_dir: Path, write_corpus: WriteCorpus) -> None:
    m = KnowledgeIndex.load(index_dir).manifest
    assert m.passages == len(ROWS)
    assert {k: s.passages for k, s in m.sources.items()} == {"geo": 2, "mlb": 1, "nba": 1, "wiki": 2}
    assert m.sources["geo"].licence == "CC BY 4.0" and m.sources["geo"].credit == "GeoNames"
    assert m.sources["nba"].licence == "unspecified"
    corpus = write_corpus()
    [record] = m.corpora
    assert (record.name, record.sha256, record.bytes, record.passages) == (
        "corpus.jsonl",
        file_sha256(corpus),
        corpus.stat().st_size,
        len(ROWS),
    )
    on_disk = {name for name in _files(index_dir) if name != MANIFEST}
    assert set(m.files) == on_disk
    for name, f in m.files.items():
        assert f.bytes == (index_dir / name).stat().st_size and f.sha256 == file_sha256(index_dir / name)
    raw = json.loads((index_dir / MANIFEST).read_text())
    assert raw["identity"] == compute_identity({k: v for k, v in raw.items() if k != "identity"})
    assert raw["bm25"] == {"k1": 1.5, "b": 0.75, "method": "lucene"} and raw["dense"] is None


def test_rebuild_is_byte_identical(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    corpus = write_corpus()
    build_index([corpus], tmp_path / "one")
    build_index([corpus], tmp_path / "two")
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_identity_follows_corpus_and_settings(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    base = build_index([write_corpus()], tmp_path / "a").identity
    assert build_index([write_corpus(ROWS[:-1], name="c2.jsonl")], tmp_path / "b").identity != base
    assert build_index([write_corpus()], tmp_path / "c", settings=Bm25Settings(k1=1.2)).identity != base
    assert build_index([write_corpus()], tmp_path / "d", sources={"geo": SourceInfo("CC0")}).identity != base


def test_several_corpora_keep_order(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    a, b = write_corpus(ROWS[:3], name="a.jsonl"), write_corpus(ROWS[3:], name="b.jsonl")
    m = build_index([a, b], tmp_path / "index")
    assert [(c.name, c.passages) for c in m.corpora] == [("a.jsonl", 3), ("b.jsonl", 3)]
    index = KnowledgeIndex.load(tmp_path / "index")
    assert [index.passage(i).id for i in range(len(index))] == [r["id"] for r in ROWS]


def test_replaces_an_existing_index(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    out = tmp_path / "index"
    build_index([write_corpus()], out)
    m = build_index([write_corpus(ROWS[:2], name="small.jsonl")], out)
    assert KnowledgeIndex.load(out).identity == m.identity and len(KnowledgeIndex.load(out)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "index", "small.jsonl"]


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(KnowledgeError, match="not a knowledge index"):
        build_index([write_corpus()], out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    out = tmp_path / "index"
    build_index([write_corpus()], out)
    before = _files(out)
    bad = write_corpus(raw=json.dumps(ROWS[0]) + "\n{oops\n", name="bad.jsonl")
    with pytest.raises(CorpusFormatError):
        build_index([bad], out)
    assert _files(out) == before  # the old index is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "corpus.jsonl", "index"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no passages"),
        ([{"id": "a", "title": "", "text": "the of a", "source": "s"}], "no indexable words"),
    ],
)
def test_empty_corpora_are_refused(
    tmp_path: Path, write_corpus: WriteCorpus, rows: list, message: str
) -> None:
    with pytest.raises(KnowledgeError, match=message):
        build_index([write_corpus(rows)], tmp_path / "index")
    assert not (tmp_path / "index").exists()
