"""OpenTelemetry traces, off unless ``SAVER_TRACING=true``.

Imported only when tracing is on (``service.app`` imports it lazily), so a service with tracing off never
imports the SDK. When on:

- ``make_tracer_provider`` builds the SDK provider with the OTLP/HTTP exporter behind a batch processor;
  endpoint, headers and service name come from the standard ``OTEL_*`` variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...), as every OpenTelemetry SDK reads them.
- ``TracingMiddleware`` opens one SERVER span per request, continuing the caller's trace when the
  request carries a W3C ``traceparent``. The stage spans under it come from ``service.stageclock``.

Privacy: spans carry the route, status, request id, stage timings, gate decisions and image outcomes;
never the post text, and image URLs only at DEBUG (the rule the logs follow).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACER_NAME = "saver.service"
# Probes and scrapes would drown the traces that matter.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_PROPAGATOR = TraceContextTextMapPropagator()


def make_tracer_provider() -> TracerProvider:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "saver")})
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def shutdown(provider: TracerProvider) -> None:
    """Flush what is queued; the API's provider type has no shutdown, the SDK's has."""
    stop = getattr(provider, "shutdown", None)
    if callable(stop):
        stop()


class TracingMiddleware:
    """Pure ASGI: one server span per HTTP request, the current span while the app handles it."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        parent = _PROPAGATOR.extract(carrier)
        method = scope.get("method", "GET")
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        span = self.tracer.start_span(
            f"{method} {path}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        status = 500  # if the app raises, ServerErrorMiddleware answers 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            span.set_attribute("http.response.status_code", status)
            request_id = scope.get("state", {}).get("request_id")
            if request_id:
                span.set_attribute("saver.request_id", request_id)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            context.detach(token)
            span.end()
