"""The screen cache: bounded, least recently used first out, off at size 0."""

from __future__ import annotations

import numpy as np

from model.pipeline import ScreenedImage
from service.cache import ScreenCache


def test_cache_is_bounded_lru() -> None:
    cache = ScreenCache(2)
    items = {k: ScreenedImage(vector=np.zeros(2)) for k in "abc"}
    cache.put("a", items["a"])
    cache.put("b", items["b"])
    assert cache.get("a") is items["a"]  # a is now the most recent
    cache.put("c", items["c"])
    assert cache.get("b") is None and cache.get("a") is items["a"] and len(cache) == 2
    off = ScreenCache(0)
    off.put("a", items["a"])
    assert off.get("a") is None
