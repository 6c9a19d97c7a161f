from __future__ import annotations

import json
from pathlib import Path

from bench import knowledge_coverage as kc
from knowledge import KnowledgeIndex, build_index

PASSAGES = [
    ("Paris (Texas)", "Paris is a city in Texas.", "geo"),
    ("Boston", "Boston is a city in Massachusetts.", "geo"),
    ("Barack Obama", "Barack Obama was a president.", "wiki"),
    ("Boston Celtics", "The Celtics are a team from Boston.", "nba"),
]
UMT = "IMGID:1\n#Paris\tB-LOC\nand\tO\nBarack\tB-PER\nObama\tI-PER\n\nIMGID:2\nNowhere\tB-OTHER\nBoston\tB-ORG\n\n"


def _index(tmp_path: Path) -> KnowledgeIndex:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": str(i), "title": t, "text": x, "source": s}) + "\n"
            for i, (t, x, s) in enumerate(PASSAGES)
        )
    )
    build_index([corpus], tmp_path / "index")
    return KnowledgeIndex.load(tmp_path / "index")


def test_normalisation() -> None:
    assert kc.normalise_title("Paris  (Texas)") == "paris" == kc.normalise_mention(" #PARIS ")
    assert kc.normalise_mention("@Barack   Obama") == "barack obama"


def test_mentions_read_gold_spans_with_other_as_misc(tmp_path: Path) -> None:
    (tmp_path / "valid.txt").write_text(UMT)
    assert kc.mentions(tmp_path / "valid.txt") == [
        ("#Paris", "LOC"),
        ("Barack Obama", "PER"),
        ("Nowhere", "MISC"),
        ("Boston", "ORG"),
    ]


def test_coverage_per_source_union_and_found(tmp_path: Path) -> None:
    gold = [("#Paris", "LOC"), ("Barack Obama", "PER"), ("Nowhere", "MISC"), ("Boston", "ORG")]
    index = _index(tmp_path)
    result = kc.coverage(index, gold, k=5)
    assert result["geo"] == {"LOC": 100.0, "PER": 0.0, "MISC": 0.0, "ORG": 100.0, "all": 50.0}
    assert result["wiki"]["all"] == 25.0 and result["nba"]["all"] == 0.0
    assert result["union"]["all"] == 75.0
    assert result["union, found in BM25 top-5"]["all"] == 75.0
    # "Boston" also titles a passage about the Celtics; with k = 1 the found share can only shrink
    assert kc.coverage(index, gold, k=1)["union, found in BM25 top-1"]["all"] <= 75.0


def test_main_writes_aggregates_only(tmp_path: Path) -> None:
    for rel in kc.DATASETS.values():
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).write_text(UMT)
    _index(tmp_path)
    out = tmp_path / "out"
    results = kc.main(
        ["--index", str(tmp_path / "index"), "--data", str(tmp_path / "data"), "--out", str(out)]
    )
    assert results["datasets"]["twitter2017"]["mentions"] == 4
    written = (out / "coverage.json").read_text() + (out / "coverage.md").read_text()
    assert "Obama" not in written and "Nowhere" not in written
