"""Soak run: minutes of mixed load with faults injected against a real ``saver serve`` process.

It starts a local fault-injecting image server (``tests/service/imageserver.py``) and ``saver serve`` (the
test-only fake model by default, ``--real-model`` for the artifacts), then keeps ``--concurrency`` clients
busy with a weighted mix of valid posts, image faults, hostile URLs, bad inputs and bursts past capacity.
Every answer is checked against what its kind must get; the summary counts outcomes and errors by kind
and records the server's RSS and open file descriptors at start, during and at the end.

    python -m bench.soak --duration 600 --real-model --warmup 60 --out runs/soak   # `make soak`
    python -m bench.soak --duration 45 --out /tmp/soak-short   # a quick check

Run it from the repository root (the image server lives with the tests). Exit status 1 when any answer
was unexpected (a 5xx, a transport error, a hit on the private-address canary...) or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.cdn import CdnConfig, CdnServer
from bench.soak_report import Tally, cache_entries, markdown, summarise

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / ".." / "shared" / "data" / "images"  # real photos for the CDN stand-in when present
GROUNDABLE = "Kevin Durant joins the Warriors in Oakland"  # the fake model's gate activates on it
PLAIN = "so tired of this weather today"  # nothing activates: no image work


@dataclass
class Probe:
    """One request to send and how to judge its answer."""

    kind: str  # the row of the summary
    path: str
    body: bytes
    ok: Callable[[int, dict[str, Any]], bool]  # (status, JSON body) -> whether the answer is right


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def _fallback(body: dict[str, Any]) -> str | None:
    vision = body.get("vision")
    return vision.get("fallback") if isinstance(vision, dict) else None


def build_mix(
    image_base: str, port: int, photos: list[str], cdn_base: str | None = None
) -> list[tuple[float, Callable[[random.Random], Probe]]]:
    """(weight, probe factory) pairs; factories draw their variant from the given RNG. ``photos``: paths
    of real photos on the image server; ``cdn_base``: the CDN stand-in (``bench/cdn.py``) serving real
    JPEGs, each request with URLs the service has not seen (so its screen cache keeps filling).

    Whatever must fetch forces ``vision: always``: the shipped models' τ may be ∞ (auto never activates),
    and a fault or hostile URL that is never fetched proves nothing."""
    cdn = cdn_base or image_base
    counter = iter(range(10**12))

    def cdn_urls(rng: random.Random, n: int) -> list[str]:
        if cdn_base is None:
            return [image_base + p for p in rng.sample(photos[:2] or ["/gen/rgb.jpg"], 1)] * n
        return [f"{cdn}/img/soak{rng.randrange(64)}/{k}.jpg?v={next(counter)}" for k in range(n)]

    def ok_200(status: int, body: dict[str, Any]) -> bool:
        return status in (200, 429)

    def vision_ok(status: int, body: dict[str, Any]) -> bool:
        # images used, or (CPU saturated by the real model) a fetch that missed the budget, said so
        return status == 429 or (status == 200 and _fallback(body) in (None, "budget_exceeded"))

    def text_only(status: int, body: dict[str, Any]) -> bool:
        return status == 429 or (status == 200 and _fallback(body) is not None)

    def blocked(status: int, body: dict[str, Any]) -> bool:
        return status == 429 or (status == 200 and _fallback(body) == "fetch_failed:blocked_address")

    def client_error(status: int, body: dict[str, Any]) -> bool:
        return 400 <= status < 500

    good = [
        "/gen/rgb.jpg",
        "/gen/cmyk.jpg",
        "/gen/gray16.png",
        "/gen/palette_alpha.png",
        "/gen/1x1.png",
        "/gen/exif_rotated.jpg",
        "/gen/many_frames.gif",
        "/gen/image.webp",
        *photos[:2],
    ]
    faults = [
        "/drip?interval=0.5&size=2000",
        "/endless",
        "/reset",
        "/reset_mid",
        "/gen/truncated.jpg",
        "/gen/huge_header.png",
        "/gen/page.html",
        "/status/500",
        "/loop",
        "/big?declared=999999999",
        "/gen/rgb.jpg?delay=3",
        "/gen/image.tiff",
    ]
    # Never reachable: "/canary" is counted by the image server, and any hit there is an SSRF breach.
    hostile = [
        f"http://[::ffff:127.0.0.1]:{port}/canary",
        f"http://0:{port}/canary",
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/",
        "http://10.0.0.1/",
        "http://[fd00:ec2::254]/",
        "http://192.168.1.1:8080/",
        "http://2852039166/",
        f"{image_base}/redirect?to=http%3A%2F%2F%5B%3A%3Affff%3A127.0.0.1%5D%3A{port}%2Fcanary",
    ]
    schemes = [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "ftp://example.org/a.jpg",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
    ]
    bad_bodies = [b'{"text": "Kevin', b"[1,2]", b"", b'{"text": "\\ud800"}', b'{"text": "a\xff"}',
                  _json({"text": "a", "options": {"vision_budget_ms": "100"}}), _json({"text": "x" * 100_000}),
                  _json({"text": "   "}), _json({"text": "a", "tokens": ["a"]}), _json({"text": "a", "extra": 1}),
                  _json({"text": GROUNDABLE, "head": {"start": 0, "end": 12}, "tail": {"start": 6, "end": 18}}),
                  _json({"text": "a", "image_urls": [f"https://e.org/{i}.jpg" for i in range(1000)]})]  # fmt: skip

    def valid_text(rng: random.Random) -> Probe:
        return Probe("valid_text_only", "/mner", _json({"text": PLAIN}), ok_200)

    def valid_vision(rng: random.Random) -> Probe:
        urls = [image_base + p for p in rng.sample(good, rng.randint(1, 3))]
        body = {"text": GROUNDABLE, "image_urls": urls, "options": {"vision": "always"}}
        return Probe("valid_with_images", "/mner", _json(body), vision_ok)

    def real_jpegs(rng: random.Random) -> Probe:
        # real photos with CDN latency, forced: the activating path of the real model, every stage run
        body = {
            "text": GROUNDABLE,
            "image_urls": cdn_urls(rng, rng.randint(1, 4)),
            "options": {"vision": "always"},
        }
        return Probe("real_jpegs_always", "/mner", _json(body), vision_ok)

    def auto_with_images(rng: random.Random) -> Probe:
        body = {"text": GROUNDABLE, "image_urls": cdn_urls(rng, rng.randint(1, 2))}
        return Probe("auto_with_images", "/mner", _json(body), ok_200)

    def batch(rng: random.Random) -> Probe:
        # a batch with one invalid item: that item fails alone, the rest answer
        n = rng.randint(2, 12)
        items: list[Any] = [{"text": rng.choice([PLAIN, GROUNDABLE])} for _ in range(n)]
        items[-1]["options"] = {"vision": "always"}
        items[-1]["image_urls"] = cdn_urls(rng, 1)
        bad = rng.randrange(n)
        items[bad] = rng.choice([{"text": "   "}, {"text": "a", "extra": 1}, 17, {"tokens": []}])

        def ok(status: int, body: dict[str, Any]) -> bool:
            if status == 429:
                return True
            got = body.get("items") if status == 200 else None
            if not isinstance(got, list) or len(got) != n:
                return False
            return all(it["status"] == (422 if i == bad else 200) for i, it in enumerate(got))

        return Probe("batch", "/v1/mner:batch", _json({"items": items}), ok)

    def valid_mre(rng: random.Random) -> Probe:
        body = {"text": GROUNDABLE, "head": {"text": "Kevin Durant"}, "tail": {"text": "Warriors"},
                "image_urls": [image_base + rng.choice(good)]}  # fmt: skip
        return Probe("valid_mre", "/mre", _json(body), ok_200)

    def image_fault(rng: random.Random) -> Probe:
        body = {"text": GROUNDABLE, "image_urls": [image_base + rng.choice(faults)],
                "options": {"vision": "always", "vision_budget_ms": 1500}}  # fmt: skip
        return Probe("image_fault", "/mner", _json(body), text_only)

    def hostile_url(rng: random.Random) -> Probe:
        body = {"text": GROUNDABLE, "image_urls": [rng.choice(hostile)], "options": {"vision": "always"}}
        return Probe("hostile_url", "/mner", _json(body), blocked)

    def bad_scheme(rng: random.Random) -> Probe:
        body = {"text": GROUNDABLE, "image_urls": [rng.choice(schemes)]}
        return Probe("bad_scheme", "/mner", _json(body), client_error)

    def bad_input(rng: random.Random) -> Probe:
        return Probe("bad_input", rng.choice(["/mner", "/mre"]), rng.choice(bad_bodies), client_error)

    return [(30, valid_text), (8, valid_vision), (10, real_jpegs), (4, auto_with_images), (8, valid_mre),
            (10, image_fault), (10, hostile_url), (5, bad_scheme), (10, bad_input), (5, batch)]  # fmt: skip


class ServerProcess:
    """``saver serve`` on a free port, with its memory and file descriptors readable from /proc."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        # glibc's per-thread malloc arenas (executor, decode and ONNX Runtime threads) fragment and keep
        # growing RSS under mixed image sizes; two arenas is what the image sets too (deploy/Dockerfile).
        full_env = {"MALLOC_ARENA_MAX": "2", **os.environ, **env, "SAVER_WORKERS": str(workers)}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from service.cli import serve; serve()", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"saver serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"saver serve not ready in {timeout_s:g} s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The server and all its descendants (uvicorn workers)."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                todo += [int(c) for c in task.read_text().split()]
        return found

    def resources(self) -> dict[str, int]:
        """RSS (bytes) and open file descriptors summed over the process tree."""
        rss = fds = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss += next(
                    int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
                )
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration):
                continue  # a worker that just went away
        return {"rss_bytes": rss, "open_fds": fds, "processes": len(self.pids())}

    def stop(self, grace_s: float) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None  # did not stop in time
        return self.proc.returncode


async def run_load(base: str, mix: list[tuple[float, Callable[[random.Random], Probe]]], duration_s: float,
                   concurrency: int, burst_every_s: float, seed: int, tallies: dict[str, Tally],
                   sample: Callable[[], None]) -> None:  # fmt: skip
    weights = [w for w, _ in mix]
    factories = [f for _, f in mix]
    stop_at = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency + 64, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:

        async def send(probe: Probe) -> None:
            tally = tallies[probe.kind]
            started = time.perf_counter()
            try:
                r = await client.post(
                    probe.path, content=probe.body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as exc:
                tally.statuses[f"transport:{type(exc).__name__}"] += 1
                tally.unexpected += 1
                return
            tally.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            tally.statuses[str(r.status_code)] += 1
            try:
                body = r.json()
            except ValueError:
                body = {}
            error = body.get("error") if isinstance(body, dict) else None
            tally.outcomes[
                error["code"] if isinstance(error, dict) else (_fallback(body) or "no_fallback")
            ] += 1
            if not probe.ok(r.status_code, body):
                tally.unexpected += 1
                if len(tally.examples) < 5:
                    tally.examples.append(
                        f"{probe.path} {probe.body[:120]!r} -> {r.status_code} {r.text[:200]}"
                    )

        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < stop_at:
                await send(rng.choices(factories, weights)[0](rng))

        async def bursts() -> None:
            # Every so often far more than capacity at once: some must be shed with 429, none may fail.
            rng = random.Random(seed)
            while time.monotonic() + burst_every_s < stop_at:
                await asyncio.sleep(burst_every_s)
                probes = [Probe("burst", "/mner", _json({"text": GROUNDABLE}), lambda s, b: s in (200, 429))
                          for _ in range(rng.randint(60, 120))]  # fmt: skip
                await asyncio.gather(*(send(p) for p in probes))

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(10.0)
                sample()

        await asyncio.gather(*(worker(i) for i in range(concurrency)), bursts(), sampler())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--concurrency", type=int, default=8, help="clients sending back to back")
    p.add_argument("--burst-every", type=float, default=20.0, help="seconds between bursts past capacity")
    p.add_argument("--real-model", action="store_true", help="serve the artifacts instead of the fake model")
    p.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of unmeasured load before the start sample"
    )
    p.add_argument(
        "--max-rss-growth", type=float, default=0.05, help="fail above this RSS growth after warm-up"
    )
    p.add_argument("--fd-slack", type=int, default=4, help="fail when open fds grow by more than this")
    p.add_argument("--screen-cache-size", type=int, default=256, help="SAVER_SCREEN_CACHE_SIZE of the server")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/soak"), help="directory for soak.json and soak.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    sys.path.insert(0, str(REPO))
    from tests.service.imageserver import start_image_server  # the fault server lives with the tests

    args.out.mkdir(parents=True, exist_ok=True)
    env = {"SAVER_ALLOW_LOOPBACK": "true", "SAVER_LOG_LEVEL": "WARNING", "SAVER_SHUTDOWN_GRACE_S": "15",
           "SAVER_MAX_CONCURRENT_INFERENCES": "4", "SAVER_MAX_QUEUE": "16",
           "SAVER_SCREEN_CACHE_SIZE": str(args.screen_cache_size)}  # fmt: skip
    if not args.real_model:
        env["SAVER_FAKE_MODEL"] = "1"
    tallies: dict[str, Tally] = defaultdict(Tally)
    cdn_config = CdnConfig(
        latency_ms=80.0, jitter_ms=20.0, n_images=16, image_dir=DEFAULT_IMAGES, seed=args.seed
    )
    with start_image_server() as images, CdnServer(cdn_config) as cdn:
        server = ServerProcess(env, args.out / "server.log", args.workers)
        try:
            server.wait_ready(600.0)
            mix = build_mix(images.base_url, images.port, images.image_paths, cdn.base_url)
            # Warm-up under the same mix, so "start" is after the allocator, the ONNX arenas and the screen
            # cache have grown to their working size: growth after it is what would leak.
            asyncio.run(run_load(server.base, mix, args.warmup, args.concurrency, 1e9, args.seed + 99,
                                 defaultdict(Tally), lambda: None))  # fmt: skip
            images.reset_hits()
            start = server.resources()
            samples = [start]
            log.info("soak: %g s against %s, server %s", args.duration, server.base, start)
            asyncio.run(run_load(server.base, mix, args.duration, args.concurrency, args.burst_every, args.seed,
                                 tallies, lambda: samples.append(server.resources())))  # fmt: skip
            time.sleep(2.0)  # let timed-out fetches and closing connections settle
            end = server.resources()
            samples.append(end)
            ready_after = httpx.get(server.base + "/readyz", timeout=5).status_code == 200
            alive = server.proc.poll() is None
            cached = cache_entries(httpx.get(server.base + "/metrics", timeout=5).text)
        finally:
            exit_code = server.stop(30.0)
        canary = images.hits["/canary"]
    summary = summarise(tallies, {
        "duration_s": args.duration, "concurrency": args.concurrency, "workers": args.workers,
        "model": "real" if args.real_model else "fake", "seed": args.seed,
        "resources": {"start": start, "end": end, "peak_rss_bytes": max(s["rss_bytes"] for s in samples),
                      "samples": samples},
        "canary_hits": canary, "ready_after": ready_after, "alive_after": alive, "exit_code": exit_code,
        "screen_cache": {"entries": cached, "cap": args.screen_cache_size},
        "cdn": {"requests": cdn.stats().requests, "images": cdn.source},
    })  # fmt: skip
    growth = end["rss_bytes"] / start["rss_bytes"] - 1.0
    checks = {
        f"rss_growth_after_warmup<={args.max_rss_growth:.0%}": growth <= args.max_rss_growth,
        f"open_fds_flat(+{args.fd_slack})": end["open_fds"] <= start["open_fds"] + args.fd_slack,
        "screen_cache_bounded": all(n <= args.screen_cache_size for n in cached.values()),
        "no_5xx": summary["http_5xx"] == 0,
        "no_transport_errors": summary["transport_errors"] == 0,
    }
    summary["rss_growth"] = growth
    summary["checks"] = checks
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "soak.md").write_text(markdown(summary))
    log.info("soak summary written to %s", args.out)
    failed = (
        not all(checks.values())
        or summary["unexpected"]
        or canary
        or not (alive and ready_after)
        or exit_code not in (0, -signal.SIGTERM)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
