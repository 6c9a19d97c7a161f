"""Limits of outbound image fetching and decoding, and the one error type both raise.

The reason vocabulary is small and fixed so that it can label Prometheus counters
(``saver_vision_fallbacks_total{reason}`` and the like) without unbounded cardinality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from model.image_decode import DECODE_TARGET_PX

FetchFailure = Literal[
    "invalid_url",  # unparsable URL, credentials in it, or too long
    "scheme",  # anything but http/https
    "blocked_address",  # the host is (or resolves to) a non-global address
    "dns",  # the name did not resolve (or resolving timed out)
    "connect",  # TCP/TLS connection failed
    "timeout",  # a connect/read timeout or the overall deadline
    "network",  # connection reset or protocol error after connecting
    "http_status",  # final response not 2xx
    "redirects",  # more redirects than allowed, or a redirect without a usable Location
    "too_large",  # body (or its announced length) over the byte cap
    "not_image",  # magic bytes are not an allowed image format (HTML, empty body, encoded body...)
    "too_many_pixels",  # image dimensions over the pixel cap (decompression bomb)
    "decode",  # Pillow could not decode the (e.g. truncated) image
    "internal",  # an unexpected error (a bug); logged with its traceback
]

# All reasons, e.g. to pre-register label values of a failure counter.
FETCH_FAILURE_REASONS: tuple[str, ...] = get_args(FetchFailure)

DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP")

# A resolver maps a host name to the IP address strings it resolves to; raises OSError when it cannot.
Resolver = Callable[[str], list[str]]


class FetchError(Exception):
    """A fetch or decode failure; ``reason`` is one of ``FETCH_FAILURE_REASONS``."""

    def __init__(self, reason: FetchFailure, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: FetchFailure = reason
        self.detail = detail


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch of a user-supplied image URL may do. Defaults are production-safe."""

    allow_loopback: bool = False  # tests and benchmarks only: permit 127.0.0.0/8 and ::1
    max_bytes: int = 8 * 1024 * 1024  # cap on the response body, checked while streaming
    max_redirects: int = 3  # redirects followed by hand, each hop re-checked
    connect_timeout_s: float = 2.0  # per connection attempt (also bounds name resolution)
    read_timeout_s: float = 3.0  # longest silence between two reads
    max_pixels: int = 40_000_000  # width × height cap, checked from the header before decoding
    allowed_formats: tuple[str, ...] = DEFAULT_FORMATS  # Pillow format names accepted
    decode_target_px: int = DECODE_TARGET_PX  # JPEG draft mode and reduction stop here
    max_url_length: int = 2048  # longer URLs are refused as invalid_url
    max_connections: int = 32  # connection pool size of make_client()
    user_agent: str = "saver-image-fetcher/0.1"  # sent with every request
    resolver: Resolver | None = None  # test seam: replaces getaddrinfo for host names (not literals)
