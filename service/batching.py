"""Micro-batching of the text stage: concurrent requests' ``encode_text`` calls share one forward.

The first request to arrive opens a batch and waits at most ``max_wait_s`` for others to join; the batch
closes earlier when it holds ``max_batch`` requests. One ``encode_text_batch`` then runs in the executor
and each caller gets its own ``TextResult``. A request alone pays the wait and nothing else; under
concurrency the encoder runs fewer, larger forwards (better use of the matrix kernels, fewer thread
hand-offs). If a batch fails, its requests are retried one by one, so one bad input fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from model.pipeline import BatchTextEncoder, TextRequest, TextResult

log = logging.getLogger(__name__)

Offload = Callable[..., Awaitable[Any]]  # runs fn(*args) off the event loop, e.g. in the inference executor


class TextBatcher:
    def __init__(
        self,
        pipeline: BatchTextEncoder,
        offload: Offload,
        max_wait_s: float = 0.002,
        max_batch: int = 8,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.offload = offload
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self.on_batch = on_batch  # called with each batch's size (metrics, tests)
        self._pending: list[tuple[TextRequest, asyncio.Future[TextResult]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()  # strong references until each batch is done

    async def encode(self, request: TextRequest) -> TextResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TextResult] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[TextRequest, asyncio.Future[TextResult]]]) -> None:
        live = [(r, f) for r, f in batch if not f.done()]  # callers that gave up (deadline) are dropped
        if not live:
            return
        if self.on_batch is not None:
            self.on_batch(len(live))
        requests = [r for r, _ in live]
        try:
            results: Sequence[TextResult] = await self.offload(self.pipeline.encode_text_batch, requests)
        except Exception as exc:
            if len(live) == 1:  # the caller's own error handling maps it to a response
                if not live[0][1].done():
                    live[0][1].set_exception(exc)
                return
            log.warning("batched text encoding of %d requests failed; retrying one by one", len(live))
            await asyncio.gather(*(self._run([item]) for item in live))
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        """Run what is pending now and wait for every batch in flight (shutdown)."""
        self._flush()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
