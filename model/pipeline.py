"""The staged inference interface the service drives: text first, then vision only when a unit asks.

A request runs ``encode_text`` -> ``activation`` -> (only if any unit is activated) ``screen`` ->
``select`` -> ``detail`` -> ``fuse``. Each stage is a separate call so the caller can time it, skip it,
or give up on vision (budget, failed fetch) and still call ``fuse`` with nothing activated, which is the
exact text-only answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from model.tokenize import Word

VisionMode = Literal["auto", "always", "never"]
Task = Literal["mner", "mre"]
Pair = tuple[tuple[int, int], tuple[int, int]]  # MRE (head, tail) word spans, end exclusive
MAX_IMAGES_PER_POST = 8  # images a post may carry: the API's cap, and what evaluation reads of a manifest


@dataclass
class TextResult:
    """Everything the text stage computed for one post; ``state`` is opaque to callers."""

    text: str
    words: list[Word]
    units: list[tuple[int, int]]  # MNER: candidate spans (word start, word end exclusive); MRE: [head, tail]
    gate: np.ndarray  # (U,) gate score per unit (MRE: one pair score)
    state: Any = None


@dataclass(frozen=True)
class TextRequest:
    """The inputs of one ``encode_text`` call, so several can be encoded in one batched forward."""

    text: str | None = None
    tokens: list[str] | None = None
    head: tuple[int, int] | None = None  # MRE only: word span, end exclusive
    tail: tuple[int, int] | None = None


@dataclass
class ScreenedImage:
    """Cheap per-image summary used for selection and cached by URL."""

    vector: np.ndarray  # (D,) selector-space vector
    tags: list[str] = field(default_factory=list)  # top-k backbone tags (ImageNet classes for the default)
    payload: Any = None  # backend-specific tensors reused by fuse (e.g. evidence text embedding)


@dataclass
class DetailedImage:
    """Full encoding of a selected image: global vector plus region vectors."""

    payload: Any = None


@dataclass
class MnerEntity:
    text: str
    type: str
    score: float
    start: int  # character offsets into the text
    end: int
    token_start: int  # word offsets, end exclusive
    token_end: int
    gate: float
    activated: bool
    images: list[int]  # indices into the request's image list that fed this entity


@dataclass
class MnerResult:
    entities: list[MnerEntity]


@dataclass
class MreResult:
    relation: str
    score: float
    top: list[tuple[str, float]]
    gate: float
    activated: bool
    images: list[int]


@runtime_checkable
class SaverPipeline(Protocol):
    task: Task
    labels: list[str]
    trained: bool  # False for a randomly initialised model; the service says "untrained" then
    name: str
    version: str

    @property
    def threshold(self) -> float:
        """Calibrated gate threshold τ (inf = never activate)."""
        ...

    def encode_text(
        self,
        text: str | None = None,
        tokens: list[str] | None = None,
        head: tuple[int, int] | None = None,  # MRE only: word span, end exclusive
        tail: tuple[int, int] | None = None,
    ) -> TextResult: ...

    def activation(self, result: TextResult, mode: VisionMode) -> np.ndarray:
        """(U,) bool: which units consult vision."""
        ...

    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]: ...

    def select(
        self, result: TextResult, activated: np.ndarray, screened: list[ScreenedImage]
    ) -> list[list[int]]:
        """Per unit, the chosen image indices (empty for units not activated)."""
        ...

    def detail(self, images: list[Image.Image]) -> list[DetailedImage]: ...

    def fuse(
        self,
        result: TextResult,
        activated: np.ndarray,
        selected: list[list[int]],
        details: dict[int, DetailedImage],
        screened: dict[int, ScreenedImage],
    ) -> MnerResult | MreResult:
        """Score every unit; units not activated (or whose images are missing) get the text-only score."""
        ...


@runtime_checkable
class BatchTextEncoder(Protocol):
    """A pipeline that can run the text stage of several posts in one forward (service micro-batching)."""

    def encode_text_batch(self, requests: Sequence[TextRequest]) -> list[TextResult]:
        """One ``TextResult`` per request, in order, each equal (within float tolerance) to ``encode_text``."""
        ...
