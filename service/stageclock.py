"""The stage clock of one request: the single source of stage boundaries.

Every stage interval it is told about is added to ``timings`` (the response's ``timings_ms`` and the
``saver_stage_duration_seconds`` histogram) and, when tracing is on, becomes a child span of the request's
server span with exactly the same start and end, so a trace and the timings can never disagree.

With tracing off the clock only adds numbers: nothing of OpenTelemetry is imported or called.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]


class FetchedImage(Protocol):
    """What the clock reads of a fetch result (``service.fetch.FetchOutcome`` has all of it)."""

    @property
    def reason(self) -> str | None: ...


class StageClock:
    def __init__(self, stages: Sequence[str], tracer: Tracer | None = None, show_urls: bool = False) -> None:
        self.timings: dict[str, float] = dict.fromkeys(stages, 0.0)  # seconds per stage
        self.tracer = tracer
        self.show_urls = show_urls  # URLs in span attributes: only at DEBUG, like the logs
        # One anchor maps perf_counter (the stage clock) to the epoch nanoseconds spans are stamped with.
        self._anchor_perf = time.perf_counter()
        self._anchor_ns = time.time_ns()

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def add(
        self, name: str, started: float, ended: float, attributes: Mapping[str, Any] | None = None
    ) -> Span | None:
        """Count ``[started, ended)`` (perf_counter seconds) towards ``name``; its span when tracing."""
        self.timings[name] += ended - started
        if self.tracer is None:
            return None
        span = self.tracer.start_span(name, start_time=self._ns(started), attributes=attributes)
        span.end(end_time=self._ns(ended))
        return span

    def add_fetch(
        self, started: float, ended: float, urls: Sequence[str], results: Sequence[FetchedImage]
    ) -> None:
        """One fetch round: the ``fetch`` stage, and a ``fetch_image`` span per image under it."""
        span = self.add("fetch", started, ended, {"saver.images": len(urls)})
        if span is None or self.tracer is None:
            return
        from opentelemetry.trace import set_span_in_context  # tracing is on: the API is installed

        parent = set_span_in_context(span)
        for url, result in zip(urls, results, strict=True):
            elapsed_ms: float | None = getattr(result, "elapsed_ms", None)  # test fetchers may not time
            end = ended if elapsed_ms is None else min(ended, started + elapsed_ms / 1000.0)
            attributes: dict[str, Any] = {"saver.image.outcome": result.reason or "ok"}
            n_bytes: int | None = getattr(result, "n_bytes", None)
            if n_bytes is not None:
                attributes["saver.image.bytes"] = n_bytes
            if self.show_urls:
                attributes["url.full"] = url
            child = self.tracer.start_span(
                "fetch_image", context=parent, start_time=self._ns(started), attributes=attributes
            )
            child.end(end_time=self._ns(end))

    def annotate(self, attributes: Mapping[str, Any]) -> None:
        """Attributes of the whole request, set on its server span (the current span)."""
        if self.tracer is None:
            return
        from opentelemetry.trace import get_current_span

        get_current_span().set_attributes(dict(attributes))

    def _ns(self, perf: float) -> int:
        return self._anchor_ns + int((perf - self._anchor_perf) * 1e9)
