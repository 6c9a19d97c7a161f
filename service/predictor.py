"""What the routes call: admission, deadline, the operator's limits, and turning inferences into responses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from model.pipeline import MnerResult, MreResult
from service.admission import Admission
from service.batch import run_batch
from service.batch_schemas import (
    BatchTimings,
    MnerBatchItem,
    MnerBatchRequest,
    MnerBatchResponse,
    MreBatchItem,
    MreBatchRequest,
    MreBatchResponse,
)
from service.engine import Inference, TaskEngine, shown_threshold
from service.errors import InferenceTimeout, InvalidInput, NotReady
from service.metrics import ServiceMetrics
from service.schemas import (
    Entity,
    ImageError,
    MnerRequest,
    MnerResponse,
    MreRequest,
    MreResponse,
    PairVision,
    PostRequest,
    RelationScore,
    Timings,
    UnitVision,
    VisionSummary,
)
from service.settings import Settings
from service.spans import resolve_pair

log = logging.getLogger(__name__)


class Predictor:
    def __init__(
        self,
        settings: Settings,
        engines: dict[str, TaskEngine],
        admission: Admission,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.admission = admission
        self.metrics = metrics
        self.ready = False  # True after warm-up; False again while draining at shutdown
        self.cards: list[dict[str, Any]] = []  # what /v1/models shows, one per loaded model
        if settings.microbatch:
            for engine in engines.values():
                engine.enable_microbatch(settings.microbatch_wait_ms / 1000.0, settings.microbatch_max)

    def model_cards(self) -> list[dict[str, Any]]:
        return self.cards

    def engine(self, task: str) -> TaskEngine:
        if not self.ready:
            raise NotReady("models are not loaded yet or the server is shutting down")
        if task not in self.engines:
            raise NotReady(f"no {task} model is loaded")
        return self.engines[task]

    def check_limits(self, req: PostRequest) -> None:
        """The operator's limits, which may be tighter than the schema's hard caps."""
        s = self.settings
        if req.text is not None and len(req.text) > s.max_text_chars:
            raise InvalidInput(f"`text` is longer than {s.max_text_chars} characters", field="text")
        if req.tokens is not None and len(" ".join(req.tokens)) > s.max_text_chars:
            raise InvalidInput(f"`tokens` exceed {s.max_text_chars} characters", field="tokens")
        if len(req.image_urls) > s.max_image_urls:
            raise InvalidInput(f"more than {s.max_image_urls} image URLs", field="image_urls")
        for i, url in enumerate(req.image_urls):
            if len(url) > s.max_url_chars:
                raise InvalidInput(f"URL longer than {s.max_url_chars} characters", field=f"image_urls.{i}")

    @asynccontextmanager
    async def admitted(self, endpoint: str) -> AsyncIterator[None]:
        """A compute slot within the request deadline; 429 when full, 504 when the deadline passes."""
        timeout_s = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout_s), self.admission.slot() as queued_s:
                self.metrics.stage_duration.labels(endpoint=endpoint, stage="queue").observe(queued_s)
                yield
        except TimeoutError:
            raise InferenceTimeout(f"inference did not finish within {timeout_s:g} s") from None

    async def mner(self, req: MnerRequest) -> MnerResponse:
        started = time.perf_counter()
        engine = self.engine("mner")
        self.check_limits(req)
        async with self.admitted("mner"):
            inf = await engine.infer(req.text, req.tokens, req.image_urls, req.options)
        return mner_response(engine, inf, started)

    async def mre(self, req: MreRequest) -> MreResponse:
        started = time.perf_counter()
        engine = self.engine("mre")
        self.check_limits(req)
        head, tail = resolve_pair(req.text, req.tokens, req.head, req.tail)
        async with self.admitted("mre"):
            inf = await engine.infer(req.text, req.tokens, req.image_urls, req.options, head, tail)
        return mre_response(engine, inf, started)

    async def mner_batch(self, body: MnerBatchRequest, name_items: bool = True) -> MnerBatchResponse:
        started = time.perf_counter()
        engine = self.engine("mner")
        items = await run_batch(self, engine, "mner", body.items, name_items)
        return MnerBatchResponse(
            items=[MnerBatchItem(**item.fields(mner_response, engine, started)) for item in items],
            model=engine.info,
            timings_ms=BatchTimings(total=round((time.perf_counter() - started) * 1000.0, 3)),
        )

    async def mre_batch(self, body: MreBatchRequest, name_items: bool = True) -> MreBatchResponse:
        started = time.perf_counter()
        engine = self.engine("mre")
        items = await run_batch(self, engine, "mre", body.items, name_items)
        return MreBatchResponse(
            items=[MreBatchItem(**item.fields(mre_response, engine, started)) for item in items],
            model=engine.info,
            timings_ms=BatchTimings(total=round((time.perf_counter() - started) * 1000.0, 3)),
        )


def mner_response(engine: TaskEngine, inf: Inference, started: float) -> MnerResponse:
    """The ``/mner`` answer of one inference: the single route and every batch item build it here."""
    assert isinstance(inf.result, MnerResult)
    entities = [
        Entity(
            text=e.text,
            type=e.type,
            score=e.score,
            start=e.start,
            end=e.end,
            token_start=e.token_start,
            token_end=e.token_end,
            vision=UnitVision(gate=e.gate, activated=e.activated, images=e.images),
        )
        for e in inf.result.entities
    ]
    return MnerResponse(
        entities=entities,
        vision=_summary(engine, inf),
        timings_ms=_timings(inf, started),
        model=engine.info,
    )


def mre_response(engine: TaskEngine, inf: Inference, started: float) -> MreResponse:
    """The ``/mre`` answer of one inference: the single route and every batch item build it here."""
    r = inf.result
    assert isinstance(r, MreResult)
    summary = _summary(engine, inf).model_dump()
    vision = PairVision(**summary, gate=r.gate, activated=r.activated, images=r.images)
    return MreResponse(
        relation=r.relation,
        score=r.score,
        top=[RelationScore(relation=label, score=score) for label, score in r.top],
        vision=vision,
        timings_ms=_timings(inf, started),
        model=engine.info,
    )


def _summary(engine: TaskEngine, inf: Inference) -> VisionSummary:
    v = inf.vision
    errors = sorted((v.errors if v else {}).items())
    return VisionSummary(
        threshold=shown_threshold(engine.pipeline),
        units_total=len(inf.wanted),
        units_activated=int(inf.wanted.sum()),
        images_requested=inf.images_requested,
        images_fetched=v.fetched if v else 0,
        images_selected=len(v.details) if v else 0,
        fallback=inf.fallback,
        image_errors=[ImageError(index=i, reason=reason) for i, reason in errors],
    )


def _timings(inf: Inference, started: float) -> Timings:
    """Stage times plus ``total``: the wall time of the whole request, queueing included."""
    ms = {name: round(seconds * 1000.0, 3) for name, seconds in inf.timings.items()}
    return Timings(**ms, total=round((time.perf_counter() - started) * 1000.0, 3))
