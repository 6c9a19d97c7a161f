"""Service settings: one pydantic-settings class, every field read from ``SAVER_<NAME>``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.batch_schemas import MAX_BATCH_ITEMS
from service.schemas import MAX_IMAGE_URLS, MAX_TEXT_CHARS, MAX_URL_CHARS, MAX_VISION_BUDGET_MS


class Settings(BaseSettings):
    """Everything an operator can tune; ``SAVER_PORT=9000`` sets ``port`` and so on."""

    model_config = SettingsConfigDict(env_prefix="SAVER_", extra="ignore", validate_default=True)

    # server
    host: str = Field(default="0.0.0.0", description="Interface uvicorn binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port uvicorn listens on.")
    workers: int = Field(
        default=1, ge=1, le=64, description="Uvicorn worker processes (each loads its own models)."
    )
    log_level: str = Field(default="INFO", description="Root log level (DEBUG shows URLs and request text).")
    log_json: bool = Field(default=True, description="Emit one JSON object per log line (False: plain text).")
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="On shutdown, how long in-flight requests may finish before being dropped.",
    )

    # models
    mner_artifacts: Path = Field(
        default=Path("artifacts/mner"), description="Exported MNER artifacts directory."
    )
    mre_artifacts: Path = Field(
        default=Path("artifacts/mre"), description="Exported MRE artifacts directory."
    )
    fake_model: bool = Field(
        default=False,
        description="TEST ONLY: serve the deterministic FakePipeline instead of real models (no weights).",
    )
    warmup: bool = Field(
        default=True, description="Run one full text + vision pass per model before turning ready."
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads per worker, torch backend only (None: leave torch's default).",
    )
    backend: Literal["onnx", "torch"] = Field(
        default="onnx",
        description=(
            "Runtime of the heavy stages (text encoder path, image backbone): ONNX Runtime graphs, taken "
            "from <artifacts>/onnx when they match the weights, else built into onnx_cache_dir at start; "
            "or plain torch."
        ),
    )
    onnx_cache_dir: Path = Field(
        default=Path(".cache/onnx"),
        description="Where ONNX graphs missing from the artifacts are built, keyed by a hash of the weights.",
    )
    onnx_quantize: bool = Field(
        default=False,
        description="int8 dynamic quantisation of the encoder's transformer layers (ONNX backend only).",
    )
    onnx_threads: int | None = Field(
        default=None,
        ge=1,
        description="ONNX Runtime intra-op threads per worker (None: the worker's share of the usable CPUs).",
    )

    # request limits (the schemas hold the hard caps; these may only lower them)
    max_text_chars: int = Field(
        default=MAX_TEXT_CHARS,
        ge=1,
        le=MAX_TEXT_CHARS,
        description="Longest accepted post text in characters.",
    )
    max_image_urls: int = Field(
        default=MAX_IMAGE_URLS, ge=0, le=MAX_IMAGE_URLS, description="Most image URLs accepted per request."
    )
    max_url_chars: int = Field(
        default=MAX_URL_CHARS,
        ge=10,
        le=MAX_URL_CHARS,
        description="Longest accepted image URL in characters.",
    )
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Request bodies larger than this are refused with 413."
    )

    # batch routes (/v1/mner:batch, /v1/mre:batch)
    batch_max_items: int = Field(
        default=64,
        ge=1,
        le=MAX_BATCH_ITEMS,
        description="Most items in one batch call; more is refused with 422.",
    )
    batch_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Batch request bodies larger than this are refused with 413 (single posts: max_body_bytes).",
    )
    batch_group_size: int = Field(
        default=16,
        ge=1,
        le=MAX_BATCH_ITEMS,
        description="Posts of similar length whose text is encoded in one forward within a batch call.",
    )

    # vision
    vision_budget_ms: int = Field(
        default=1500,
        ge=0,
        le=MAX_VISION_BUDGET_MS,
        description="Default per-request vision budget; images not fetched in time fall back to text-only.",
    )
    screen_cache_size: int = Field(
        default=1024,
        ge=0,
        description="Entries in the per-model LRU cache of screened images keyed by URL (0: off).",
    )
    allow_loopback: bool = Field(
        default=False, description="Allow image URLs on loopback addresses (tests and local demos only)."
    )
    fetch_max_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest image body fetched, in bytes."
    )
    fetch_max_redirects: int = Field(
        default=3, ge=0, le=10, description="Redirects followed per image fetch."
    )

    # capacity
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Whole-request deadline (queueing included); past it the answer is 504.",
    )
    max_concurrent_inferences: int = Field(
        default=4, ge=1, description="Requests computing at once per worker; the rest wait in the queue."
    )
    max_queue: int = Field(
        default=32,
        ge=0,
        description="Requests allowed to wait for a compute slot; beyond that the answer is 429.",
    )
    inference_threads: int = Field(
        default=2, ge=1, description="Threads of the executor that runs the CPU-bound model stages."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After seconds sent with 429 answers.")
    microbatch: bool = Field(
        default=False,
        description="Encode the text of concurrent requests together in one batched forward.",
    )
    microbatch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=50,
        description="Longest a request's text waits for others to join its batch (micro-batching).",
    )
    microbatch_max: int = Field(
        default=8, ge=1, le=64, description="Most requests whose text is encoded in one batched forward."
    )

    # traces
    tracing: bool = Field(
        default=False,
        description=(
            "Export OpenTelemetry traces over OTLP/HTTP: one span per request, one per stage. Endpoint "
            "and service name from the standard OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME."
        ),
    )

    # metrics
    metrics_multiproc_dir: Path | None = Field(
        default=None,
        description=(
            "prometheus_client multiprocess directory (PROMETHEUS_MULTIPROC_DIR); wiped at start. "
            "Required for correct metrics with several workers; a temporary one is made when unset."
        ),
    )

    # knowledge (issue 11; the index is loaded and reported, not yet read by the models)
    knowledge_index: Path | None = Field(
        default=None,
        description=(
            "Knowledge index folder (`saver index build`, or `saver index default` for the default one; "
            "`make serve` passes the latter). None: knowledge off. A missing or corrupt index leaves the "
            "service up, answering text-only; /v1/models says which index is in use, or why none is."
        ),
    )
