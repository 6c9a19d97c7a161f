"""Test instrumentation for the fake model, kept out of the product's ``FakePipeline``.

``InstrumentedFake`` is the plain fake plus what tests observe it by: the calls of every stage, the
images each stage saw, the size of every batched text call, and, optionally, one stage that blocks until
an event is set (to hold a request in flight, e.g. to fill the request queue).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from model.pipeline import (
    DetailedImage,
    MnerResult,
    MreResult,
    ScreenedImage,
    Task,
    TextRequest,
    TextResult,
    VisionMode,
)
from service.fake import FakePipeline

STAGES = ("encode_text", "encode_text_batch", "activation", "screen", "select", "detail", "fuse")


class InstrumentedFake(FakePipeline):
    """The fake model, counting its stage calls; ``block_stage`` waits on ``release`` before it runs."""

    def __init__(
        self,
        task: Task = "mner",
        *,
        block_stage: str | None = None,
        release: threading.Event | None = None,
        **kwargs: Any,
    ) -> None:
        if block_stage is not None and block_stage not in STAGES:
            raise ValueError(f"unknown stage {block_stage!r}; one of {STAGES}")
        super().__init__(task, **kwargs)
        self.block_stage = block_stage
        self.release = release
        self.entered = threading.Event()  # set when a call reaches the blocking stage
        self.calls: Counter[str] = Counter()  # stage -> number of calls
        self.images_seen: Counter[str] = Counter()  # stage -> number of images it was given
        self.batch_sizes: list[int] = []  # size of every encode_text_batch call
        self._lock = threading.Lock()

    def _enter(self, stage: str, n_images: int = 0) -> None:
        with self._lock:
            self.calls[stage] += 1
            self.images_seen[stage] += n_images
        if stage == self.block_stage and self.release is not None:
            self.entered.set()
            self.release.wait(timeout=30)

    def encode_text(
        self,
        text: str | None = None,
        tokens: list[str] | None = None,
        head: tuple[int, int] | None = None,
        tail: tuple[int, int] | None = None,
    ) -> TextResult:
        self._enter("encode_text")
        return super().encode_text(text, tokens, head, tail)

    def encode_text_batch(self, requests: Sequence[TextRequest]) -> list[TextResult]:
        self._enter("encode_text_batch")
        with self._lock:
            self.batch_sizes.append(len(requests))
        return super().encode_text_batch(requests)

    def activation(self, result: TextResult, mode: VisionMode) -> np.ndarray:
        self._enter("activation")
        return super().activation(result, mode)

    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]:
        self._enter("screen", len(images))
        return super().screen(images)

    def select(
        self, result: TextResult, activated: np.ndarray, screened: list[ScreenedImage]
    ) -> list[list[int]]:
        self._enter("select", len(screened))
        return super().select(result, activated, screened)

    def detail(self, images: list[Image.Image]) -> list[DetailedImage]:
        self._enter("detail", len(images))
        return super().detail(images)

    def fuse(
        self,
        result: TextResult,
        activated: np.ndarray,
        selected: list[list[int]],
        details: dict[int, DetailedImage],
        screened: dict[int, ScreenedImage],
    ) -> MnerResult | MreResult:
        self._enter("fuse")
        return super().fuse(result, activated, selected, details, screened)


def instrumented(**kwargs: Any) -> dict[str, InstrumentedFake]:
    """One instrumented fake per task, as ``apphelpers.fakes`` gives plain ones."""
    return {"mner": InstrumentedFake("mner", **kwargs), "mre": InstrumentedFake("mre", **kwargs)}
