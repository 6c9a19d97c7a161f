"""JSON log lines carry the request id and the ``extra`` fields."""

from __future__ import annotations

import json
import logging

from service.logs import JsonFormatter, RequestIdFilter, logging_config, request_id_var


def _format(record: logging.LogRecord) -> dict[str, object]:
    RequestIdFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def test_json_line_has_request_id_and_extras() -> None:
    token = request_id_var.set("rid-1")
    try:
        record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "done %s", ("ok",), None)
        record.duration_ms = 1.5
        entry = _format(record)
    finally:
        request_id_var.reset(token)
    assert entry["message"] == "done ok" and entry["level"] == "INFO"
    assert entry["request_id"] == "rid-1" and entry["duration_ms"] == 1.5


def test_exceptions_are_formatted() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in str(_format(record)["exc_info"])


def test_config_quiets_url_logging_libraries() -> None:
    config = logging_config("DEBUG")
    assert config["loggers"]["httpx"]["level"] == "WARNING"
    assert config["root"]["level"] == "DEBUG"
