"""One task's request path (SPEC §6): text first, gate, and vision only when some unit asks for it.

Every CPU-bound stage runs in the shared bounded executor, never on the event loop, and is timed by the
request's ``StageClock`` for the response (``timings_ms``), ``saver_stage_duration_seconds`` and, when
tracing is on, one span per stage.
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
from typing import TYPE_CHECKING, Any, TypeVar

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
from service.stageclock import StageClock
from service.vision import NO_IMAGES, Fetcher, FetchResult, StageRunner, VisionOutcome, VisionPath

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

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


def gate_attributes(pipeline: SaverPipeline, mode: VisionMode, wanted: np.ndarray) -> dict[str, Any]:
    """The gate's decision as span attributes (JSON has no infinity, neither do they)."""
    attributes: dict[str, Any] = {
        "saver.gate.mode": mode,
        "saver.gate.units": len(wanted),
        "saver.gate.units_activated": int(wanted.sum()),
    }
    threshold = shown_threshold(pipeline)
    if threshold is not None:
        attributes["saver.gate.tau"] = threshold
    return attributes


def outcome_attributes(inf: Inference) -> dict[str, Any]:
    """What became of the request's images, as attributes of its server span."""
    v = inf.vision
    attributes: dict[str, Any] = {
        "saver.images.requested": inf.images_requested,
        "saver.images.fetched": 0 if v is None else v.fetched,
        "saver.images.failed": 0 if v is None else v.failed,
        "saver.images.cache_hits": 0 if v is None else v.cache_hits,
        "saver.images.selected": 0 if v is None else len(v.details),
        "saver.units_with_images": 0 if v is None else int(v.activated.sum()),
    }
    if inf.fallback is not None:
        attributes["saver.fallback"] = inf.fallback
    return attributes


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
        tracer: Tracer | None = None,
        trace_urls: bool = False,
    ) -> None:
        self.task = task
        self.tracer = tracer  # None: tracing off
        self.trace_urls = trace_urls  # image URLs in spans (DEBUG only)
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

    def _stage_runner(self, clock: StageClock) -> StageRunner:
        """Runs one CPU-bound stage in the executor, timed on the request's clock."""

        async def stage(name: str, fn: Callable[..., T], *args: Any) -> T:
            started = clock.now()
            try:
                return await self._offload(fn, *args)
            finally:
                clock.add(name, started, clock.now())

        return stage

    async def infer(
        self,
        text: str | None,
        tokens: list[str] | None,
        urls: list[str],
        options: Options,
        head: tuple[int, int] | None = None,
        tail: tuple[int, int] | None = None,
    ) -> Inference:
        clock = StageClock(STAGES, self.tracer, self.trace_urls)
        stage = self._stage_runner(clock)
        if self.batcher is None:
            text_result = await stage("text_encode", self.pipeline.encode_text, text, tokens, head, tail)
        else:  # the batch wait counts as text_encode time: it is what the request paid
            started = clock.now()
            text_result = await self.batcher.encode(TextRequest(text, tokens, head, tail))
            clock.add("text_encode", started, clock.now())
        return await self.finish(text_result, urls, options, clock, stage)

    async def finish(
        self,
        text_result: TextResult,
        urls: list[str],
        options: Options,
        clock: StageClock,
        stage: StageRunner,
        deadline: float | None = None,
    ) -> Inference:
        """Everything after the text stage: gate, vision if asked for, fuse. The batch route calls it per
        item; ``deadline`` (``time.monotonic()``) then replaces the item's own vision budget, so that all
        items of a batch fetch under one budget."""
        mode: VisionMode = options.vision

        def add_fetch(started: float, urls: list[str], results: Sequence[FetchResult]) -> None:
            clock.add_fetch(started, clock.now(), urls, results)

        # The gate decision is a comparison over the U scores already computed with the text: run it
        # inline, since a hop through the executor would cost more than the work under load.
        started = clock.now()
        wanted = np.asarray(self.pipeline.activation(text_result, mode), dtype=bool)
        gate = gate_attributes(self.pipeline, mode, wanted) if self.tracer is not None else None
        clock.add("gate", started, clock.now(), gate)

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
            outcome = await self.vision.run(text_result, wanted, urls, budget_s, stage, add_fetch)
            activated, selected = outcome.activated, outcome.selected
            details, screened, fallback = outcome.details, outcome.screened, outcome.fallback

        result = await stage("fuse", self.pipeline.fuse, text_result, activated, selected, details, screened)
        inference = Inference(text_result, wanted, result, outcome, fallback, len(urls), clock.timings, mode)
        self._record(inference)
        if self.tracer is not None:
            clock.annotate(outcome_attributes(inference))
        return inference

    async def infer_many(self, posts: Sequence[BatchPost], group_size: int) -> list[Inference | Exception]:
        """Many posts (the batch routes, ``saver predict``): their text encoded in length-grouped batches
        through ``encode_text_batch``, then every post finished concurrently, the vision of all activated
        posts under one budget. One outcome per post, in order; a post that fails gets its exception and
        never fails the others."""
        clocks = [StageClock(STAGES, self.tracer, self.trace_urls) for _ in posts]
        texts: list[TextResult | Exception] = await self._encode_grouped(posts, group_size, clocks)
        deadline = time.monotonic() + self.default_budget_ms / 1000.0

        async def one(i: int) -> Inference | Exception:
            text = texts[i]
            if isinstance(text, Exception):
                return text

            clock = clocks[i]
            stage = self._stage_runner(clock)
            try:
                return await self.finish(text, posts[i].urls, posts[i].options, clock, stage, deadline)
            except Exception as exc:  # reported per item; the others go on
                log.exception("batch item %d failed", i)
                return exc

        return list(await asyncio.gather(*(one(i) for i in range(len(posts)))))

    async def _encode_grouped(
        self, posts: Sequence[BatchPost], group_size: int, clocks: list[StageClock]
    ) -> list[TextResult | Exception]:
        """Posts of similar length share a forward (little padding); a group that fails is retried post by
        post, so that only the bad post fails."""
        out: list[TextResult | Exception] = [ValueError("not encoded")] * len(posts)
        order = sorted(range(len(posts)), key=lambda i: posts[i].length)
        for g in range(0, len(order), max(1, group_size)):
            group = order[g : g + group_size]
            started = StageClock.now()
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
            ended = StageClock.now()
            for i, result in zip(group, results, strict=True):
                out[i] = result
                clocks[i].add("text_encode", started, ended)  # what each post of the group waited for
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
