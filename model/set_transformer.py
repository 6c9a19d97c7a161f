"""Set Transformer (Lee et al., 2019): SAB / ISAB blocks and PMA pooling; permutation invariant."""

from __future__ import annotations

import torch
from torch import nn


class MAB(nn.Module):
    """Multihead attention block: H = LN(X + Attn(X, Y)); out = LN(H + FF(H))."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x + self.attn(x, y, y, key_padding_mask=y_pad, need_weights=False)[0])
        return self.ln2(h + self.ff(h))


class SAB(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.mab = MAB(d, heads, dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(x, x, pad)


class ISAB(nn.Module):
    """Induced SAB: attention through m inducing points, O(n·m) instead of O(n²)."""

    def __init__(self, d: int, heads: int, inducing: int, dropout: float) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, inducing, d) * 0.02)
        self.mab1 = MAB(d, heads, dropout)
        self.mab2 = MAB(d, heads, dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mab1(self.inducing.expand(x.size(0), -1, -1), x, pad)
        return self.mab2(x, h)


class PMA(nn.Module):
    """Pooling by multihead attention with learned seeds."""

    def __init__(self, d: int, heads: int, seeds: int, dropout: float) -> None:
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, seeds, d) * 0.02)
        self.mab = MAB(d, heads, dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(self.seeds.expand(x.size(0), -1, -1), x, pad)


class SetPooler(nn.Module):
    """Encoder blocks then PMA with one seed: a set of evidence tokens -> one evidence vector e(u)."""

    def __init__(self, d: int, heads: int, blocks: int, inducing: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ISAB(d, heads, inducing, dropout) if inducing > 0 else SAB(d, heads, dropout)
            for _ in range(blocks)
        )
        self.pool = PMA(d, heads, 1, dropout)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (A, T, D), pad (A, T) True = padding -> (A, D)."""
        x = tokens
        for block in self.blocks:
            x = block(x, pad)
            if pad is not None:
                x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        return self.pool(x, pad).squeeze(1)
