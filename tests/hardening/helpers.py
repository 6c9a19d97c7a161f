"""Shared helpers of the hardening suite: the error-shape check and a fetcher with a fake DNS."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

import httpx

from service.fetch import FetchPolicy, fetch_all
from service.vision import Fetcher, FetchResult

# Capitalised words: the fake model's gate activates, so the request really goes to the images.
GROUNDABLE = "Kevin Durant joins the Warriors"
# Nothing capitalised: no unit activates and no image may be touched.
PLAIN = "so tired of this weather today"


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The one error shape, with the status, code and (optionally) the field at fault."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and isinstance(error["message"], str)
    assert error["request_id"] == response.headers["x-request-id"]
    if field is not None:
        fields = [d["field"] for d in error["details"]]
        assert any(f == field or (f or "").startswith(field + ".") for f in fields), (field, error)
    return error


def fake_dns(answers: dict[str, list[str]]) -> Any:
    """A resolver for FetchPolicy: known names map to ``answers``; any other name does not resolve."""

    def resolve(host: str) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def guarded_fetcher(policy: FetchPolicy) -> Fetcher:
    """The production fetch path (guarded client, fetch_all) under ``policy``, e.g. with a fake DNS.

    ``create_app`` builds its policy from settings, which cannot carry a resolver; this is the same code
    with that one seam filled in.
    """

    async def fetch(urls: list[str], deadline: float) -> Sequence[FetchResult]:
        return await fetch_all(urls, policy, deadline)  # a guarded client per call, closed after

    return fetch


def seconds_since(started: float) -> float:
    return time.monotonic() - started
