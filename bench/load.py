"""The load generator: short rounds that cycle through the modes against one warm service.

A round runs one mode only (its ``options.vision``), at a fixed concurrency (closed loop: N clients, each
sending its next request when the last one is answered) or at a fixed arrival rate (open loop: Poisson or
evenly spaced arrivals, whatever the answers do). A round stops sending at its end and waits for the
requests it has in flight, so rounds never overlap and every answer is charged to its own mode. Cycling
text → always → saver → text ... in rounds of a few seconds spreads machine noise (other jobs, thermal
drift, the service's caches warming) over all modes alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.report import ModeRun, Sample
from bench.workload import Replay, Request, is_batch

log = logging.getLogger(__name__)


@dataclass
class LoadConfig:
    modes: list[str]  # bench modes, in round order
    duration_s: float  # measured time over all modes
    round_s: float = 3.0  # target length of one round
    warmup_s: float = 5.0  # unmeasured rounds first (cycling the modes too)
    concurrency: int = 4  # closed-loop clients (used when rate is None)
    rate: float | None = None  # open-loop arrivals per second; None: closed loop
    arrivals: str = "poisson"  # poisson | uniform (open loop only)
    timeout_s: float = 30.0  # client-side limit per request
    seed: int = 0  # seeds the arrival times
    batch_size: int = 1  # posts per call in the ``*_batch`` modes (POST /v1/mner:batch)

    def describe(self) -> str:
        if self.rate is None:
            return f"closed loop, {self.concurrency} concurrent clients"
        return f"open loop, {self.rate:g} requests/s ({self.arrivals} arrivals)"


def plan_rounds(modes: list[str], total_s: float, round_s: float) -> list[tuple[str, float]]:
    """(mode, seconds) per round: the same number of equal rounds for every mode, cycling in order."""
    if not modes or total_s <= 0:
        return []
    cycles = max(1, round(total_s / (round_s * len(modes))))
    length = total_s / (cycles * len(modes))
    return [(mode, length) for _ in range(cycles) for mode in modes]


async def send(client: httpx.AsyncClient, url: str, request: Request) -> list[Sample]:
    """Post one request and turn the answer into Samples, one per post (a batch call carries several; each
    of its posts has the call's latency). Status 0 when no answer came."""
    posts = request.body.get("items", [request.body])
    texts = [str(p.get("text", "")) for p in posts]
    started = time.perf_counter()
    try:
        response = await client.post(url, json=request.body)
    except httpx.HTTPError as exc:
        log.debug("request failed: %r", exc)
        return [Sample(request.mode, (time.perf_counter() - started) * 1000, 0, t) for t in texts]
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return [Sample(request.mode, latency_ms, response.status_code, t) for t in texts]
    answer = response.json()
    if "items" not in request.body:
        return [_sample(request.mode, latency_ms, 200, texts[0], answer)]
    return [
        _sample(request.mode, latency_ms, int(item["status"]), text, item.get("result") or {})
        for text, item in zip(texts, answer["items"], strict=True)
    ]


def _sample(mode: str, latency_ms: float, status: int, text: str, answer: dict[str, Any]) -> Sample:
    if status != 200:
        return Sample(mode, latency_ms, status, text)
    vision = answer.get("vision", {})
    return Sample(
        mode=mode,
        latency_ms=latency_ms,
        status=200,
        text=text,
        units_total=int(vision.get("units_total", 0)),
        units_activated=int(vision.get("units_activated", 0)),
        images_requested=int(vision.get("images_requested", 0)),
        images_fetched=int(vision.get("images_fetched", 0)),
        images_selected=int(vision.get("images_selected", 0)),
        fallback=vision.get("fallback"),
        timings_ms={k: float(v) for k, v in answer.get("timings_ms", {}).items()},
    )


def next_request(replay: Replay, mode: str, batch_size: int) -> Request:
    return replay.next_batch(mode, batch_size) if is_batch(mode) else replay.next(mode)


async def closed_round(
    client: httpx.AsyncClient,
    url: str,
    replay: Replay,
    mode: str,
    seconds: float,
    concurrency: int,
    batch_size: int = 1,
) -> list[Sample]:
    samples: list[Sample] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            samples.extend(await send(client, url, next_request(replay, mode, batch_size)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def open_round(
    client: httpx.AsyncClient,
    url: str,
    replay: Replay,
    mode: str,
    seconds: float,
    rate: float,
    rng: random.Random,
    arrivals: str,
    batch_size: int = 1,
) -> list[Sample]:
    started = time.perf_counter()
    tasks: list[asyncio.Task[list[Sample]]] = []
    at = 0.0
    while True:
        at += rng.expovariate(rate) if arrivals == "poisson" else 1.0 / rate
        if at >= seconds:
            break
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(client, url, next_request(replay, mode, batch_size))))
    return [s for got in await asyncio.gather(*tasks) for s in got]


async def run_load(
    base_url: str,
    replay: Replay,
    config: LoadConfig,
    rss_mb: Callable[[], float | None] = lambda: None,
    cdn_requests: Callable[[], int] = lambda: 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[dict[str, list[Sample]], dict[str, ModeRun]]:
    """Warm up, then run the measured rounds; samples and per-mode run facts, by mode.

    ``rss_mb`` and ``cdn_requests`` are read after every round; ``transport`` replaces the network (tests).
    """
    single_url, batch_url = f"{base_url.rstrip('/')}/mner", f"{base_url.rstrip('/')}/v1/mner:batch"
    rng = random.Random(config.seed)
    connections = max(config.concurrency, 256 if config.rate is not None else 0)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    samples: dict[str, list[Sample]] = {mode: [] for mode in config.modes}
    runs: dict[str, ModeRun] = {mode: ModeRun() for mode in config.modes}

    async def one_round(client: httpx.AsyncClient, mode: str, seconds: float) -> tuple[list[Sample], float]:
        started = time.perf_counter()
        url, size = (batch_url, config.batch_size) if is_batch(mode) else (single_url, 1)
        if config.rate is None:
            got = await closed_round(client, url, replay, mode, seconds, config.concurrency, size)
        else:
            got = await open_round(
                client, url, replay, mode, seconds, config.rate, rng, config.arrivals, size
            )
        return got, time.perf_counter() - started

    async with httpx.AsyncClient(limits=limits, timeout=config.timeout_s, transport=transport) as client:
        warmup = plan_rounds(config.modes, config.warmup_s, min(config.round_s, config.warmup_s))
        for mode, seconds in warmup:
            await one_round(client, mode, seconds)
        log.info("warm-up done (%d rounds); measuring %s", len(warmup), config.describe())
        for number, (mode, seconds) in enumerate(
            plan_rounds(config.modes, config.duration_s, config.round_s)
        ):
            before = cdn_requests()
            got, took = await one_round(client, mode, seconds)
            samples[mode] += got
            run = runs[mode]
            run.seconds += took
            run.cdn_requests += cdn_requests() - before
            run.rss_mb = rss_mb()
            ok = sum(s.ok for s in got)
            log.info("round %d %s: %d answered, %d failed in %.1f s", number, mode, ok, len(got) - ok, took)
    return samples, runs
