"""Admission control: bounded concurrency, a bounded queue, immediate 429 beyond, draining."""

from __future__ import annotations

import asyncio

import pytest

from service.admission import Admission
from service.errors import Overloaded


async def test_capacity_is_concurrency_plus_queue() -> None:
    admission = Admission(max_concurrent=2, max_queue=1, retry_after_s=7)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def job() -> None:
        nonlocal running, peak
        async with admission.slot():
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1

    tasks = [asyncio.create_task(job()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert admission.admitted == 3 and running == 2
    with pytest.raises(Overloaded) as err:
        async with admission.slot():
            pass
    assert err.value.headers() == {"Retry-After": "7"}
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and admission.admitted == 0


async def test_queue_time_is_reported_and_drain_waits() -> None:
    admission = Admission(max_concurrent=1, max_queue=4, retry_after_s=1)
    waits: list[float] = []

    async def job() -> None:
        async with admission.slot() as queued_s:
            waits.append(queued_s)
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(job()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not await admission.drain(0.01)
    assert await admission.drain(2.0)
    await asyncio.gather(*tasks)
    assert waits[0] < 0.04 <= waits[1]
