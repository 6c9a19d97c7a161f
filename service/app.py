"""The app factory: models loaded, warmed and wired in lifespan; nothing heavy at import time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from knowledge.handle import IndexHandle
from model.heap import release_freed_heap
from model.pipeline import SaverPipeline
from service.admission import Admission
from service.engine import TaskEngine, model_info, shown_threshold
from service.errors import install_error_handlers
from service.fetch import FetchPolicy, fetch_all, make_client
from service.loader import artifacts_dir, backbones_of, calibrated_coverage, calibration_of, load_pipelines
from service.metrics import ServiceMetrics, mark_worker_dead
from service.middleware import RequestContextMiddleware
from service.predictor import Predictor
from service.routes import router
from service.settings import Settings
from service.vision import Fetcher, FetchResult

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger(__name__)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        allow_loopback=settings.allow_loopback,
        max_bytes=settings.fetch_max_bytes,
        max_redirects=settings.fetch_max_redirects,
        max_url_length=settings.max_url_chars,
    )


def create_app(
    settings: Settings | None = None,
    pipelines: Mapping[str, SaverPipeline] | None = None,
    fetcher: Fetcher | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the service. ``pipelines`` (by task) replaces loading from the artifacts directories;
    ``fetcher`` replaces the SSRF-safe image fetcher (tests only); ``tracer_provider`` replaces the
    OTLP-exporting one when ``settings.tracing`` is on."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    own_provider = settings.tracing and tracer_provider is None
    if settings.tracing:
        # Imported here, not at the top: with tracing off the SDK must never load.
        from service import tracing

        tracer_provider = tracer_provider or tracing.make_tracer_provider()
    tracer = tracer_provider.get_tracer("saver.service") if settings.tracing and tracer_provider else None
    trace_urls = settings.log_level.upper() == "DEBUG"  # URLs in spans only where the logs show them
    # httpx logs every request line, user image URLs (which may carry tokens) included, at INFO.
    httpx_log = logging.getLogger("httpx")
    httpx_log.setLevel(max(httpx_log.getEffectiveLevel(), logging.WARNING))

    knowledge = IndexHandle(settings.knowledge_index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Hashing and mapping the index run in a worker thread; never fatal (knowledge/handle.py).
        await knowledge.load_async()
        # the torch backend only: deployments set it from their CPU limit whatever the backend, and the
        # ONNX worker of the CPU image has no torch to import
        if settings.torch_threads and settings.backend == "torch":
            import torch

            torch.set_num_threads(settings.torch_threads)
        if pipelines is not None:
            loaded = dict(pipelines)
        else:
            try:
                loaded = await asyncio.to_thread(load_pipelines, settings)
            except Exception as exc:
                # Stay up, alive and not ready (with the reason on /readyz): exiting would only make the
                # orchestrator restart into the same missing or corrupt artifacts, a crash loop.
                log.exception("cannot load the models; serving not-ready until fixed and restarted")
                app.state.load_error = f"models failed to load: {type(exc).__name__}: {exc}"
                yield
                return
        executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="saver-infer")
        policy = fetch_policy(settings)
        client = make_client(policy)

        async def fetch_images(urls: list[str], deadline: float) -> Sequence[FetchResult]:
            return await fetch_all(urls, policy, deadline, client)

        engines = {
            task: TaskEngine(
                task,
                pipeline,
                executor,
                fetcher or fetch_images,
                metrics,
                settings.vision_budget_ms,
                settings.screen_cache_size,
                tracer,
                trace_urls,
            )
            for task, pipeline in loaded.items()
        }
        admission = Admission(settings.max_concurrent_inferences, settings.max_queue, settings.retry_after_s)
        predictor = Predictor(settings, engines, admission, metrics)
        predictor.cards = [_describe(settings, task, p, metrics) for task, p in loaded.items()]
        app.state.predictor = predictor
        try:
            if settings.warmup:
                loop = asyncio.get_running_loop()
                for engine in engines.values():
                    await loop.run_in_executor(executor, engine.warm_up)
                release_freed_heap()  # loading and warm-up freed much more than a request ever allocates
            predictor.ready = True
            log.info("ready", extra={"models": [f"{c['task']}:{c['name']}" for c in predictor.cards]})
            yield
        finally:
            predictor.ready = False
            if not await admission.drain(settings.shutdown_grace_s):
                log.warning("shutdown: %d requests still running after the grace period", admission.admitted)
            executor.shutdown(wait=False, cancel_futures=True)
            await client.aclose()
            knowledge.close()
            if own_provider and tracer_provider is not None:
                tracing.shutdown(tracer_provider)  # flush the spans still queued
            mark_worker_dead(os.getpid())

    app = FastAPI(
        title="SAVER",
        summary="Multimodal NER and relation extraction that consults images only when a span needs them",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.knowledge = knowledge
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        batch_max_body_bytes=settings.batch_max_body_bytes,
    )
    if tracer is not None:  # outermost: the server span covers everything the request costs
        app.add_middleware(tracing.TracingMiddleware, tracer=tracer)
    app.include_router(router)
    return app


def _describe(
    settings: Settings, task: str, pipeline: SaverPipeline, metrics: ServiceMetrics
) -> dict[str, Any]:
    """Log the model, publish its identity as metrics, and build its /v1/models card."""
    directory = None if settings.fake_model else artifacts_dir(settings, task)
    calibration = calibration_of(pipeline, directory)
    info = model_info(pipeline)
    metrics.set_model(task, info.name, info.version, info.trained, pipeline.threshold)
    coverage = calibrated_coverage(calibration)
    if coverage is not None:
        metrics.calibrated_coverage.labels(endpoint=task).set(coverage)
    level = logging.INFO if info.trained else logging.WARNING
    log.log(
        level,
        "model loaded%s",
        "" if info.trained else f" (NOT TRAINED: {info.warning})",
        extra={
            "task": task,
            "model_name": info.name,
            "version": info.version,
            "trained": info.trained,
            "threshold": shown_threshold(pipeline),
        },
    )
    return {
        **info.model_dump(),
        "task": task,
        "labels": list(pipeline.labels),
        "threshold": shown_threshold(pipeline),
        "calibration": calibration,
        "backbones": backbones_of(pipeline, directory),
    }


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:app_from_env``: settings from ``SAVER_*``."""
    return create_app(Settings())
