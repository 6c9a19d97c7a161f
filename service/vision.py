"""The vision half of a request: fetch -> screen -> select -> detail, within the request's budget.

Reached only when the gate activated at least one unit. Images are keyed by URL inside a request (a URL
given twice is fetched once and reported under its first index). Screen summaries are cached by URL; a
cache hit skips fetching and screening, and the image is fetched again only if selected for detail.
Whatever fails or arrives late is reported per image, and units left without any image answer
text-only with a ``fallback`` reason.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from model.pipeline import DetailedImage, SaverPipeline, ScreenedImage, TextResult
from service.cache import ScreenCache

T = TypeVar("T")

BUDGET_EXCEEDED = "budget_exceeded"
NO_IMAGES = "no_images"


class FetchResult(Protocol):
    """What the engine needs of ``service.fetch.FetchOutcome``."""

    @property
    def image(self) -> Image.Image | None: ...
    @property
    def reason(self) -> str | None: ...


# (urls, absolute time.monotonic() deadline) -> one result per URL, in order
Fetcher = Callable[[list[str], float], Awaitable[Sequence[FetchResult]]]
# (stage name, blocking function, *args) -> its result, computed off the event loop and timed
StageRunner = Callable[..., Awaitable[Any]]
# (perf_counter start of one fetch round, its URLs, their results): times the round for the stage clock
FetchTimer = Callable[[float, list[str], Sequence[FetchResult]], None]


@dataclass
class VisionOutcome:
    activated: np.ndarray  # (U,) bool: units that really got image evidence
    selected: list[list[int]]  # per unit, request image indices that were detail-encoded for it
    details: dict[int, DetailedImage]
    screened: dict[int, ScreenedImage]
    errors: dict[int, str] = field(default_factory=dict)  # request image index -> reason
    fallback: str | None = None
    fetched: int = 0  # successful downloads, re-fetches for detail included
    failed: int = 0
    cache_hits: int = 0


def failure_reason(reason: str | None, deadline: float) -> str:
    """A fetch failure as reported: a timeout at the request's deadline is the budget's doing."""
    if reason == "timeout" and time.monotonic() >= deadline - 0.005:
        return BUDGET_EXCEEDED
    return f"fetch_failed:{reason or 'unknown'}"


class VisionPath:
    def __init__(self, pipeline: SaverPipeline, cache: ScreenCache, fetcher: Fetcher) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.fetcher = fetcher

    async def run(
        self,
        result: TextResult,
        activated: np.ndarray,
        urls: list[str],
        budget_s: float,
        stage: StageRunner,
        fetch_timer: FetchTimer,
    ) -> VisionOutcome:
        deadline = time.monotonic() + budget_s
        first_index: dict[str, int] = {}
        for i, url in enumerate(urls):
            first_index.setdefault(url, i)
        unique = list(first_index)
        out = VisionOutcome(activated=activated, selected=[], details={}, screened={})
        screened: dict[str, ScreenedImage] = {}
        images: dict[str, Image.Image] = {}
        errors: dict[str, str] = {}

        for url in unique:
            hit = self.cache.get(url)
            if hit is not None:
                screened[url] = hit
                out.cache_hits += 1
        missing = [u for u in unique if u not in screened]
        await self._fetch(missing, deadline, images, errors, out, fetch_timer)

        fresh = [u for u in missing if u in images]
        if fresh:
            summaries = await stage("screen", self.pipeline.screen, [images[u] for u in fresh])
            for url, summary in zip(fresh, summaries, strict=True):
                screened[url] = summary
                self.cache.put(url, summary)

        available = [u for u in unique if u in screened]
        chosen: list[list[str]] = [[] for _ in range(len(activated))]
        if available:
            picks = await stage(
                "select", self.pipeline.select, result, activated, [screened[u] for u in available]
            )
            chosen = [[available[i] for i in unit_picks] for unit_picks in picks]  # one list per gate unit

        needed = list(dict.fromkeys(u for unit_urls in chosen for u in unit_urls))
        await self._fetch([u for u in needed if u not in images], deadline, images, errors, out, fetch_timer)
        to_detail = [u for u in needed if u in images]
        if to_detail:
            encoded = await stage("detail", self.pipeline.detail, [images[u] for u in to_detail])
            out.details = {first_index[u]: d for u, d in zip(to_detail, encoded, strict=True)}

        out.screened = {first_index[u]: screened[u] for u in available}
        out.selected = [
            [first_index[u] for u in unit_urls if first_index[u] in out.details] for unit_urls in chosen
        ]
        out.activated = activated & np.array([bool(s) for s in out.selected], dtype=bool)
        out.errors = {first_index[u]: reason for u, reason in errors.items()}
        out.fallback = _fallback(activated, out, chosen, errors)
        return out

    async def _fetch(
        self,
        urls: list[str],
        deadline: float,
        images: dict[str, Image.Image],
        errors: dict[str, str],
        out: VisionOutcome,
        fetch_timer: FetchTimer,
    ) -> None:
        if not urls:
            return
        if time.monotonic() >= deadline:
            # Nothing can arrive in time: do not open a single connection.
            for url in urls:
                errors[url] = BUDGET_EXCEEDED
            out.failed += len(urls)
            return
        started = time.perf_counter()
        results = await self.fetcher(urls, deadline)
        fetch_timer(started, urls, results)
        for url, res in zip(urls, results, strict=True):
            if res.image is not None:
                images[url] = res.image
                out.fetched += 1
            else:
                errors[url] = failure_reason(res.reason, deadline)
                out.failed += 1


def _fallback(
    wanted: np.ndarray, out: VisionOutcome, chosen: list[list[str]], errors: dict[str, str]
) -> str | None:
    """Why activated units ended up text-only; None when every activated unit got images."""
    lost = [u for u in range(len(wanted)) if wanted[u] and not out.activated[u]]
    if not lost:
        return None
    # Prefer the failures of the images those units had picked, then any failure of the request.
    picked = [errors[url] for u in lost for url in chosen[u] if url in errors]
    reasons = picked or list(errors.values())
    if not reasons:
        return "no_selection"
    return BUDGET_EXCEEDED if BUDGET_EXCEEDED in reasons else reasons[0]
