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
        """Tokens for a group of units sharing one selection: (n_units, T, d) with T = k (1 + R)."""
        ev = self.uses(evidence)
        items = self.items(ev)[selected]  # (k, d)
        tokens = items.unsqueeze(0).expand(queries.size(0), -1, -1)
        if ev.regions is None or top_regions <= 0:
            return tokens
        regions = self.norm(self.image_proj(ev.regions[selected]) + self.kind.weight[1])  # (k, R, d)
        k, r, d = regions.shape
        scores = F.normalize(queries, dim=-1) @ F.normalize(regions.reshape(k * r, d), dim=-1).t()  # (n, k*R)
        top = scores.view(-1, k, r).topk(min(top_regions, r), dim=-1).indices  # (n, k, R')
        flat = (top + torch.arange(k, device=top.device).view(1, k, 1) * r).flatten(1)  # (n, k*R')
        picked = regions.reshape(k * r, d)[flat]  # (n, k*R', d)
        return torch.cat([tokens, picked], dim=1)
