"""The batch routes with the fake model: per-item answers and errors, caps, grouping, one vision budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from model.pipeline import TextRequest, TextResult
from service.fake import FakePipeline
from service.vision import FetchResult
from tests.service.apphelpers import app_settings, running_app

GROUNDABLE = "Kevin Durant joins the warriors"
PLAIN = "so tired of this weather today"


def _strip_timings(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "timings_ms"}


async def test_items_answer_as_single_posts_and_bad_items_fail_alone() -> None:
    items: list[Any] = [
        {"text": GROUNDABLE},
        {"text": "   "},  # blank: the schema's own check
        {"text": PLAIN, "extra": 1},
        17,  # not even an object
        {"tokens": ["Paris", "is", "nice"], "options": {"vision": "never"}},
    ]
    async with running_app() as (client, _):
        r = await client.post("/v1/mner:batch", json={"items": items})
        singles = [await client.post("/mner", json=items[i]) for i in (0, 4)]
    assert r.status_code == 200
    body = r.json()
    assert [it["index"] for it in body["items"]] == [0, 1, 2, 3, 4]
    assert [it["status"] for it in body["items"]] == [200, 422, 422, 422, 200]
    assert body["model"]["name"] == "fake-mner"
    for got, single in zip((body["items"][0], body["items"][4]), singles, strict=True):
        assert single.status_code == 200
        assert got["error"] is None
        assert _strip_timings(got["result"]) == _strip_timings(single.json())
    fields = [[d["field"] for d in it["error"]["details"]] for it in body["items"][1:4]]
    assert fields[0] == ["items.1"] and fields[1] == ["items.2.extra"] and fields[2] == ["items.3"]
    assert all(
        it["error"]["code"] == "validation_error" and it["result"] is None for it in body["items"][1:4]
    )


async def test_operator_limits_apply_per_item() -> None:
    settings = app_settings(max_text_chars=20)
    async with running_app(settings) as (client, _):
        r = await client.post("/v1/mner:batch", json={"items": [{"text": "x" * 21}, {"text": "short one"}]})
    items = r.json()["items"]
    assert [it["status"] for it in items] == [422, 200]
    assert items[0]["error"]["details"][0]["field"] == "items.0.text"


async def test_mre_items_resolve_their_arguments_alone() -> None:
    good = {"text": GROUNDABLE, "head": {"text": "Kevin Durant"}, "tail": {"text": "warriors"}}
    missing = {"text": GROUNDABLE, "head": {"text": "Kevin Durant"}, "tail": {"text": "Lakers"}}
    async with running_app() as (client, _):
        r = await client.post("/v1/mre:batch", json={"items": [missing, good]})
        single = await client.post("/mre", json=good)
    items = r.json()["items"]
    assert [it["status"] for it in items] == [422, 200]
    assert items[0]["error"]["details"][0]["field"] == "items.0.tail.text"
    assert _strip_timings(items[1]["result"]) == _strip_timings(single.json())


async def test_item_cap_at_and_past_the_setting() -> None:
    settings = app_settings(batch_max_items=4)
    async with running_app(settings) as (client, _):
        at_cap = await client.post("/v1/mner:batch", json={"items": [{"text": PLAIN}] * 4})
        past = await client.post("/v1/mner:batch", json={"items": [{"text": PLAIN}] * 5})
        empty = await client.post("/v1/mner:batch", json={"items": []})
    assert at_cap.status_code == 200 and len(at_cap.json()["items"]) == 4
    assert past.status_code == 422
    assert past.json()["error"]["details"][0]["field"] == "items"
    assert empty.status_code == 422


async def test_batch_routes_have_their_own_byte_cap() -> None:
    settings = app_settings(max_body_bytes=2048, batch_max_body_bytes=8192, batch_max_items=256)
    body = {"items": [{"text": PLAIN}] * 80}  # about 3 kB: over the single cap, under the batch cap
    async with running_app(settings) as (client, _):
        ok = await client.post("/v1/mner:batch", json=body)
        too_big = await client.post("/v1/mner:batch", json={"items": [{"text": PLAIN}] * 300})
        single = await client.post("/mner", json={"text": "y" * 3000})
    assert ok.status_code == 200
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    assert single.status_code == 413


class _Grouping(FakePipeline):
    """Records the sizes and word counts of each batched text call; fails any batch holding ``BOOM``."""

    def __init__(self) -> None:
        super().__init__("mner")
        self.groups: list[list[int]] = []

    def encode_text_batch(self, requests: Sequence[TextRequest]) -> list[TextResult]:
        if any(r.text and "BOOM" in r.text for r in requests):
            raise RuntimeError("secret internals")
        self.groups.append([len((r.text or "").split()) for r in requests])
        return super().encode_text_batch(requests)


async def test_text_is_encoded_in_length_groups_and_a_failing_post_fails_alone() -> None:
    pipe = _Grouping()
    texts = ["a b c d e f", "a", "a b c", "a b", "a b c d", "x BOOM"]
    settings = app_settings(batch_group_size=2, warmup=False)
    async with running_app(settings, {"mner": pipe}) as (client, _):
        r = await client.post("/v1/mner:batch", json={"items": [{"text": t} for t in texts]})
    items = r.json()["items"]
    assert [it["status"] for it in items] == [200, 200, 200, 200, 200, 500]
    assert items[5]["error"]["code"] == "internal_error"
    assert "secret" not in r.text
    # sorted by length, two at a time; the group holding the bad post ([2, 3]) was retried post by post
    assert pipe.groups == [[1, 2], [3], [4, 6]]


@dataclass
class _Fetched:
    image: Image.Image | None
    reason: str | None


class _SlowFetcher:
    """Every fetch takes ``delay_s``; records how many fetch calls were in flight at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.inflight = 0
        self.peak = 0

    async def __call__(self, urls: list[str], deadline: float) -> Sequence[FetchResult]:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(min(self.delay_s, max(0.0, deadline - time.monotonic())))
        finally:
            self.inflight -= 1
        if time.monotonic() >= deadline:
            return [_Fetched(None, "timeout") for _ in urls]
        return [_Fetched(Image.new("RGB", (16, 16), (200, 30, 30)), None) for _ in urls]


async def test_activated_items_fetch_concurrently_under_one_budget() -> None:
    fetcher = _SlowFetcher(0.3)
    items = [{"text": GROUNDABLE, "image_urls": [f"http://img.test/{i}.jpg"]} for i in range(6)]
    async with running_app(app_settings(warmup=False), fetcher=fetcher) as (client, _):
        started = time.perf_counter()
        r = await client.post("/v1/mner:batch", json={"items": items})
        took = time.perf_counter() - started
        late = await client.post(
            "/v1/mner:batch",
            json={"items": [{**it, "options": {"vision_budget_ms": 50}} for it in items[:2]]},
        )
    body = r.json()["items"]
    assert all(it["status"] == 200 and it["result"]["vision"]["fallback"] is None for it in body)
    assert fetcher.peak == 6
    assert took < 6 * 0.3  # the six fetches overlapped
    # an item's own, shorter budget still holds inside the batch's
    assert all(it["result"]["vision"]["fallback"] == "budget_exceeded" for it in late.json()["items"])


@pytest.mark.parametrize("path", ["/v1/mner:batch", "/v1/mre:batch"])
async def test_batch_routes_are_documented(path: str) -> None:
    async with running_app() as (client, _):
        doc = (await client.get("/openapi.json")).json()
    op = doc["paths"][path]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    item_schema = doc["components"]["schemas"][name]["properties"]["items"]["items"]
    assert item_schema["anyOf"][0]["$ref"].endswith("MnerRequest" if "mner" in path else "MreRequest")
    assert {"200", "413", "422", "429"} <= set(op["responses"])
