"""The vision path with a scripted fetcher: budget, dedup, cache and fallback reasons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from service.cache import ScreenCache
from service.fake import FakePipeline
from service.vision import BUDGET_EXCEEDED, FetchResult, VisionPath
from tests.service.fakes import InstrumentedFake


@dataclass
class Result:
    image: Image.Image | None
    reason: str | None


class ScriptedFetcher:
    """Answers per URL: "ok", a failure reason, or "slow" (waits until the deadline, then times out)."""

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.calls: list[list[str]] = []

    async def __call__(self, urls: list[str], deadline: float) -> Sequence[FetchResult]:
        self.calls.append(list(urls))
        out = []
        for url in urls:
            what = self.script[url]
            if what == "slow":
                await asyncio.sleep(max(deadline - time.monotonic(), 0))
                out.append(Result(None, "timeout"))
            elif what == "ok":
                out.append(Result(Image.new("RGB", (16, 16), (200, 10, 10)), None))
            else:
                out.append(Result(None, what))
        return out


async def _stage(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _run(path: VisionPath, urls: list[str], budget_s: float = 1.0) -> Any:
    pipe = path.pipeline
    result = pipe.encode_text(text="Paris Hilton")
    activated = pipe.activation(result, "auto")
    return asyncio.run(path.run(result, activated, urls, budget_s, _stage, lambda *_: None))


def test_zero_budget_opens_no_connection() -> None:
    fetcher = ScriptedFetcher({"u": "ok"})
    out = _run(VisionPath(FakePipeline(), ScreenCache(8), fetcher), ["u"], budget_s=0.0)
    assert fetcher.calls == []
    assert out.fallback == BUDGET_EXCEEDED and not out.activated.any()


def test_slow_image_is_a_budget_fallback_and_the_rest_still_serve() -> None:
    fetcher = ScriptedFetcher({"slow": "slow", "ok": "ok"})
    out = _run(VisionPath(FakePipeline(), ScreenCache(8), fetcher), ["slow", "ok"], budget_s=0.05)
    assert out.errors == {0: BUDGET_EXCEEDED}
    assert out.fallback is None
    assert all(sel == [1] for sel, on in zip(out.selected, out.activated, strict=True) if on)


def test_failed_fetch_reason_is_reported() -> None:
    fetcher = ScriptedFetcher({"a": "dns", "b": "too_large"})
    out = _run(VisionPath(FakePipeline(), ScreenCache(8), fetcher), ["a", "b"])
    assert out.errors == {0: "fetch_failed:dns", 1: "fetch_failed:too_large"}
    assert out.fallback == "fetch_failed:dns" and not out.activated.any()


def test_duplicate_urls_are_fetched_once_and_reported_under_the_first_index() -> None:
    fetcher = ScriptedFetcher({"a": "ok"})
    pipe = InstrumentedFake()
    out = _run(VisionPath(pipe, ScreenCache(8), fetcher), ["a", "a"])
    assert fetcher.calls == [["a"]]
    assert pipe.images_seen["screen"] == 1
    assert set(out.details) == {0}


def test_cache_skips_screening_and_fetches_only_selected() -> None:
    fetcher = ScriptedFetcher({"a": "ok", "b": "ok", "c": "ok"})
    pipe = InstrumentedFake(select_k=1)
    path = VisionPath(pipe, ScreenCache(8), fetcher)
    first = _run(path, ["a", "b", "c"])
    second = _run(path, ["a", "b", "c"])
    assert fetcher.calls[0] == ["a", "b", "c"]
    chosen = {["a", "b", "c"][i] for sel in first.selected for i in sel}
    assert sorted(fetcher.calls[1]) == sorted(chosen) and len(fetcher.calls) == 2
    assert pipe.images_seen["screen"] == 3
    assert second.cache_hits == 3 and second.fetched == len(chosen)
    assert [s for s in second.selected] == [s for s in first.selected]
    assert np.array_equal(second.activated, first.activated)
