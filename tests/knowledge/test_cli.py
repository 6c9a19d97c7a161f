from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge import KnowledgeIndex
from saver.cli import main

from .conftest import ROWS, WriteCorpus


def test_build_then_search_and_info(
    tmp_path: Path, write_corpus: WriteCorpus, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = write_corpus(ROWS[:3], name="a.jsonl"), write_corpus(ROWS[3:], name="b.jsonl")
    out = tmp_path / "index"
    main(
        [
            "index",
            "build",
            "--corpus",
            str(a),
            "--corpus",
            str(b),
            "--out",
            str(out),
            "--licence",
            "geo=CC BY 4.0",
            "--licence",
            "wiki=CC BY-SA 4.0",
        ]
    )
    manifest = KnowledgeIndex.load(out).manifest
    assert manifest.identity in capsys.readouterr().out
    assert (manifest.sources["geo"].licence, manifest.sources["wiki"].licence) == (
        "CC BY 4.0",
        "CC BY-SA 4.0",
    )

    main(["index", "search", "--index", str(out), "-k", "2", "--json", "capital", "of", "France"])
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["id"] == "geo:2" and hits[0]["rank"] == 0 and len(hits) <= 2

    main(["index", "search", "--index", str(out), "Obama"])
    assert "Barack Obama (wiki:1)" in capsys.readouterr().out

    main(["index", "info", "--index", str(out)])
    assert f"identity   {manifest.identity}" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(
    tmp_path: Path, write_corpus: WriteCorpus, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_corpus(raw=json.dumps(ROWS[0]) + "\nnot json\n")
    with pytest.raises(SystemExit) as err:
        main(["index", "build", "--corpus", str(bad), "--out", str(tmp_path / "index")])
    assert err.value.code == 2
    assert f"saver index: error: {bad}:2: not valid JSON" in capsys.readouterr().err

    with pytest.raises(SystemExit) as err:
        main(["index", "search", "--index", str(tmp_path / "absent"), "x"])
    assert err.value.code == 2 and "no knowledge index" in capsys.readouterr().err


def test_licence_needs_source_and_text(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    with pytest.raises(SystemExit, match="SOURCE=TEXT"):
        main(
            [
                "index",
                "build",
                "--corpus",
                str(write_corpus()),
                "--out",
                str(tmp_path / "i"),
                "--licence",
                "geo",
            ]
        )
