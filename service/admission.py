"""Admission control: a few requests compute at once, a bounded number wait, the rest get 429 at once.

Answering "overloaded" immediately beats queueing without bound: the client (or the load balancer) can
retry elsewhere, and latency of admitted requests stays predictable (TEI's permits, infinity's
``is_overloaded``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import Overloaded


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int, retry_after_s: int) -> None:
        self.capacity = max_concurrent + max_queue
        self.retry_after_s = retry_after_s
        self._compute = asyncio.Semaphore(max_concurrent)
        self._admitted = 0  # queued + computing
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def admitted(self) -> int:
        return self._admitted

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a compute slot; yields the seconds spent queueing. Raises ``Overloaded`` when full."""
        if self._admitted >= self.capacity:
            raise Overloaded(
                f"server busy: {self._admitted} requests in flight; retry later",
                retry_after_s=self.retry_after_s,
            )
        self._admitted += 1
        self._idle.clear()
        try:
            queued_at = time.perf_counter()
            async with self._compute:
                yield time.perf_counter() - queued_at
        finally:
            self._admitted -= 1
            if self._admitted == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request is admitted; False if some were still running at the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
