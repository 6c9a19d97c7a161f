"""A tiny torch pipeline behind the ``SaverPipeline`` stage interface, with FLOPs known by construction.

Every stage is one ``nn.Linear`` on a known shape, so FlopCounterMode must report exactly:
text 2·8·16 = 256 per word, screen 2·12·10 = 240 per image, detail 2·12·20 = 480 per image, and fuse
2·16·4 = 128 per (activated unit, selected image); select is numpy (0 FLOPs) and picks min(2, n) images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

TEXT_PER_WORD, SCREEN_PER_IMAGE, DETAIL_PER_IMAGE, FUSE_PER_UNIT_IMAGE = 256, 240, 480, 128
SELECT_K = 2


@dataclass
class ToyResult:
    words: list[str]
    units: torch.Tensor  # (U, 16), one unit per word


class ToyPipeline:
    name, version = "toy", "1"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.ModuleDict(
            {
                "text": torch.nn.Linear(8, 16, bias=False),
                "screen": torch.nn.Linear(12, 10, bias=False),
                "detail": torch.nn.Linear(12, 20, bias=False),
                "fuse": torch.nn.Linear(16, 4, bias=False),
            }
        )

    @torch.inference_mode()
    def encode_text(self, text: str) -> ToyResult:
        words = text.split()
        return ToyResult(words, self.model["text"](torch.ones(len(words), 8)))

    def activation(self, result: ToyResult, mode: str) -> np.ndarray:
        if mode == "always":
            return np.ones(len(result.words), dtype=bool)
        if mode == "never":
            return np.zeros(len(result.words), dtype=bool)
        return np.array([w[:1].isupper() for w in result.words], dtype=bool)

    @torch.inference_mode()
    def screen(self, images: list[Image.Image]) -> list[torch.Tensor]:
        return list(self.model["screen"](torch.ones(len(images), 12)))

    def select(
        self, result: ToyResult, activated: np.ndarray, screened: list[torch.Tensor]
    ) -> list[list[int]]:
        picks = list(range(min(SELECT_K, len(screened))))
        return [picks if on else [] for on in activated]

    @torch.inference_mode()
    def detail(self, images: list[Image.Image]) -> list[torch.Tensor]:
        return list(self.model["detail"](torch.ones(len(images), 12)))

    @torch.inference_mode()
    def fuse(
        self,
        result: ToyResult,
        activated: np.ndarray,
        selected: list[list[int]],
        details: dict[int, torch.Tensor],
        screened: dict[int, torch.Tensor],
    ) -> list[int]:
        for unit, sel in enumerate(selected):
            if activated[unit] and sel and all(i in details for i in sel):
                self.model["fuse"](result.units[unit].expand(len(sel), 16))
        return []
