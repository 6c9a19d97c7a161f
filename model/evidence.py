"""Evidence channels (image features and text about the image) projected into the unit space.

A post's evidence is a list of M items (images, or captions standing in for them). Each item may carry a
global image vector, region vectors and an evidence-text embedding; whichever channels the config enables
and the item has are summed into one item vector, which the selector compares with the unit's query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PostEvidence:
    """Evidence for one post; every present tensor has the same first dimension M.

    ``text``/``image``/``regions`` are what the Set Transformer reads (the detail tier for real images);
    ``screen_text``/``screen_image``, when present, are the cheap tier the selector compares units with
    (the service screens every fetched image, then detail-encodes only the selected ones). Captions have
    one tier: the screen fields stay None and selection reads the same vectors.
    """

    text: torch.Tensor | None = None  # (M, H_text) caption / tag embeddings
    image: torch.Tensor | None = None  # (M, D_v) global image vectors
    regions: torch.Tensor | None = None  # (M, R, D_v) region grid
    screen_text: torch.Tensor | None = None  # (M, H_text) screen-tier tag embeddings
    screen_image: torch.Tensor | None = None  # (M, D_v) screen-tier global vectors

    def __len__(self) -> int:
        for t in (self.text, self.image):
            if t is not None:
                return t.size(0)
        return 0


class EvidenceEncoder(nn.Module):
    def __init__(self, text_dim: int, vision_dim: int, d: int, channels: tuple[str, ...]) -> None:
        super().__init__()
        self.channels = channels
        self.text_proj = nn.Linear(text_dim, d)
        self.image_proj = nn.Linear(vision_dim, d)
        self.kind = nn.Embedding(2, d)  # 0 = item (global) token, 1 = region token
        self.norm = nn.LayerNorm(d)

    def uses(self, evidence: PostEvidence) -> PostEvidence:
        """Drop the channels this model was not trained to read."""
        return PostEvidence(
            text=evidence.text if "text" in self.channels else None,
            image=evidence.image if "image" in self.channels else None,
            regions=evidence.regions if "image" in self.channels else None,
        )

    def items(self, evidence: PostEvidence) -> torch.Tensor:
        """(M, d) item vectors: the selector's space and the global tokens of the set transformer."""
        ev = self.uses(evidence)
        parts = []
        if ev.text is not None:
            parts.append(self.text_proj(ev.text))
        if ev.image is not None:
            parts.append(self.image_proj(ev.image))
        if not parts:
            raise ValueError(
                "evidence has none of the channels this model reads: " + ", ".join(self.channels)
            )
        return self.norm(torch.stack(parts).sum(0) + self.kind.weight[0])

    def screen_items(self, evidence: PostEvidence) -> torch.Tensor:
        """(M, d) the selector's item vectors: the screen tier where the evidence has one."""
        if evidence.screen_text is None and evidence.screen_image is None:
            return self.items(evidence)
        return self.items(PostEvidence(text=evidence.screen_text, image=evidence.screen_image))

    def tokens(
        self, evidence: PostEvidence, selected: list[int], queries: torch.Tensor, top_regions: int
    ) -> torch.Tensor:
        """Tokens for a group of units sharing one selection: (n_units, T, d) with T = k (1 + R')."""
        ev = self.uses(evidence)
        n = queries.size(0)
        items = self.items(ev)[selected]  # (k, d)
        regions = None if ev.regions is None else self.regions(ev.regions[selected])  # (k, R, d)
        return self.unit_tokens(
            items.unsqueeze(0).expand(n, -1, -1),
            None if regions is None else regions.unsqueeze(0).expand(n, -1, -1, -1),
            queries,
            top_regions,
        )

    def regions(self, regions: torch.Tensor) -> torch.Tensor:
        """(..., R, D_v) region vectors -> (..., R, d) region tokens."""
        return self.norm(self.image_proj(regions) + self.kind.weight[1])

    def unit_tokens(
        self, items: torch.Tensor, regions: torch.Tensor | None, queries: torch.Tensor, top_regions: int
    ) -> torch.Tensor:
        """Per unit: its k item tokens (A, k, d), then of each item's region tokens (A, k, R, d) the R' most
        like the unit's query (A, d) -> (A, k + k R', d), items first, then regions item by item."""
        if regions is None or top_regions <= 0:
            return items
        r, d = regions.shape[2], regions.shape[3]
        q = F.normalize(queries, dim=-1)[:, None, None, :]
        scores = (q * F.normalize(regions, dim=-1)).sum(-1)  # (A, k, R) cosines
        top = scores.topk(min(top_regions, r), dim=-1).indices  # (A, k, R')
        picked = torch.gather(regions, 2, top.unsqueeze(-1).expand(-1, -1, -1, d))  # (A, k, R', d)
        return torch.cat([items, picked.flatten(1, 2)], dim=1)
