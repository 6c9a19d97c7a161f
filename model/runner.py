"""One synchronous runner for a ``SaverPipeline``: every stage in order, as the service runs them.

Warm-up, tests and benchmarks call this instead of wiring the stages by hand; only the service's engine
adds the asynchronous parts (fetching with a budget, the executor, micro-batching).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from model.pipeline import (
    DetailedImage,
    MnerResult,
    MreResult,
    SaverPipeline,
    ScreenedImage,
    TextRequest,
    TextResult,
    VisionMode,
)

T = TypeVar("T")
Timer = Callable[..., Any]  # (stage name, fn, *args) -> fn(*args), e.g. to time each stage


def _direct(_stage: str, fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


@dataclass
class StagedRun:
    """What each stage produced for one post."""

    text: TextResult
    wanted: np.ndarray  # (U,) bool: the gate's decision
    activated: np.ndarray  # (U,) bool: units that had images to look at
    selected: list[list[int]]  # per unit, indices into the post's images
    result: MnerResult | MreResult
    screened: list[ScreenedImage] = field(default_factory=list)
    detailed: dict[int, DetailedImage] = field(default_factory=dict)


def run_pipeline(
    pipeline: SaverPipeline,
    request: TextRequest,
    images: Sequence[Image.Image] = (),
    mode: VisionMode = "auto",
    stage: Timer = _direct,
) -> StagedRun:
    """text -> gate -> (only if a unit is activated and there are images) screen -> select -> detail -> fuse.

    ``stage(name, fn, *args)`` runs each stage (names: encode_text, activation, screen, select, detail,
    fuse); a benchmark passes one that times them."""
    text = stage(
        "encode_text", pipeline.encode_text, request.text, request.tokens, request.head, request.tail
    )
    wanted = np.asarray(stage("activation", pipeline.activation, text, mode), dtype=bool)
    activated = np.zeros_like(wanted)
    selected: list[list[int]] = [[] for _ in wanted]
    screened: list[ScreenedImage] = []
    detailed: dict[int, DetailedImage] = {}
    if wanted.any() and images:
        screened = stage("screen", pipeline.screen, list(images))
        selected = stage("select", pipeline.select, text, wanted, screened)
        needed = sorted({i for sel in selected for i in sel})
        detailed = dict(
            zip(needed, stage("detail", pipeline.detail, [images[i] for i in needed]), strict=True)
        )
        activated = wanted
    result = stage("fuse", pipeline.fuse, text, activated, selected, detailed, dict(enumerate(screened)))
    return StagedRun(text, wanted, activated, selected, result, screened, detailed)
