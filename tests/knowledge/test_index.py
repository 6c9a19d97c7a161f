from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from knowledge import KnowledgeIndex, build_index
from knowledge.index import top_k
from knowledge.tokenize import passage_tokens, query_tokens

from .conftest import WriteCorpus


def _ids(hits: list) -> list[str]:
    return [h.passage.id for h in hits]


def test_the_passage_about_the_query_ranks_first(index: KnowledgeIndex) -> None:
    assert _ids(index.search("who was president obama", 1)) == ["wiki:1"]
    hits = index.search("capital of France", 3)
    assert hits[0].passage.title == "Paris" and [h.rank for h in hits] == list(range(len(hits)))
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_hits_carry_the_whole_passage(index: KnowledgeIndex) -> None:
    [hit] = index.search("Cupertino", 1)
    p = hit.passage
    assert (p.id, p.title, p.source) == ("wiki:2", "Apple Inc.", "wiki") and "Cupertino" in p.text


def test_k_caps_the_hits_and_only_matching_passages_come_back(index: KnowledgeIndex) -> None:
    assert len(index.search("Boston", 2)) == 2
    assert set(_ids(index.search("Boston", 10))) == {"nba:1", "geo:1", "mlb:1"}  # only those say Boston


@pytest.mark.parametrize("query", ["", "   ", "the of and", "zzzqqq unknownword"])
def test_a_query_with_no_indexed_word_returns_nothing(index: KnowledgeIndex, query: str) -> None:
    assert index.search(query, 5) == []


def test_k_must_be_positive(index: KnowledgeIndex) -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search("Boston", 0)


def test_hashtags_and_handles_reach_titles_spelled_apart(index: KnowledgeIndex) -> None:
    assert index.search("#RedSox win again", 1)[0].passage.id == "mlb:1"
    assert index.search("@BarackObama", 1)[0].passage.id == "wiki:1"


def test_query_tokens_are_distinct_and_passages_are_not_camel_split() -> None:
    assert query_tokens("Boston boston BOSTON #RedSox") == ["boston", "redsox", "red", "sox"]
    assert passage_tokens("McDonald the Boston") == ["mcdonald", "boston"]


def test_ties_go_to_the_earlier_passage(tmp_path: Path, write_corpus: WriteCorpus) -> None:
    rows = [{"id": f"p{i}", "title": "", "text": "same words here", "source": "s"} for i in range(60)]
    build_index([write_corpus(rows)], tmp_path / "index")
    index = KnowledgeIndex.load(tmp_path / "index")
    assert _ids(index.search("same words", 3)) == ["p0", "p1", "p2"]


def test_search_many_is_search_per_query(index: KnowledgeIndex) -> None:
    queries = ["Boston", "Paris France", "nothing matches zzz", "Obama"]
    assert index.search_many(queries, 2) == [index.search(q, 2) for q in queries]


def test_concurrent_searches_agree_with_sequential_ones(index: KnowledgeIndex) -> None:
    queries = ["Boston", "Paris France", "Obama president", "baseball Fenway", "Cupertino technology"] * 40
    expected = [index.search(q, 3) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda q: index.search(q, 3), queries))
    assert got == expected


@pytest.mark.parametrize("n", [3, 40, 400])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_top_k_is_exact_with_ties(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    scores = rng.choice(np.asarray([0.0, 0.0, 1.0, 2.0, 2.5], dtype=np.float32), size=n)
    expected = sorted((i for i in range(n) if scores[i] > 0), key=lambda i: (-scores[i], i))[:k]
    assert top_k(scores, k).tolist() == expected
