"""A real ``saver serve`` process: two uvicorn workers, the test-only fake model, multiprocess metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.apphelpers import metric_value

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = _free_port()
    env = {
        **os.environ,
        "SAVER_FAKE_MODEL": "1",  # test-only: no weights needed
        "SAVER_WORKERS": "2",
        "SAVER_METRICS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "SAVER_SHUTDOWN_GRACE_S": "5",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "stale_counter.db").write_bytes(b"left over by a previous run")
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from service.cli import serve; serve()", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base, proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_served_process_answers_and_aggregates_metrics(
    server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    base, proc, log_path = server
    n = 8
    for _ in range(n):
        # A fresh connection each time so that both workers get a share.
        r = httpx.post(f"{base}/mner", json={"text": "Kevin Durant joins the warriors"}, timeout=10)
        assert r.status_code == 200
        assert r.json()["entities"][0]["text"] == "Kevin Durant"
        assert r.json()["model"]["name"] == "fake-mner" and r.json()["model"]["trained"] is False
    for _ in range(4):  # whichever worker answers the scrape reports every worker's requests
        text = httpx.get(f"{base}/metrics", timeout=10).text
        assert metric_value(text, "saver_requests_total", endpoint="mner", status="200") == n
        gate = {"endpoint": "mner", "decision": "activated", "mode": "auto"}
        assert metric_value(text, "saver_gate_requests_total", **gate) == n
        assert metric_value(text, "saver_inflight_requests") == 0
    assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(entry["message"] == "ready" for entry in lines)
    access = [entry for entry in lines if entry["message"] == "request" and entry.get("path") == "/mner"]
    assert len(access) == n and all(len(entry["request_id"]) == 32 for entry in access)
