"""One task's request path (SPEC §6): text first, gate, and vision only when some unit asks for it.

Every CPU-bound stage runs in the shared bounded executor, never on the event loop, and is timed for
both the response (``timings_ms``) and ``saver_stage_duration_seconds``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from model.pipeline import (
    BatchTextEncoder,
    DetailedImage,
    MnerResult,
    MreResult,
    SaverPipeline,
    ScreenedImage,
    TextRequest,
    TextResult,
    VisionMode,
)
from model.runner import run_pipeline
from service.batching import TextBatcher
from service.cache import ScreenCache
from service.metrics import ServiceMetrics
from service.schemas import ModelInfo, Options
from service.vision import NO_IMAGES, Fetcher, StageRunner, VisionOutcome, VisionPath

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGES = ("text_encode", "gate", "fetch", "screen", "select", "detail", "fuse")
UNTRAINED_WARNING = "untrained: randomly initialised weights"


@dataclass(frozen=True)
class BatchPost:
    """One valid item of a batch, as the engine needs it."""

    request: TextRequest
    urls: list[str]
    options: Options

    @property
    def length(self) -> int:
        """Rough word count, to group posts of similar length (grouping changes padding, not answers)."""
        r = self.request
        return len(r.tokens) if r.tokens is not None else len((r.text or "").split())


@dataclass
class Inference:
    """Everything a response is built from."""

    text: TextResult
    wanted: np.ndarray  # (U,) bool: the gate's decision
    result: MnerResult | MreResult
    vision: VisionOutcome | None  # None when no vision work was done
    fallback: str | None
    images_requested: int
    timings: dict[str, float]  # seconds per stage
    mode: VisionMode = "auto"  # the request's vision option


def model_info(pipeline: SaverPipeline) -> ModelInfo:
    return ModelInfo(
        name=pipeline.name,
        version=pipeline.version,
        trained=pipeline.trained,
        # a pipeline may say why it is not trained (the fake says it is a fake); else: random weights
        warning=None if pipeline.trained else (getattr(pipeline, "warning", None) or UNTRAINED_WARNING),
    )


def shown_threshold(pipeline: SaverPipeline) -> float | None:
    """JSON has no infinity: a never-activate threshold is reported as null."""
    return None if math.isinf(pipeline.threshold) else float(pipeline.threshold)


class TaskEngine:
    def __init__(
        self,
        task: str,
        pipeline: SaverPipeline,
        executor: Executor,
        fetcher: Fetcher,
        metrics: ServiceMetrics,
        default_budget_ms: int,
        cache_entries: int,
    ) -> None:
        self.task = task
        self.pipeline = pipeline
        self.executor = executor
        self.metrics = metrics
        self.default_budget_ms = default_budget_ms
        self.cache = ScreenCache(cache_entries)
        self.vision = VisionPath(pipeline, self.cache, fetcher)
        self.info = model_info(pipeline)
        self.batcher: TextBatcher | None = None  # set by enable_microbatch

    def enable_microbatch(self, max_wait_s: float, max_batch: int) -> bool:
        """Route encode_text through a micro-batcher; False when the pipeline cannot batch its text."""
        if not isinstance(self.pipeline, BatchTextEncoder):
            log.warning("%s pipeline has no encode_text_batch: micro-batching stays off", self.task)
            return False
        self.batcher = TextBatcher(self.pipeline, self._offload, max_wait_s, max_batch)
        return True

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()  # keeps the request id in log records written by the model
        return await loop.run_in_executor(self.executor, functools.partial(ctx.run, fn, *args))

    async def infer(
        self,
        text: str | None,
        tokens: list[str] | None,
        urls: list[str],
        options: Options,
        head: tuple[int, int] | None = None,
        tail: tuple[int, int] | None = None,
    ) -> Inference:
        timings = dict.fromkeys(STAGES, 0.0)

        async def stage(name: str, fn: Callable[..., T], *args: Any) -> T:
            started = time.perf_counter()
            try:
                return await self._offload(fn, *args)
            finally:
                timings[name] += time.perf_counter() - started

        if self.batcher is None:
            text_result = await stage("text_encode", self.pipeline.encode_text, text, tokens, head, tail)
        else:  # the batch wait counts as text_encode time: it is what the request paid
            started = time.perf_counter()
            text_result = await self.batcher.encode(TextRequest(text, tokens, head, tail))
            timings["text_encode"] += time.perf_counter() - started
        return await self.finish(text_result, urls, options, timings, stage)

    async def finish(
        self,
        text_result: TextResult,
        urls: list[str],
        options: Options,
        timings: dict[str, float],
        stage: StageRunner,
        deadline: float | None = None,
    ) -> Inference:
        """Everything after the text stage: gate, vision if asked for, fuse. The batch route calls it per
        item; ``deadline`` (``time.monotonic()``) then replaces the item's own vision budget, so that all
        items of a batch fetch under one budget."""
        mode: VisionMode = options.vision
        # The gate decision is a comparison over the U scores already computed with the text: run it
        # inline, since a hop through the executor would cost more than the work under load.
        started = time.perf_counter()
        wanted = np.asarray(self.pipeline.activation(text_result, mode), dtype=bool)
        timings["gate"] += time.perf_counter() - started

        outcome: VisionOutcome | None = None
        fallback: str | None = None
        activated = np.zeros_like(wanted)
        selected: list[list[int]] = [[] for _ in wanted]
        details: dict[int, DetailedImage] = {}
        screened: dict[int, ScreenedImage] = {}
        if not wanted.any():
            pass  # nothing asked for vision: no network, no image work
        elif not urls:
            fallback = NO_IMAGES
        else:
            budget_ms = options.vision_budget_ms
            budget_s = (self.default_budget_ms if budget_ms is None else budget_ms) / 1000.0
            if deadline is not None:
                budget_s = min(budget_s, max(0.0, deadline - time.monotonic()))

            def add_fetch_time(seconds: float) -> None:
                timings["fetch"] += seconds

            outcome = await self.vision.run(text_result, wanted, urls, budget_s, stage, add_fetch_time)
            activated, selected = outcome.activated, outcome.selected
            details, screened, fallback = outcome.details, outcome.screened, outcome.fallback

        result = await stage("fuse", self.pipeline.fuse, text_result, activated, selected, details, screened)
        inference = Inference(text_result, wanted, result, outcome, fallback, len(urls), timings, mode)
        self._record(inference)
        return inference

    async def infer_many(self, posts: Sequence[BatchPost], group_size: int) -> list[Inference | Exception]:
        """Many posts (the batch routes, ``saver predict``): their text encoded in length-grouped batches
        through ``encode_text_batch``, then every post finished concurrently, the vision of all activated
        posts under one budget. One outcome per post, in order; a post that fails gets its exception and
        never fails the others."""
        timings = [dict.fromkeys(STAGES, 0.0) for _ in posts]
        texts: list[TextResult | Exception] = await self._encode_grouped(posts, group_size, timings)
        deadline = time.monotonic() + self.default_budget_ms / 1000.0

        async def one(i: int) -> Inference | Exception:
            text = texts[i]
            if isinstance(text, Exception):
                return text

            async def stage(name: str, fn: Callable[..., T], *args: Any) -> T:
                started = time.perf_counter()
                try:
                    return await self._offload(fn, *args)
                finally:
                    timings[i][name] += time.perf_counter() - started

            try:
                return await self.finish(text, posts[i].urls, posts[i].options, timings[i], stage, deadline)
            except Exception as exc:  # reported per item; the others go on
                log.exception("batch item %d failed", i)
                return exc

        return list(await asyncio.gather(*(one(i) for i in range(len(posts)))))

    async def _encode_grouped(
        self, posts: Sequence[BatchPost], group_size: int, timings: list[dict[str, float]]
    ) -> list[TextResult | Exception]:
        """Posts of similar length share a forward (little padding); a group that fails is retried post by
        post, so that only the bad post fails."""
        out: list[TextResult | Exception] = [ValueError("not encoded")] * len(posts)
        order = sorted(range(len(posts)), key=lambda i: posts[i].length)
        for g in range(0, len(order), max(1, group_size)):
            group = order[g : g + group_size]
            started = time.perf_counter()
            results: list[TextResult | Exception]
            try:
                results = list(await self._offload(self.pipeline_batch, [posts[i].request for i in group]))
            except Exception:
                if len(group) > 1:
                    log.warning("batched text encoding of %d posts failed; retrying one by one", len(group))
                results = []
                for i in group:
                    try:
                        results.append((await self._offload(self.pipeline_batch, [posts[i].request]))[0])
                    except Exception as exc:
                        results.append(exc)
            elapsed = time.perf_counter() - started
            for i, result in zip(group, results, strict=True):
                out[i] = result
                timings[i]["text_encode"] += elapsed  # what each post of the group waited for its text
        return out

    def pipeline_batch(self, requests: list[TextRequest]) -> list[TextResult]:
        """``encode_text_batch`` where the pipeline has it, else ``encode_text`` post by post."""
        if isinstance(self.pipeline, BatchTextEncoder):
            return self.pipeline.encode_text_batch(requests)
        return [self.pipeline.encode_text(r.text, r.tokens, r.head, r.tail) for r in requests]

    def _record(self, inf: Inference) -> None:
        m, ep = self.metrics, self.task
        for name, seconds in inf.timings.items():
            if seconds > 0:
                m.stage_duration.labels(endpoint=ep, stage=name).observe(seconds)
        n_wanted = int(inf.wanted.sum())
        decision = "activated" if n_wanted else "skipped"
        m.gate_requests.labels(endpoint=ep, decision=decision, mode=inf.mode).inc()
        m.gate_units.labels(endpoint=ep, decision="activated", mode=inf.mode).inc(n_wanted)
        m.gate_units.labels(endpoint=ep, decision="skipped", mode=inf.mode).inc(len(inf.wanted) - n_wanted)
        if inf.vision is None:
            m.images.labels(endpoint=ep, outcome="skipped").inc(inf.images_requested)
        else:
            v = inf.vision
            m.images.labels(endpoint=ep, outcome="fetched").inc(v.fetched)
            m.images.labels(endpoint=ep, outcome="cache_hit").inc(v.cache_hits)
            m.images.labels(endpoint=ep, outcome="failed").inc(v.failed)
            m.images.labels(endpoint=ep, outcome="selected").inc(len(v.details))
        if inf.fallback is not None:
            m.vision_fallbacks.labels(endpoint=ep, reason=inf.fallback).inc()
        m.screen_cache_entries.labels(endpoint=ep).set(len(self.cache))

    def warm_up(self) -> None:
        """One full text + vision pass on a synthetic post, so the first request pays no lazy init."""
        if self.task == "mre":
            request = TextRequest("Alice met Bob in Paris", head=(0, 1), tail=(2, 3))
        else:
            request = TextRequest("Alice met Bob in Paris with the New York Times")
        if self.batcher is not None:  # the batched shapes too, so the first concurrent burst pays no warm-up
            self.batcher.pipeline.encode_text_batch([request, request])
        image = Image.linear_gradient("L").convert("RGB").resize((224, 224))
        run_pipeline(
            self.pipeline, request, [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], "always"
        )
