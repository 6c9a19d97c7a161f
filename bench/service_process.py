"""The service under test as a child process: ``saver serve`` on a free loopback port, and its memory."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["SAVER_BACKEND=onnx", ...]`` -> a dict; only ``SAVER_*`` names, so a typo cannot go unnoticed."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("SAVER_"):
            raise ValueError(f"expected SAVER_NAME=VALUE, got {pair!r}")
        env[key] = value
    return env


def wait_ready(base_url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``/readyz`` until it answers 200; raise if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f} s")
        time.sleep(0.25)


@dataclass
class ServiceProcess:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]  # the SAVER_* variables it was started with (beyond the inherited ones)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("service did not stop in %.0f s; killing it", grace_s)
            self.proc.kill()
            self.proc.wait(10)


def start_service(extra_env: dict[str, str], log_path: Path, ready_timeout_s: float) -> ServiceProcess:
    """Start ``saver serve`` (loopback fetches allowed: the CDN stand-in is on 127.0.0.1) and wait until
    it is ready. ``extra_env`` overrides anything, e.g. ``SAVER_FAKE_MODEL=1`` or ``SAVER_BACKEND=onnx``."""
    port = free_port()
    env = {
        "SAVER_ALLOW_LOOPBACK": "true",
        "SAVER_HOST": "127.0.0.1",
        "SAVER_PORT": str(port),
        **extra_env,
    }
    port = int(env["SAVER_PORT"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "saver.cli", "serve"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(f"http://127.0.0.1:{port}", proc, log_path, env)
    try:
        wait_ready(service.base_url, ready_timeout_s, proc)
    except BaseException:
        service.stop(grace_s=5)
        raise
    log.info("service ready at %s (pid %d, log %s)", service.base_url, proc.pid, log_path)
    return service


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of ``pid`` plus its child processes (uvicorn workers), in MB.

    None where /proc is unavailable or the process is gone. The high-water mark of a process never falls,
    so successive readings are monotone.
    """
    total_kb = 0
    seen = False
    for p in _descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
                seen = True
    return total_kb / 1024 if seen else None
