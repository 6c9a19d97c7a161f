"""Faults around the service: image hosts down, DNS failing, resets; missing or corrupt artifacts at start;
SIGTERM with requests in flight."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.fetch import FetchPolicy
from service.settings import Settings
from tests.hardening.helpers import (
    GROUNDABLE,
    assert_error,
    fake_dns,
    free_port,
    guarded_fetcher,
    serve_process,
)
from tests.service.apphelpers import app_settings, running_app
from tests.service.imageserver import ImageServer

# With one worker, uvicorn shuts down gracefully and then re-raises the signal it caught (exit -15).
GRACEFUL_EXIT = (0, -signal.SIGTERM)

# ---- image hosts failing ----------------------------------------------------------------------------------


def _reasons(body: dict[str, Any]) -> list[str]:
    return [e["reason"] for e in body["vision"]["image_errors"]]


async def test_image_host_down_falls_back_with_connect() -> None:
    port = free_port()  # nothing listens there: connection refused
    async with running_app(app_settings()) as (client, _):
        r = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [f"http://127.0.0.1:{port}/a.jpg"]}
        )
    assert r.status_code == 200
    assert r.json()["vision"]["fallback"] == "fetch_failed:connect"


async def test_image_host_that_accepts_and_never_answers_is_cut_by_the_budget() -> None:
    with socket.socket() as listener:  # a black hole: the kernel accepts, nobody ever reads or writes
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/a.jpg"
        started = time.monotonic()
        async with running_app(app_settings()) as (client, _):
            r = await client.post(
                "/mner", json={"text": GROUNDABLE, "image_urls": [url], "options": {"vision_budget_ms": 800}}
            )
    assert r.json()["vision"]["fallback"] == "budget_exceeded"
    assert time.monotonic() - started < 3.0


async def test_dns_failure_falls_back_with_dns(images: ImageServer) -> None:
    fetcher = guarded_fetcher(FetchPolicy(allow_loopback=True, resolver=fake_dns({})))
    async with running_app(app_settings(), fetcher=fetcher) as (client, _):
        r = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [images.url("/gen/rgb.jpg", "cdn.test")]}
        )
    assert r.json()["vision"]["fallback"] == "fetch_failed:dns"
    assert images.total_hits == 0


async def test_hanging_dns_is_cut_by_the_connect_timeout(images: ImageServer) -> None:
    def slow_resolver(host: str) -> list[str]:
        time.sleep(1.5)
        return ["127.0.0.1"]

    policy = FetchPolicy(allow_loopback=True, resolver=slow_resolver, connect_timeout_s=0.3)
    started = time.monotonic()
    async with running_app(app_settings(), fetcher=guarded_fetcher(policy)) as (client, _):
        r = await client.post(
            "/mner",
            json={"text": GROUNDABLE, "image_urls": [images.url("/gen/rgb.jpg", "slow-dns.test")],
                  "options": {"vision_budget_ms": 2000}},
        )  # fmt: skip
    assert r.json()["vision"]["fallback"] == "fetch_failed:dns"
    assert time.monotonic() - started < 2.0


async def test_every_host_failing_differently_in_one_request(images: ImageServer) -> None:
    urls = [
        f"http://127.0.0.1:{free_port()}/down.jpg",
        images.url("/reset"),
        images.url("/reset_mid"),
        images.url("/status/503"),
    ]
    async with running_app(app_settings()) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": urls})
        again = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [images.url("/gen/rgb.jpg")]}
        )
    assert r.status_code == 200
    assert _reasons(r.json()) == [
        "fetch_failed:connect", "fetch_failed:network", "fetch_failed:network", "fetch_failed:http_status",
    ]  # fmt: skip
    assert r.json()["vision"]["fallback"] in set(_reasons(r.json()))
    assert again.json()["vision"]["fallback"] is None  # nothing stuck: the next request gets its image


# ---- artifacts missing or corrupt at start ----------------------------------------------------------------

CORRUPT = {
    "config-not-json": ({"config.json": b"{not json"}, "config.json"),
    "config-not-an-object": ({"config.json": b"[1, 2, 3]"}, "JSON object"),
    "weights-without-config": ({"weights.safetensors": b"\x00" * 64}, "no config.json"),
    "weights-corrupt": (
        {"config.json": json.dumps({"name": "x", "trained": True, "model": {"task": "mner"}}).encode(),
         "weights.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"},
        "corrupt weights",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("files", "said"), list(CORRUPT.values()), ids=list(CORRUPT))
async def test_corrupt_artifacts_leave_the_service_alive_and_not_ready(
    tmp_path: Path, files: dict[str, bytes], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("model.loading")
    bad = tmp_path / "mner"
    bad.mkdir()
    for name, data in files.items():
        (bad / name).write_bytes(data)
    settings = Settings(mner_artifacts=bad, mre_artifacts=tmp_path / "absent", warmup=False)
    async with running_app(settings, load_models=True) as (client, _):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        mner = await client.post("/mner", json={"text": GROUNDABLE})
    assert health.status_code == 200
    error = assert_error(ready, 503, "not_ready")
    assert said in error["message"] and "models failed to load" in error["message"]
    assert_error(mner, 503, "not_ready")
    assert any("cannot load the models" in rec.getMessage() for rec in caplog.records)


@pytest.mark.slow
def test_served_process_with_corrupt_artifacts_stays_up_not_ready(tmp_path: Path) -> None:
    pytest.importorskip("model.loading")
    bad = tmp_path / "mner"
    bad.mkdir()
    (bad / "config.json").write_text("{oops")
    env = {"SAVER_MNER_ARTIFACTS": str(bad), "SAVER_MRE_ARTIFACTS": str(tmp_path / "absent")}
    with serve_process(env, tmp_path / "server.log", wait_for="/healthz") as (base, proc):
        time.sleep(1.0)  # would have exited by now if a load failure killed it
        assert proc.poll() is None
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert_error(ready, 503, "not_ready")
        assert "config.json" in ready.json()["error"]["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in GRACEFUL_EXIT
    log = (tmp_path / "server.log").read_text()
    assert "cannot load the models" in log and "Traceback" in log
    assert "Application shutdown complete" in log


# ---- SIGTERM drains in-flight requests --------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests(tmp_path: Path, images: ImageServer) -> None:
    env = {"SAVER_FAKE_MODEL": "1", "SAVER_ALLOW_LOOPBACK": "true", "SAVER_SHUTDOWN_GRACE_S": "10"}
    slow = {
        "text": GROUNDABLE,
        "image_urls": [images.url("/drip?interval=0.5&size=1000")],
        "options": {"vision_budget_ms": 2500},  # the request takes about 2.5 s
    }
    with serve_process(env, tmp_path / "server.log") as (base, proc):
        answers: list[httpx.Response] = []
        errors: list[BaseException] = []

        def post() -> None:
            try:
                answers.append(httpx.post(f"{base}/mner", json=slow, timeout=20))
            except BaseException as exc:
                errors.append(exc)

        in_flight = [threading.Thread(target=post) for _ in range(3)]
        for thread in in_flight:
            thread.start()
        deadline = time.monotonic() + 5
        while images.hits["/drip"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # until all three requests are inside the service
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new work is accepted while draining
            httpx.get(f"{base}/healthz", timeout=2)
        for thread in in_flight:
            thread.join(20)
        assert proc.wait(20) in GRACEFUL_EXIT
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    assert not errors, errors
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all(r.json()["vision"]["fallback"] == "budget_exceeded" for r in answers)
    assert time.monotonic() - started < 10
