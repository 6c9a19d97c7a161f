"""Units: candidate spans for MNER (every span up to width W) and marked entity pairs for MRE."""

from __future__ import annotations

import torch
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
    """[h_start; h_end; max-pool; width embedding] projected to ``d_model``."""

    def __init__(self, in_dim: int, d_model: int, max_width: int, width_dim: int, dropout: float) -> None:
        super().__init__()
        self.max_width = max_width
        self.width_embedding = nn.Embedding(max_width + 1, width_dim)
        self.proj = nn.Sequential(
            nn.Linear(3 * in_dim + width_dim, d_model), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(d_model)
        )

    def forward(self, words: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """words (B, N, H); spans (B, U, 2) word offsets, end exclusive, in range -> (B, U, d_model)."""
        _, n, h = words.shape
        start = spans[..., 0].clamp(0, n - 1)
        end = (spans[..., 1] - 1).clamp(0, n - 1)
        width = (spans[..., 1] - spans[..., 0]).clamp(1, self.max_width)
        h_start = torch.gather(words, 1, start.unsqueeze(-1).expand(-1, -1, h))
        h_end = torch.gather(words, 1, end.unsqueeze(-1).expand(-1, -1, h))
        pooled = self._max_pool(words, start, width)
        rep = torch.cat([h_start, h_end, pooled, self.width_embedding(width)], dim=-1)
        return self.proj(rep)

    def _max_pool(self, words: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        # running[w-1][b, i] = max(words[b, i : i + w]) for every start at once: W small maxes instead of U loops
        b, n, h = words.shape
        running = [words]
        for w in range(1, self.max_width):
            shifted = torch.cat([words[:, w:], words[:, -1:].expand(-1, min(w, n), -1)], dim=1)
            running.append(torch.maximum(running[-1], shifted))
        table = torch.stack(running, dim=2)  # (B, N, W, H)
        flat = table.reshape(b, n * self.max_width, h)
        index = (start * self.max_width + (width - 1)).unsqueeze(-1).expand(-1, -1, h)
        return torch.gather(flat, 1, index)


class PairRepresentation(nn.Module):
    """MRE pair: [h; t; h*t; |h - t|] projected to ``d_model``."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(4 * d_model, d_model), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(d_model)
        )

    def forward(self, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([head, tail, head * tail, (head - tail).abs()], dim=-1))
