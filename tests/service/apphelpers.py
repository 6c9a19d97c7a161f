"""Shared helpers for the app tests: run the ASGI app with its lifespan and talk to it in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from model.pipeline import SaverPipeline
from service.app import create_app
from service.fake import FakePipeline
from service.settings import Settings
from service.vision import Fetcher


def fakes(**kwargs: Any) -> dict[str, FakePipeline]:
    return {"mner": FakePipeline("mner", **kwargs), "mre": FakePipeline("mre", **kwargs)}


def app_settings(**overrides: Any) -> Settings:
    """Settings for in-process tests: loopback images allowed (the image server), small capacity."""
    values: dict[str, Any] = {"allow_loopback": True, "inference_threads": 2, "request_timeout_s": 10.0}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_app(
    settings: Settings | None = None,
    pipelines: Mapping[str, SaverPipeline] | None = None,
    fetcher: Fetcher | None = None,
    *,
    load_models: bool = False,
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app after its lifespan startup (load, warm-up), with a client; shuts it down after.

    Serves ``pipelines``, else the fakes, else (``load_models``) what the settings' artifacts give."""
    if pipelines is None and not load_models:
        pipelines = fakes()
    app = create_app(settings or app_settings(), pipelines, fetcher)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://saver.test") as client:
            yield client, app


def metric_value(text: str, name: str, /, **labels: str) -> float:
    """Value of one sample in Prometheus exposition text (0.0 when the series is absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part and "=" in part)
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()) and len(found) == len(labels):
            return float(value)
    return 0.0
