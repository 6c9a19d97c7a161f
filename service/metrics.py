"""Prometheus metrics of the service (SPEC §6), correct with one process or several uvicorn workers.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set (and wiped) by ``service.cli`` before the workers
start, every worker writes its values there, and a scrape of any worker aggregates all of them.
Labels are all low-cardinality: never a URL, a text or a request id.
"""

from __future__ import annotations

import math
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# 1 ms .. 10 s with the usual SLO points, so quantiles near 5-25 ms and near 1 s are both resolvable.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

IMAGE_OUTCOMES = ("fetched", "selected", "cache_hit", "failed", "skipped")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_worker_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (in-flight) from the aggregate."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


class ServiceMetrics:
    """All metric objects of one app; a private registry lets tests build many apps in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # *_created series only double the scrape size here
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "saver_requests", "Inference requests answered", ["endpoint", "status"], registry=r
        )
        self.request_duration = Histogram(
            "saver_request_duration_seconds",
            "Wall time of inference requests, queueing included",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "saver_stage_duration_seconds",
            "Time per pipeline stage (queue, text_encode, gate, fetch, screen, select, detail, fuse)",
            ["endpoint", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gate_requests = Counter(
            "saver_gate_requests",
            "Requests by gate decision: activated (some unit consulted vision) or skipped; mode is the "
            "request's vision option (auto, always, never), so calibrated rates compare with auto only",
            ["endpoint", "decision", "mode"],
            registry=r,
        )
        self.gate_units = Counter(
            "saver_gate_units",
            "Units by gate decision and the request's vision mode (auto, always, never)",
            ["endpoint", "decision", "mode"],
            registry=r,
        )
        self.images = Counter(
            "saver_images",
            "Images by outcome: fetched, selected, cache_hit, failed, skipped",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.vision_fallbacks = Counter(
            "saver_vision_fallbacks",
            "Requests whose activated units fell back to text-only, by reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.inflight = Gauge(
            "saver_inflight_requests",
            "Inference requests being served (queued or computing)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.screen_cache_entries = Gauge(
            "saver_screen_cache_entries",
            "Entries in the LRU cache of screened images (bounded by SAVER_SCREEN_CACHE_SIZE)",
            ["endpoint"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "saver_model_info",
            "Loaded model identity (value 1)",
            ["task", "name", "version", "trained", "threshold"],
            registry=r,
            multiprocess_mode="max",
        )
        self.calibrated_coverage = Gauge(
            "saver_gate_calibrated_coverage",
            "Share of all units calibration expects auto traffic to activate; compare with the live "
            "auto-mode unit activation rate",
            ["endpoint"],
            registry=r,
            multiprocess_mode="max",
        )

    def set_model(self, task: str, name: str, version: str, trained: bool, threshold: float) -> None:
        shown = "inf" if math.isinf(threshold) else f"{threshold:.4g}"
        self.model_info.labels(
            task=task, name=name, version=version, trained=str(trained).lower(), threshold=shown
        ).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this registry, or every worker's values in multiprocess mode."""
        path = multiprocess_dir()
        if path:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
