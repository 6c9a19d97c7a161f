"""Traces through the real app (fake models, real fetcher, local image server) into the SDK's in-memory
exporter: the span tree, the attributes, the privacy rule, ``traceparent``, and tracing off."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import create_app
from tests.service.apphelpers import app_settings, fakes
from tests.service.imageserver import ImageServer, start_image_server

GROUNDABLE = "Paris Hilton arrives in Paris"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with start_image_server() as s:
        yield s


@asynccontextmanager
async def traced_app(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(app_settings(tracing=True, **settings), fakes(), tracer_provider=provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://saver.test") as client:
            exporter.clear()  # warm-up is not a request
            yield client, exporter


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def all_attribute_values(spans: tuple[ReadableSpan, ...]) -> list[str]:
    return [str(v) for s in spans for v in (s.attributes or {}).values()]


async def test_one_server_span_with_a_child_per_stage_timed_like_timings_ms(server: ImageServer) -> None:
    urls = [server.url("/gen/rgb.jpg"), server.url("/status/404")]
    async with traced_app() as (client, exporter):
        r = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": urls, "options": {"vision": "always"}}
        )
        assert r.status_code == 200
        spans = by_name(exporter.get_finished_spans())
    (root,) = spans["POST /mner"]
    assert root.parent is None
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    assert root.attributes["saver.request_id"] == r.headers["x-request-id"]
    assert root.attributes["saver.images.requested"] == 2
    assert root.attributes["saver.images.failed"] == 1
    for stage in ("text_encode", "gate", "fetch", "screen", "select", "detail", "fuse"):
        assert stage in spans, stage
        for span in spans[stage]:
            assert span.parent is not None and span.parent.span_id == root.context.span_id
    # the spans are the stage clock's intervals: their durations sum to timings_ms
    timings = r.json()["timings_ms"]
    for stage in ("text_encode", "screen", "fuse"):
        total_ms = sum((s.end_time or 0) - (s.start_time or 0) for s in spans[stage]) / 1e6
        assert total_ms == pytest.approx(timings[stage], abs=0.01)
    fetch_ids = {s.context.span_id for s in spans["fetch"]}
    outcomes = sorted(str((s.attributes or {})["saver.image.outcome"]) for s in spans["fetch_image"])
    assert all(s.parent is not None and s.parent.span_id in fetch_ids for s in spans["fetch_image"])
    assert "ok" in outcomes and any(o != "ok" for o in outcomes)
    (gate,) = spans["gate"]
    assert gate.attributes is not None and gate.attributes["saver.gate.mode"] == "always"
    assert gate.attributes["saver.gate.units_activated"] == gate.attributes["saver.gate.units"]


async def test_a_text_only_request_has_no_vision_spans() -> None:
    async with traced_app() as (client, exporter):
        r = await client.post("/mner", json={"text": "so tired of this weather today"})
        assert r.status_code == 200
        spans = by_name(exporter.get_finished_spans())
    assert {"text_encode", "gate", "fuse"} <= spans.keys()
    assert not {"fetch", "screen", "detail", "fetch_image"} & spans.keys()
    (gate,) = spans["gate"]
    assert gate.attributes is not None and gate.attributes["saver.gate.units_activated"] == 0


async def test_incoming_traceparent_is_continued() -> None:
    header = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    async with traced_app() as (client, exporter):
        r = await client.post(
            "/mre",
            json={"text": "Alice met Bob", "head": {"text": "Alice"}, "tail": {"text": "Bob"}},
            headers=header,
        )
        assert r.status_code == 200
        spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    (root,) = [s for s in spans if s.name == "POST /mre"]
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID


async def test_no_text_ever_and_urls_only_at_debug(server: ImageServer) -> None:
    url = server.url("/gen/rgb.jpg?token=secret")
    body = {"text": GROUNDABLE, "image_urls": [url], "options": {"vision": "always"}}
    async with traced_app() as (client, exporter):
        assert (await client.post("/mner", json=body)).status_code == 200
        info_values = all_attribute_values(exporter.get_finished_spans())
    async with traced_app(log_level="DEBUG") as (client, exporter):
        assert (await client.post("/mner", json=body)).status_code == 200
        debug_values = all_attribute_values(exporter.get_finished_spans())
    assert not any("Hilton" in v or "secret" in v for v in info_values)
    assert url in debug_values
    assert not any("Hilton" in v for v in debug_values)


async def test_probes_and_scrapes_are_not_traced() -> None:
    async with traced_app() as (client, exporter):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200
        assert exporter.get_finished_spans() == ()


def test_tracing_off_never_imports_the_sdk() -> None:
    """A fresh interpreter: the app with tracing off serves a request and has loaded neither the SDK nor
    the exporter (the API may be loaded: FastAPI imports it when it is installed)."""
    script = """
import asyncio, sys, httpx
from service.app import create_app
from tests.service.apphelpers import app_settings, fakes

async def main():
    app = create_app(app_settings(), fakes())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/mner", json={"text": "Paris Hilton"})
            assert r.status_code == 200, r.text
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


class _Collector(BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: keeps the decoded export requests."""

    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_the_default_provider_exports_over_otlp_http(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_address[1]}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "saver-test")
    try:
        app = create_app(app_settings(tracing=True), fakes())  # the OTLP provider of SAVER_TRACING=true
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.post("/mner", json={"text": "Paris Hilton"})).status_code == 200
        # leaving the lifespan shut the provider down, which flushes the batch processor
    finally:
        collector.shutdown()
    names, services = set(), set()
    for path, body in _Collector.received:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            services |= {
                a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
            }
            names |= {span.name for scope in resource_spans.scope_spans for span in scope.spans}
    assert services == {"saver-test"}
    assert {"POST /mner", "text_encode", "gate", "fuse"} <= names
