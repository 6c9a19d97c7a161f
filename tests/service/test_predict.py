"""``saver predict``: a JSONL file through the batch path, one record per line, bad lines recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.predict import predict

GROUNDABLE = "Kevin Durant joins the warriors"


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_gets_its_record_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVER_FAKE_MODEL", "true")
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "\n".join(
            [
                json.dumps({"text": GROUNDABLE, "options": {"vision": "never"}}),
                "{not json",
                "",
                json.dumps({"text": "   "}),
                json.dumps({"tokens": ["Paris", "rocks"]}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out" / "results.jsonl"
    predict(
        ["--task", "mner", "--input", str(posts), "--out", str(out), "--batch-size", "2", "--no-progress"]
    )
    records = _lines(out)
    assert [r["line"] for r in records] == [1, 2, 4, 5]
    assert [r["status"] for r in records] == [200, 422, 422, 200]
    first = records[0]["result"]
    assert isinstance(first, dict)
    assert [e["text"] for e in first["entities"]] == ["Kevin Durant"]
    assert first["model"]["name"] == "fake-mner"
    assert records[1]["error"]["code"] == "invalid_json"  # type: ignore[index]
    assert records[2]["error"]["code"] == "validation_error"  # type: ignore[index]


def test_mre_lines_name_their_own_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVER_FAKE_MODEL", "true")
    pairs = tmp_path / "pairs.jsonl"
    good = {"text": GROUNDABLE, "head": {"text": "Kevin Durant"}, "tail": {"text": "warriors"}}
    bad = {**good, "tail": {"text": "Lakers"}}
    pairs.write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    out = tmp_path / "results.jsonl"
    predict(["--task", "mre", "--input", str(pairs), "--out", str(out), "--no-progress"])
    records = _lines(out)
    assert [r["status"] for r in records] == [422, 200]
    assert records[0]["error"]["details"][0]["field"] == "tail.text"  # type: ignore[index]
    assert records[1]["result"]["relation"]  # type: ignore[index]
