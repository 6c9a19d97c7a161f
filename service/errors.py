"""Domain exceptions and the one place that turns any failure into the shared error shape."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.schemas import ErrorBody, ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors a client can be told about; ``message`` must be safe to show."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(ServiceError):
    status = 422
    code = "validation_error"


class Overloaded(ServiceError):
    status = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class InferenceTimeout(ServiceError):
    status = 504
    code = "timeout"


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    rid = request_id_of(request)
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or [], request_id=rid))
    all_headers = dict(headers or {})
    if rid:
        # Set here too: a 500 is answered outside the request-id middleware.
        all_headers["X-Request-ID"] = rid
    return JSONResponse(body.model_dump(), status_code=status, headers=all_headers)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    details = [ErrorDetail(field=exc.field, message=exc.message)] if exc.field else []
    return error_response(request, exc.status, exc.code, exc.message, details, exc.headers())


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    details = [ErrorDetail(field=_field_path(e.get("loc", ())), message=e.get("msg", "")) for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request, 422, "invalid_json", "request body is not valid JSON", details)
    first = details[0] if details else None
    message = f"invalid field `{first.field}`: {first.message}" if first else "invalid request"
    return error_response(request, 422, "validation_error", message, details)


# FastAPI's 400 for a body json.loads cannot even start on (not UTF-8, nested too deep). To a client that
# is the same mistake as a JSON syntax error, so it gets the same documented 422 ``invalid_json``.
_UNPARSABLE_BODY = "There was an error parsing the body"


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
        return error_response(request, 422, "invalid_json", "request body is not valid UTF-8 JSON")
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    return error_response(
        request, exc.status_code, codes.get(exc.status_code, "http_error"), message, headers=exc.headers
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(request, 500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
