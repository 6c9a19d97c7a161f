from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import knowledge_index


def test_synthetic_data_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    knowledge_index.write_synthetic_corpus(a, 30, words=8, seed=3)
    knowledge_index.write_synthetic_corpus(b, 30, words=8, seed=3)
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(rows) == 30 and len(rows[0]["text"].split()) == 8 and len({r["id"] for r in rows}) == 30
    assert knowledge_index.synthetic_queries(4, 5, seed=3) == knowledge_index.synthetic_queries(4, 5, seed=3)


@pytest.mark.slow
def test_runs_each_size_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    rows = knowledge_index.main(["--sizes", "200,400", "--queries", "20", "--words", "10", "--out", str(out)])
    assert [r["passages"] for r in rows] == [200, 400]
    for r in rows:
        assert r["build_s"] > 0 and r["index_mb"] > 0 and 0 < r["query_p50_ms"] <= r["query_p90_ms"]
        assert r["peak_rss_mb"] > 0
    assert json.loads((out / "results.json").read_text()) == rows
    assert "| 400 |" in (out / "results.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"], "indexes removed"
