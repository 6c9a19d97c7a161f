"""The load generator: round plan, closed and open loop, and per-mode bookkeeping (no network)."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from bench.load import LoadConfig, closed_round, open_round, plan_rounds, run_load, send
from bench.workload import Post, Replay, Request


class FakeService:
    """Answers /mner like the service would, after a short wait; tracks requests in flight."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.visions: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        vision = body["options"]["vision"]
        self.visions.append(vision)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.delay_s)
        self.in_flight -= 1
        on = vision != "never"
        n = len(body["image_urls"])
        return httpx.Response(
            200,
            json={
                "entities": [],
                "vision": {"units_total": 3, "units_activated": 3 if on else 0, "images_requested": n,
                           "images_fetched": n if on else 0, "images_selected": 1 if on else 0,
                           "fallback": None},
                "timings_ms": {"text_encode": 1.0, "total": 2.0},
            },
        )  # fmt: skip


def replay() -> Replay:
    return Replay([Post("a", ("Hello", "World"), 2), Post("b", ("quiet",), 1)], "http://cdn:1")


def test_plan_gives_every_mode_the_same_rounds_in_turn() -> None:
    plan = plan_rounds(["text", "always", "saver"], 30.0, 4.0)
    assert [m for m, _ in plan] == ["text", "always", "saver"] * 2  # 30 / (4 * 3) -> 2 cycles (rounded)
    assert sum(s for _, s in plan) == pytest.approx(30.0)
    assert plan_rounds(["text", "saver"], 1.0, 10.0) == [("text", 0.5), ("saver", 0.5)]  # at least one each
    assert plan_rounds(["text"], 0.0, 1.0) == []


async def test_closed_round_keeps_the_concurrency_and_sends_only_its_mode() -> None:
    service = FakeService()
    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as client:
        samples = await closed_round(client, "http://svc/mner", replay(), "always", 0.2, concurrency=3)
    assert service.max_in_flight == 3
    assert set(service.visions) == {"always"}
    assert len(samples) >= 6 and all(s.ok and s.mode == "always" for s in samples)
    assert samples[0].units_activated == 3 and samples[0].timings_ms["total"] == 2.0


async def test_open_round_sends_at_the_fixed_rate_whatever_the_answers_take() -> None:
    service = FakeService(delay_s=0.3)  # slower than the arrival gap: requests pile up, as open loop must
    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as client:
        samples = await open_round(
            client,
            "http://svc/mner",
            replay(),
            "text",
            0.5,
            rate=40.0,
            rng=random.Random(0),
            arrivals="uniform",
        )
    assert 19 <= len(samples) <= 20  # arrivals at 0.025, 0.05, ... < 0.5 s
    assert service.max_in_flight >= 10
    assert set(service.visions) == {"never"}


async def test_failures_become_samples_with_their_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {}})

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    request = Request("saver", 0, 0, {"text": "x", "image_urls": [], "options": {"vision": "auto"}})
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        assert (await send(client, "http://svc/mner", request))[0].status == 429
    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as client:
        (sample,) = await send(client, "http://svc/mner", request)
    assert sample.status == 0 and not sample.ok and sample.text == "x"


async def test_run_load_charges_each_round_to_its_mode() -> None:
    service = FakeService(delay_s=0.005)
    cdn = iter(range(0, 10_000, 5))  # the CDN counter grows by 5 between any two readings
    config = LoadConfig(modes=["text", "saver"], duration_s=0.4, round_s=0.1, warmup_s=0.1, concurrency=2)
    samples, runs = await run_load(
        "http://svc", replay(), config, rss_mb=lambda: 42.0, cdn_requests=lambda: next(cdn),
        transport=httpx.MockTransport(service),
    )  # fmt: skip
    assert all(s.mode == "text" and s.units_activated == 0 for s in samples["text"])
    assert all(s.mode == "saver" and s.units_activated == 3 for s in samples["saver"])
    for mode in ("text", "saver"):
        assert runs[mode].seconds == pytest.approx(0.2, abs=0.1)  # two rounds of 0.1 s each
        assert runs[mode].rss_mb == 42.0
        assert runs[mode].cdn_requests == 10  # two rounds, 5 each
    assert service.visions.count("auto") > len(samples["saver"])  # warm-up requests sent but not kept


async def test_batch_mode_sends_batch_calls_and_counts_every_post() -> None:
    service = FakeService(delay_s=0.005)
    paths: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        body = json.loads(request.content)
        if "items" not in body:
            return await service(request)
        outcomes = []
        for i, item in enumerate(body["items"]):
            single = await service(httpx.Request("POST", "http://svc/mner", json=item))
            status = 422 if i == 0 else 200  # the first post of every call fails alone
            outcomes.append(
                {"index": i, "status": status, "result": single.json() if status == 200 else None}
            )
        return httpx.Response(200, json={"items": outcomes})

    config = LoadConfig(
        modes=["saver", "saver_batch"], duration_s=0.4, round_s=0.1, warmup_s=0.0, concurrency=2, batch_size=3
    )
    samples, _ = await run_load("http://svc", replay(), config, transport=httpx.MockTransport(answer))
    assert set(paths) == {"/mner", "/v1/mner:batch"}
    batch = samples["saver_batch"]
    assert len(batch) % 3 == 0 and batch
    assert [s.status for s in batch[:3]] == [422, 200, 200]
    assert all(s.units_activated == 3 for s in batch if s.ok)  # the batch posts keep their mode's vision
    assert all(s.mode == "saver" for s in samples["saver"])
