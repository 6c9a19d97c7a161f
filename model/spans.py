"""Units: candidate spans for MNER (every span up to width W) and marked entity pairs for MRE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def enumerate_spans(n_words: int, max_width: int) -> list[tuple[int, int]]:
    """All (start, end_exclusive) spans of at most ``max_width`` words, ordered by start then width."""
    return [(i, i + w) for i in range(n_words) for w in range(1, max_width + 1) if i + w <= n_words]


def span_grid(lengths: torch.Tensor, n_words: int, max_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed slots ``i * W + (w - 1)`` for every start i and width w; returns (spans (U, 2), valid (B, U))."""
    starts = torch.arange(n_words, device=lengths.device).repeat_interleave(max_width)  # (U,)
    widths = torch.arange(1, max_width + 1, device=lengths.device).repeat(n_words)  # (U,)
    spans = torch.stack([starts, starts + widths], dim=-1)  # (U, 2)
    valid = spans[:, 1].unsqueeze(0) <= lengths.unsqueeze(1)  # (B, U)
    return spans, valid


class SpanRepresentation(nn.Module):
    """[h_start; h_end; max-pool; width embedding] projected to ``d_model``.

    The projection's first Linear is applied in its factored form, ``A·h_start + B·h_end + C·pool + D·w + b``
    (the same weights, split by input block): the start and end terms are projected once per word and then
    gathered, the width term is a (W + 1, d) table, so only the max-pool term costs a matmul per span. An
    MNER post has about N·W spans but N words, so this is most of the span stage's arithmetic saved."""

    def __init__(self, in_dim: int, d_model: int, max_width: int, width_dim: int, dropout: float) -> None:
        super().__init__()
        self.max_width = max_width
        self.width_embedding = nn.Embedding(max_width + 1, width_dim)
        self.proj = nn.Sequential(
            nn.Linear(3 * in_dim + width_dim, d_model), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(d_model)
        )

    def forward(self, words: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """words (B, N, H); spans (B, U, 2) word offsets, end exclusive, in range -> (B, U, d_model)."""
        n = words.size(1)
        start = spans[..., 0].clamp(0, n - 1)
        end = (spans[..., 1] - 1).clamp(0, n - 1)
        width = (spans[..., 1] - spans[..., 0]).clamp(1, self.max_width)
        # sizes from the modules, not the tensors: constants in a traced graph, so the splits fold away
        linear, wd = self.proj[0], self.width_embedding.embedding_dim
        assert isinstance(linear, nn.Linear)
        k = (linear.in_features - wd) // 3
        w_start, w_end, w_pool, w_width = linear.weight.split([k, k, k, wd], dim=1)
        at_start = gather_rows(F.linear(words, w_start), start)  # (B, U, d)
        at_end = gather_rows(F.linear(words, w_end), end)
        width_table = F.linear(
            self.width_embedding.weight, w_width, linear.bias
        )  # (W + 1, d), bias folded in
        pre = at_start + at_end + F.linear(self._max_pool(words, start, width), w_pool) + width_table[width]
        return self.proj[1:](pre)

    def _max_pool(self, words: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        # running[w-1][b, i] = max(words[b, i : i + w]) for every start at once: W small maxes instead of U
        # loops. Past the last word the window reads padding rows; only spans that end in range are used.
        n, w_max = words.size(1), self.max_width
        padded = torch.cat([words, words[:, -1:].expand(-1, w_max - 1, -1)], dim=1)  # (B, N + W - 1, H)
        running = [words]
        for w in range(1, w_max):
            running.append(torch.maximum(running[-1], padded[:, w : w + n]))
        table = torch.stack(running, dim=2).flatten(1, 2)  # (B, N·W, H): slot i·W + (w - 1)
        return gather_rows(table, start * w_max + (width - 1))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), index (B, U) in [0, N) -> (B, U, D) with out[b, u] = x[b, index[b, u]]. As one row
    gather over the flattened batch, a traced graph gets a Gather of rows, not a GatherElements whose
    index must be expanded to the full (B, U, D) output."""
    b, n = x.size(0), x.size(1)
    offset = torch.arange(b, device=x.device).unsqueeze(1) * n  # (B, 1)
    return x.flatten(0, 1)[index + offset]


class PairRepresentation(nn.Module):
    """MRE pair: [h; t; h*t; |h - t|] projected to ``d_model``."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(4 * d_model, d_model), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(d_model)
        )

    def forward(self, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([head, tail, head * tail, (head - tail).abs()], dim=-1))
