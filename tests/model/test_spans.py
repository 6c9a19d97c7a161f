"""Span enumeration and the span / pair representations."""

from __future__ import annotations

import pytest
import torch

from model.spans import PairRepresentation, SpanRepresentation, enumerate_spans, span_grid


@pytest.mark.parametrize("n", [0, 1, 3, 8, 13])
@pytest.mark.parametrize("w", [1, 2, 8])
def test_enumerate_spans_counts_and_bounds(n: int, w: int) -> None:
    spans = enumerate_spans(n, w)
    assert len(spans) == sum(n - width + 1 for width in range(1, min(w, n) + 1))
    assert len(set(spans)) == len(spans)
    assert all(0 <= s < e <= n and e - s <= w for s, e in spans)
    assert spans == sorted(spans, key=lambda se: (se[0], se[1] - se[0]))


def test_span_grid_valid_slots_are_exactly_the_enumerated_spans() -> None:
    lengths = torch.tensor([0, 1, 5, 9])
    n, w = 9, 4
    grid, valid = span_grid(lengths, n, w)
    assert grid.shape == (n * w, 2) and valid.shape == (4, n * w)
    for b, length in enumerate(lengths.tolist()):
        got = [tuple(grid[u].tolist()) for u in range(n * w) if valid[b, u]]
        assert got == enumerate_spans(length, w)


def brute_force_rep(rep: SpanRepresentation, words: torch.Tensor, b: int, s: int, e: int) -> torch.Tensor:
    pooled = words[b, s:e].max(dim=0).values
    width = rep.width_embedding(torch.tensor(e - s))
    return rep.proj(torch.cat([words[b, s], words[b, e - 1], pooled, width]))


def test_span_representation_matches_a_brute_force_max_pool() -> None:
    torch.manual_seed(0)
    n, w = 7, 4
    rep = SpanRepresentation(in_dim=6, d_model=10, max_width=w, width_dim=3, dropout=0.0).eval()
    words = torch.randn(2, n, 6)
    spans = torch.tensor([enumerate_spans(n, w)] * 2)  # (2, U, 2)
    out = rep(words, spans)
    assert out.shape == (2, spans.size(1), 10)
    for b in range(2):
        for u, (s, e) in enumerate(spans[b].tolist()):
            torch.testing.assert_close(out[b, u], brute_force_rep(rep, words, b, s, e), atol=1e-5, rtol=1e-5)


def test_span_representation_ignores_words_outside_the_span() -> None:
    torch.manual_seed(1)
    rep = SpanRepresentation(in_dim=4, d_model=8, max_width=3, width_dim=2, dropout=0.0).eval()
    words = torch.randn(1, 6, 4)
    spans = torch.tensor([[[1, 3], [2, 5]]])
    before = rep(words, spans)
    words[0, 0] = 50.0  # outside both spans
    words[0, 5] = 50.0
    torch.testing.assert_close(rep(words, spans), before)


def test_pair_representation_is_symmetric_only_in_its_symmetric_features() -> None:
    torch.manual_seed(2)
    pair = PairRepresentation(8, dropout=0.0).eval()
    h, t = torch.randn(3, 8), torch.randn(3, 8)
    assert pair(h, t).shape == (3, 8)
    assert not torch.allclose(pair(h, t), pair(t, h))  # head and tail are distinguished
