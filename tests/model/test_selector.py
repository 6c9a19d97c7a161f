"""Evidence selection: F is monotone submodular, lazy greedy = greedy, the (1 - 1/e) bound, budgets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from model.selector import (
    cosine_matrix,
    greedy_select,
    lazy_greedy_select,
    objective,
    select_evidence,
    topk_select,
)


def instance(rng: np.random.Generator, n: int, dim: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A query, n item vectors, and the selector's relevance r and similarity s (both in [0, 1])."""
    query = rng.normal(size=dim)
    items = rng.normal(size=(n, dim))
    if n > 2 and rng.random() < 0.5:  # exact duplicates make ties, the hard case for lazy greedy
        items[rng.integers(n)] = items[0]
    relevance = (1 + cosine_matrix(query[None], items)[0]) / 2
    similarity = (1 + cosine_matrix(items, items)) / 2
    return items, relevance, similarity


def random_subset(rng: np.random.Generator, pool: list[int]) -> list[int]:
    return [i for i in pool if rng.random() < 0.5]


@pytest.mark.parametrize("lams", [(1.0, 0.5), (0.0, 1.0), (1.0, 0.0), (0.3, 2.0)])
def test_objective_is_monotone_and_submodular(lams: tuple[float, float]) -> None:
    rng = np.random.default_rng(0)
    lam_r, lam_c = lams
    for _ in range(300):
        n = int(rng.integers(2, 9))
        _, r, s = instance(rng, n)
        b = random_subset(rng, list(range(n)))
        a = random_subset(rng, b)  # A ⊆ B
        outside = [x for x in range(n) if x not in b]
        if not outside:
            continue
        x = int(rng.choice(outside))
        gain_a = objective([*a, x], r, s, lam_r, lam_c) - objective(a, r, s, lam_r, lam_c)
        gain_b = objective([*b, x], r, s, lam_r, lam_c) - objective(b, r, s, lam_r, lam_c)
        assert gain_a >= -1e-12  # monotone
        assert gain_b >= -1e-12
        assert gain_a >= gain_b - 1e-9  # diminishing returns


def test_objective_of_empty_set_is_zero() -> None:
    _, r, s = instance(np.random.default_rng(1), 4)
    assert objective([], r, s, 1.0, 0.5) == 0.0


def test_lazy_greedy_returns_the_greedy_set() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        k = int(rng.integers(0, n + 2))
        lam_r, lam_c = float(rng.uniform(0, 2)), float(rng.uniform(0, 2))
        _, r, s = instance(rng, n)
        assert lazy_greedy_select(r, s, k, lam_r, lam_c) == greedy_select(r, s, k, lam_r, lam_c)


def test_lazy_greedy_breaks_exact_ties_like_greedy() -> None:
    r = np.full(5, 0.5)
    s = np.ones((5, 5))  # every item identical: all gains tie at every step
    assert lazy_greedy_select(r, s, 3, 1.0, 0.5) == greedy_select(r, s, 3, 1.0, 0.5) == [0, 1, 2]


def test_greedy_is_within_one_minus_one_over_e_of_the_optimum() -> None:
    rng = np.random.default_rng(3)
    bound = 1 - 1 / math.e
    for _ in range(200):
        n = int(rng.integers(1, 9))
        k = int(rng.integers(1, 4))
        lam_r, lam_c = float(rng.uniform(0, 1)), float(rng.uniform(0.1, 3))
        _, r, s = instance(rng, n)
        best = max(
            objective(list(c), r, s, lam_r, lam_c)
            for size in range(1, min(k, n) + 1)
            for c in itertools.combinations(range(n), size)
        )
        got = objective(lazy_greedy_select(r, s, k, lam_r, lam_c), r, s, lam_r, lam_c)
        assert got >= bound * best - 1e-9


def test_coverage_term_prefers_a_different_image_over_a_duplicate() -> None:
    query = np.array([1.0, 0.0])
    items = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two copies of the relevant photo, one other
    assert select_evidence(query, items, 2, "submodular", lam_r=1.0, lam_c=2.0) == [0, 2]
    assert select_evidence(query, items, 2, "topk") == [0, 1]  # topk ignores redundancy


def test_topk_returns_the_most_relevant_items() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        m, k = int(rng.integers(1, 10)), int(rng.integers(1, 5))
        query, items = rng.normal(size=5), rng.normal(size=(m, 5))
        picked = select_evidence(query, items, k, "topk")
        cos = cosine_matrix(query[None], items)[0]
        assert len(picked) == min(k, m)
        assert [cos[i] for i in picked] == sorted((cos[i] for i in picked), reverse=True)
        rest = [cos[i] for i in range(m) if i not in picked]
        assert not rest or min(cos[i] for i in picked) >= max(rest)
    assert topk_select(np.array([0.2, 0.9, 0.9, 0.1]), 2) == [1, 2]  # stable on ties


@pytest.mark.parametrize("method", ["submodular", "topk"])
def test_select_evidence_respects_the_budget(method: str) -> None:
    rng = np.random.default_rng(5)
    for _ in range(100):
        m, k = int(rng.integers(0, 9)), int(rng.integers(0, 5))
        picked = select_evidence(rng.normal(size=4), rng.normal(size=(m, 4)), k, method)
        assert len(picked) == min(k, m)
        assert len(set(picked)) == len(picked)
        assert all(0 <= i < m for i in picked)


def test_select_evidence_edge_cases() -> None:
    query = np.ones(3)
    assert select_evidence(query, np.zeros((0, 3)), 2) == []
    assert select_evidence(query, np.ones((4, 3)), 0) == []
    assert sorted(select_evidence(query, np.eye(3)[:2], 5)) == [0, 1]  # M < k: everything
    assert select_evidence(query, np.zeros((2, 3)), 1) in ([0], [1])  # zero vectors do not blow up
    with pytest.raises(ValueError, match="unknown selector"):
        select_evidence(query, np.eye(3), 1, "random")
