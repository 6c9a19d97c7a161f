"""The text micro-batcher: concurrent requests share one batched forward, each gets exactly its own result,
a batch closes at its size cap or after the bounded wait, and one bad request fails only itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from model.pipeline import MnerResult, TextRequest
from model.runner import run_pipeline
from service.batching import TextBatcher
from service.fake import FakePipeline
from tests.service.apphelpers import app_settings, running_app
from tests.service.fakes import InstrumentedFake, instrumented

TEXTS = ["Kevin Durant joins the Warriors", "nothing here", "Obama in Paris", "New York New York", "ok"]


async def offload(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_concurrent_requests_share_one_forward_and_get_their_own_results() -> None:
    fake = InstrumentedFake("mner")
    batcher = TextBatcher(fake, offload, max_wait_s=0.05, max_batch=8)
    results = await asyncio.gather(*(batcher.encode(TextRequest(t)) for t in TEXTS))
    assert fake.batch_sizes == [len(TEXTS)]
    for text, result in zip(TEXTS, results, strict=True):
        alone = fake.encode_text(text)
        assert (result.text, result.units, result.gate.tolist()) == (
            alone.text,
            alone.units,
            alone.gate.tolist(),
        )


async def test_batches_close_at_the_size_cap() -> None:
    fake = InstrumentedFake("mner")
    batcher = TextBatcher(fake, offload, max_wait_s=10.0, max_batch=2)  # the wait would never end a batch
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(batcher.encode(TextRequest(t)) for t in TEXTS[:4])), 5)
    assert sorted(fake.batch_sizes) == [2, 2] and time.perf_counter() - started < 5


async def test_a_lone_request_waits_only_the_bounded_time() -> None:
    fake = InstrumentedFake("mner")
    batcher = TextBatcher(fake, offload, max_wait_s=0.002, max_batch=8)
    result = await asyncio.wait_for(batcher.encode(TextRequest("Obama in Paris")), 5)
    assert result.text == "Obama in Paris" and fake.batch_sizes == [1]
    later = await batcher.encode(TextRequest("Obama"))  # a fresh batch after the first one ran
    assert later.text == "Obama" and fake.batch_sizes == [1, 1]


async def test_one_bad_request_fails_alone() -> None:
    fake = InstrumentedFake("mre")
    batcher = TextBatcher(fake, offload, max_wait_s=0.05, max_batch=8)
    good = batcher.encode(TextRequest("Obama visited Paris", head=(0, 1), tail=(2, 3)))
    bad = batcher.encode(TextRequest("Obama visited Paris"))  # MRE without head and tail
    ok, failed = await asyncio.gather(good, bad, return_exceptions=True)
    assert not isinstance(ok, BaseException) and ok.units == [(0, 1), (2, 3)]
    assert isinstance(failed, ValueError)
    assert fake.batch_sizes[0] == 2  # tried together first, then one by one


async def test_a_caller_that_gave_up_does_not_break_the_batch() -> None:
    fake = InstrumentedFake("mner")
    batcher = TextBatcher(fake, offload, max_wait_s=0.05, max_batch=8)
    impatient = asyncio.ensure_future(batcher.encode(TextRequest("Obama")))
    patient = asyncio.ensure_future(batcher.encode(TextRequest("Kevin Durant")))
    await asyncio.sleep(0)
    impatient.cancel()
    result = await patient
    assert result.text == "Kevin Durant" and fake.batch_sizes == [1]  # the cancelled one was dropped
    await batcher.aclose()


@pytest.mark.parametrize("microbatch", [False, True])
async def test_the_app_answers_the_same_with_micro_batching(microbatch: bool) -> None:
    pipes = instrumented()
    settings = app_settings(microbatch=microbatch, microbatch_wait_ms=20.0, max_concurrent_inferences=8)
    async with running_app(settings, pipes) as (client, _):
        responses = await asyncio.gather(*(client.post("/mner", json={"text": t}) for t in TEXTS))
        pair = await client.post(
            "/mre", json={"text": "Obama visited Paris", "head": {"text": "Obama"}, "tail": {"text": "Paris"}}
        )
    assert all(r.status_code == 200 for r in responses) and pair.status_code == 200
    expected = [_entities(FakePipeline("mner"), t) for t in TEXTS]
    got = [[(e["text"], e["type"], e["score"]) for e in r.json()["entities"]] for r in responses]
    assert got == expected
    assert pair.json()["relation"] != "None"
    sizes = pipes["mner"].batch_sizes
    if microbatch:
        # warm-up runs one batch of 2; the five concurrent requests then go in fewer forwards than five
        assert sizes[0] == 2 and sum(sizes[1:]) == len(TEXTS) and len(sizes[1:]) < len(TEXTS)
        assert pipes["mre"].batch_sizes[-1] == 1
    else:
        assert sizes == [] and pipes["mre"].batch_sizes == []


def _entities(fake: FakePipeline, text: str) -> list[tuple[str, str, float]]:
    """The fake's answer for a post without images, computed directly."""
    answer = run_pipeline(fake, TextRequest(text)).result
    assert isinstance(answer, MnerResult)
    return [(e.text, e.type, e.score) for e in answer.entities]
