"""Shared helpers of the hardening suite: the error-shape check and a fetcher with a fake DNS."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from service.fetch import FetchPolicy, fetch_all
from service.vision import Fetcher, FetchResult

REPO = Path(__file__).resolve().parents[2]

# Capitalised words: the fake model's gate activates, so the request really goes to the images.
GROUNDABLE = "Kevin Durant joins the Warriors"
# Nothing capitalised: no unit activates and no image may be touched.
PLAIN = "so tired of this weather today"


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
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


# ---- a real ``saver serve`` process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_process(
    env: dict[str, str], log_path: Path, *, wait_for: str = "/readyz", timeout_s: float = 90.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``saver serve`` on a free port with ``env`` added; yields once ``wait_for`` answers 200. Killed after."""
    port = free_port()
    full_env = {**os.environ, "SAVER_WARMUP": "false", **env}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from service.cli import serve; serve()", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + wait_for, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{wait_for} not 200 in {timeout_s:g} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
