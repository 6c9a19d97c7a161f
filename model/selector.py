"""Evidence selection: a small, relevant and non-redundant subset of a post's images per unit.

F(S) = λ_r Σ_{i∈S} r_i + λ_c Σ_j max_{i∈S} s_ij is monotone submodular (a modular relevance term plus
facility location), so greedy selection is within (1 - 1/e) of the optimum; lazy greedy returns the same
set with fewer gain evaluations because marginal gains only shrink as S grows.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.asarray(a @ b.T)


def objective(
    selected: Sequence[int], relevance: np.ndarray, similarity: np.ndarray, lam_r: float, lam_c: float
) -> float:
    """F(S); F(∅) = 0."""
    if len(selected) == 0:
        return 0.0
    idx = list(selected)
    return float(lam_r * relevance[idx].sum() + lam_c * similarity[idx].max(axis=0).sum())


def _gain(
    i: int, cover: np.ndarray, relevance: np.ndarray, similarity: np.ndarray, lam_r: float, lam_c: float
) -> float:
    # cover[j] = max_{s in S} s_sj (0 for S = ∅, valid because s_ij >= 0)
    return float(lam_r * relevance[i] + lam_c * np.maximum(similarity[i] - cover, 0.0).sum())


def greedy_select(
    relevance: np.ndarray, similarity: np.ndarray, k: int, lam_r: float, lam_c: float
) -> list[int]:
    """Plain greedy: k rounds, each adds the item of largest marginal gain (lowest index on ties)."""
    n = len(relevance)
    cover = np.zeros(n)
    chosen: list[int] = []
    for _ in range(min(k, n)):
        gains = [
            (-np.inf if i in chosen else _gain(i, cover, relevance, similarity, lam_r, lam_c))
            for i in range(n)
        ]
        best = int(np.argmax(gains))
        chosen.append(best)
        cover = np.maximum(cover, similarity[best])
    return chosen


def lazy_greedy_select(
    relevance: np.ndarray, similarity: np.ndarray, k: int, lam_r: float, lam_c: float
) -> list[int]:
    """Lazy greedy (Minoux): stale gains are upper bounds, so an item whose fresh gain still beats the next
    bound is the greedy choice. Ties break on the lower index, exactly as ``greedy_select`` does."""
    n = len(relevance)
    cover = np.zeros(n)
    heap = [(-_gain(i, cover, relevance, similarity, lam_r, lam_c), i) for i in range(n)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < k:
        _, i = heapq.heappop(heap)
        fresh = (-_gain(i, cover, relevance, similarity, lam_r, lam_c), i)
        if not heap or fresh <= heap[0]:
            chosen.append(i)
            cover = np.maximum(cover, similarity[i])
        else:
            heapq.heappush(heap, fresh)
    return chosen


def topk_select(relevance: np.ndarray, k: int) -> list[int]:
    """The ``topk`` alternative: most relevant first, redundancy ignored."""
    order = np.argsort(-relevance, kind="stable")
    return [int(i) for i in order[:k]]


def select_evidence(
    query: np.ndarray,
    items: np.ndarray,
    k: int,
    method: str = "submodular",
    lam_r: float = 1.0,
    lam_c: float = 0.5,
) -> list[int]:
    """query (D,), items (M, D) -> indices of at most k items; r and s are cosines mapped to [0, 1]."""
    if len(items) == 0 or k <= 0:
        return []
    relevance = (1.0 + cosine_matrix(query[None, :], items)[0]) / 2.0
    if method == "topk":
        return topk_select(relevance, k)
    if method != "submodular":
        raise ValueError(f"unknown selector {method!r}")
    similarity = (1.0 + cosine_matrix(items, items)) / 2.0
    return lazy_greedy_select(relevance, similarity, k, lam_r, lam_c)


def select_for_queries(
    queries: np.ndarray, items: np.ndarray, k: int, method: str, lam_r: float, lam_c: float
) -> list[list[int]]:
    """Per unit query (A, D) against one post's item vectors (M, D): what ``SaverBase.select`` and the
    torch-free ONNX worker both call."""
    m = len(items)
    if m <= k:  # F is monotone: with room for every item, greedy takes them all
        return [list(range(m)) for _ in range(len(queries))]
    return [select_evidence(q, items, k, method, lam_r, lam_c) for q in queries]
