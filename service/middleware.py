"""Pure ASGI middleware: request id, body-size cap, request metrics and the access log line.

Written against raw ASGI (not ``BaseHTTPMiddleware``) so that streaming bodies are counted as they arrive
and nothing is buffered twice.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id_var
from service.metrics import ServiceMetrics
from service.schemas import ErrorBody, ErrorResponse

log = logging.getLogger("service.access")

INFERENCE_ENDPOINTS = {
    "/mner": "mner",
    "/mre": "mre",
    "/v1/mner:batch": "mner_batch",
    "/v1/mre:batch": "mre_batch",
}
BATCH_PATHS = frozenset(path for path, name in INFERENCE_ENDPOINTS.items() if name.endswith("_batch"))
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Tags each request with an id (client's ``X-Request-ID`` if sane), enforces the body cap, measures."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        batch_max_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.batch_max_body_bytes = batch_max_body_bytes or max_body_bytes  # the batch routes' own cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        path: str = scope.get("path", "")
        endpoint = INFERENCE_ENDPOINTS.get(path)
        status = 500  # if the app raises, ServerErrorMiddleware answers 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        if endpoint is not None:
            self.metrics.inflight.inc()
        limit = self.batch_max_body_bytes if path in BATCH_PATHS else self.max_body_bytes
        try:
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._too_large(send_with_id, rid, limit)
            else:
                await self.app(scope, self._capped(receive, limit), send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if endpoint is not None:
                self.metrics.inflight.dec()
                self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
                self.metrics.request_duration.labels(endpoint=endpoint).observe(elapsed)
            log.log(
                logging.DEBUG if path in _QUIET_PATHS else logging.INFO,
                "request",
                extra={
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 3),
                },
            )
            request_id_var.reset(token)

    def _capped(self, receive: Receive, limit: int) -> Receive:
        """Counts a body without Content-Length (chunked) as it streams in."""
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises an HTTPException met while reading the body; the error handler
                    # then answers 413 in the usual shape.
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        return capped_receive

    async def _too_large(self, send: Send, rid: str, limit: int) -> None:
        error = ErrorBody(
            code="payload_too_large", message=f"request body over {limit} bytes", request_id=rid
        )
        body = json.dumps(ErrorResponse(error=error).model_dump()).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
