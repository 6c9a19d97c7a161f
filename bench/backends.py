"""torch versus ONNX Runtime, as deployed: startup time to ready, RSS per worker, text-path latency, and what
text micro-batching does to throughput and P90 under concurrency.

    python -m bench.backends --out DIR [--mner-artifacts DIR] [--mre-artifacts DIR] [--runs 200]
                             [--concurrency 8] [--requests 400] [--threads N]

Each configuration is a real ``saver serve`` subprocess with one worker (so its PID is the worker):
- startup: seconds from spawn to the first 200 from ``/readyz`` (models loaded and warmed). The ONNX
  backend is started twice, with an empty graph cache (graphs built at start) and with the cache filled.
- RSS: ``VmRSS`` and the peak ``VmHWM`` from ``/proc/<pid>/status`` after warm-up and after the runs.
- latency: ``POST /mner`` with a 30-word tweet and vision off (the text path a request below τ pays),
  alternating between the torch and ONNX servers request by request, order swapped every run, so load
  drifts hit both alike; median and P90 of client time and of the server's ``timings_ms.text_encode``.
- micro-batching: ONNX servers with it off and on, ``--concurrency`` closed-loop clients, rounds
  alternating between the two; throughput and P50/P90 of client latency.
Writes ``backends.json`` and ``backends.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.model_latency import TWEET

log = logging.getLogger(__name__)


@dataclass
class Server:
    name: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    ready_s: float = 0.0
    memory: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0  # kB -> MiB
    return fields


class Running(AbstractContextManager["Running"]):
    """Start ``saver serve`` and wait for /readyz; stop it on exit."""

    def __init__(self, server: Server, log_dir: Path, timeout_s: float = 900.0) -> None:
        self.server, self.log_dir, self.timeout_s = server, log_dir, timeout_s

    def __enter__(self) -> Running:
        s = self.server
        s.port = free_port()
        env = dict(os.environ, SAVER_PORT=str(s.port), SAVER_HOST="127.0.0.1", SAVER_WORKERS="1", **s.env)
        out = (self.log_dir / f"{s.name}.log").open("wb")
        started = time.perf_counter()
        s.process = subprocess.Popen(
            [sys.executable, "-m", "saver.cli", "serve"], env=env, stdout=out, stderr=out
        )
        while time.perf_counter() - started < self.timeout_s:
            if s.process.poll() is not None:
                raise RuntimeError(f"{s.name} exited with {s.process.returncode}; see {out.name}")
            try:
                if httpx.get(f"{s.url}/readyz", timeout=1.0).status_code == 200:
                    s.ready_s = time.perf_counter() - started
                    s.memory["after_warmup"] = memory_mb(s.process.pid)
                    log.info("%s ready in %.1f s", s.name, s.ready_s)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{s.name} not ready after {self.timeout_s} s")

    def __exit__(self, *exc: object) -> None:
        p = self.server.process
        if p is not None and p.poll() is None:
            self.server.memory["after_runs"] = memory_mb(p.pid)
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "median_ms": statistics.median(samples),
        "p90_ms": float(np.percentile(samples, 90)),
        "mean_ms": statistics.fmean(samples),
    }


BODY = {"text": TWEET, "options": {"vision": "never"}}


def interleaved_latency(servers: list[Server], runs: int, warmup: int) -> dict[str, Any]:
    client = httpx.Client(timeout=30.0)
    wall: dict[str, list[float]] = {s.name: [] for s in servers}
    encode: dict[str, list[float]] = {s.name: [] for s in servers}
    for i in range(warmup + runs):
        order = servers if i % 2 == 0 else servers[::-1]
        for s in order:
            started = time.perf_counter()
            r = client.post(f"{s.url}/mner", json=BODY)
            elapsed = (time.perf_counter() - started) * 1000.0
            r.raise_for_status()
            if i >= warmup:
                wall[s.name].append(elapsed)
                encode[s.name].append(float(r.json()["timings_ms"]["text_encode"]))
    return {
        s.name: {"client": summarise(wall[s.name]), "text_encode": summarise(encode[s.name])} for s in servers
    }


async def closed_loop(url: str, concurrency: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            r = await client.post(f"{url}/mner", json=BODY)
            r.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000.0)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def microbatch_compare(servers: list[Server], concurrency: int, requests: int, rounds: int) -> dict[str, Any]:
    lat: dict[str, list[float]] = {s.name: [] for s in servers}
    seconds: dict[str, float] = dict.fromkeys((s.name for s in servers), 0.0)
    for i in range(rounds):
        for s in servers if i % 2 == 0 else servers[::-1]:
            samples, took = asyncio.run(closed_loop(s.url, concurrency, requests // rounds))
            lat[s.name] += samples
            seconds[s.name] += took
    return {
        s.name: {**summarise(lat[s.name]), "throughput_rps": len(lat[s.name]) / seconds[s.name]}
        for s in servers
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="onnx-cache-", dir=args.out))
    common = {"SAVER_LOG_JSON": "false", "SAVER_MNER_ARTIFACTS": str(args.mner_artifacts)}
    common["SAVER_MRE_ARTIFACTS"] = str(args.mre_artifacts)
    if args.threads:
        common |= {"SAVER_TORCH_THREADS": str(args.threads), "SAVER_ONNX_THREADS": str(args.threads)}
    onnx = {**common, "SAVER_BACKEND": "onnx", "SAVER_ONNX_CACHE_DIR": str(cache)}
    cold = Server("onnx_cold_cache", onnx)
    with Running(cold, args.out):  # builds the graphs into the empty cache
        pass
    torch_server = Server("torch", {**common, "SAVER_BACKEND": "torch"})
    onnx_server = Server("onnx", onnx)
    with Running(torch_server, args.out), Running(onnx_server, args.out):
        latency = interleaved_latency([torch_server, onnx_server], args.runs, args.warmup)
    batch_off = Server("onnx_microbatch_off", onnx)
    batch_on = Server("onnx_microbatch_on", {**onnx, "SAVER_MICROBATCH": "true", "SAVER_MAX_QUEUE": "256"})
    batch_off.env["SAVER_MAX_QUEUE"] = "256"
    for s in (batch_off, batch_on):
        s.env["SAVER_MAX_CONCURRENT_INFERENCES"] = str(args.concurrency)
    with Running(batch_off, args.out), Running(batch_on, args.out):
        batching = microbatch_compare([batch_off, batch_on], args.concurrency, args.requests, args.rounds)
    servers = [cold, torch_server, onnx_server, batch_off, batch_on]
    t, o = latency["torch"]["client"], latency["onnx"]["client"]
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "tweet": TWEET,
        "startup_s": {s.name: round(s.ready_s, 2) for s in servers},
        "memory_mib": {s.name: s.memory for s in servers},
        "latency": latency,
        "torch_over_onnx_median": t["median_ms"] / o["median_ms"],
        "torch_over_onnx_p90": t["p90_ms"] / o["p90_ms"],
        "microbatch": {"concurrency": args.concurrency, **batching},
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| server | ready (s) | RSS after warm-up (MiB) | RSS after runs (MiB) | peak (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name, ready in report["startup_s"].items():
        m = report["memory_mib"][name]
        warm, after = m.get("after_warmup", {}), m.get("after_runs", {})
        lines.append(
            f"| {name} | {ready:.1f} | {warm.get('VmRSS', 0):.0f} | {after.get('VmRSS', 0):.0f} |"
            f" {after.get('VmHWM', warm.get('VmHWM', 0)):.0f} |"
        )
    lines += ["", "| text path (30-word tweet, vision off) | client median | client P90 | text_encode median | text_encode P90 |", "|---|---|---|---|---|"]  # fmt: skip
    for name, r in report["latency"].items():
        c, e = r["client"], r["text_encode"]
        lines.append(
            f"| {name} | {c['median_ms']:.1f} ms | {c['p90_ms']:.1f} ms | {e['median_ms']:.1f} ms | {e['p90_ms']:.1f} ms |"
        )
    lines.append(
        f"\ntorch / onnx: median {report['torch_over_onnx_median']:.2f}x, P90 {report['torch_over_onnx_p90']:.2f}x"
    )
    mb = report["microbatch"]
    lines += ["", f"| micro-batching, {mb['concurrency']} concurrent clients | throughput | median | P90 |", "|---|---|---|---|"]  # fmt: skip
    for name in ("onnx_microbatch_off", "onnx_microbatch_on"):
        r = mb[name]
        lines.append(
            f"| {name} | {r['throughput_rps']:.1f} req/s | {r['median_ms']:.1f} ms | {r['p90_ms']:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mner-artifacts", type=Path, default=Path("artifacts/mner"))
    p.add_argument("--mre-artifacts", type=Path, default=Path("artifacts/mre"))
    p.add_argument("--runs", type=int, default=200, help="interleaved latency runs per backend")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=400, help="requests per micro-batching configuration")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds of the micro-batching load")
    p.add_argument("--threads", type=int, help="intra-op threads per worker for both backends")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    report = run(args)
    (args.out / "backends.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(report)
    (args.out / "backends.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
