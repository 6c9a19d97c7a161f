from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge import CorpusFormatError, build_index, read_corpus
from knowledge.corpus import Passage

from .conftest import ROWS, WriteCorpus


def test_reads_passages_in_file_order_and_skips_blank_lines(write_corpus: WriteCorpus) -> None:
    lines = [json.dumps(r) for r in ROWS[:2]]
    path = write_corpus(raw="\ufeff" + lines[0] + "\n\n   \n" + lines[1] + "\n")
    assert read_corpus(path) == [Passage(**ROWS[0]), Passage(**ROWS[1])]


def test_extra_fields_are_ignored(write_corpus: WriteCorpus) -> None:
    path = write_corpus([{**ROWS[0], "url": "x", "year": 1}])
    assert read_corpus(path) == [Passage(**ROWS[0])]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "a", "title": "t", "text": "x"', "not valid JSON"),
        ('["a", "t", "x", "s"]', "expected a JSON object"),
        ('{"id": "a", "title": "t", "source": "s"}', "missing field(s) text"),
        ('{"id": 3, "title": "t", "text": "x", "source": "s"}', "field 'id' must be a string"),
        ('{"id": " ", "title": "t", "text": "x", "source": "s"}', "field 'id' is empty"),
        ('{"id": "a", "title": "t", "text": "x", "source": ""}', "field 'source' is empty"),
    ],
)
def test_a_bad_line_names_file_and_line(write_corpus: WriteCorpus, line: str, problem: str) -> None:
    path = write_corpus(raw=json.dumps(ROWS[0]) + "\n\n" + line + "\n")
    with pytest.raises(CorpusFormatError) as err:
        read_corpus(path)
    assert (err.value.path, err.value.line) == (path, 3)
    assert str(err.value).startswith(f"{path}:3: ") and problem in str(err.value)


def test_invalid_utf8_is_a_format_error(write_corpus: WriteCorpus) -> None:
    path = write_corpus(raw="")
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(CorpusFormatError, match=":2: not valid JSON"):
        read_corpus(path)


def test_duplicate_ids_across_files_name_both_places(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    first = write_corpus(ROWS[:2], name="a.jsonl")
    second = write_corpus([ROWS[2], ROWS[1]], name="b.jsonl")
    with pytest.raises(CorpusFormatError) as err:
        build_index([first, second], tmp_path / "index")
    assert (err.value.path, err.value.line) == (second, 2)
    assert f"first at {first}:2" in str(err.value)


def test_missing_corpus_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusFormatError, match="no such corpus file"):
        read_corpus(tmp_path / "absent.jsonl")
