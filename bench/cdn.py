"""A CDN stand-in on 127.0.0.1: real-size JPEGs behind a configurable time to first byte.

Every ``GET /img/<post>/<k>.jpg`` answers one JPEG of a fixed pool (about 1024×768, 100–300 kB), picked by
a hash of ``<post>/<k>`` so that a post's image is the same bytes every time it is asked for. The query
string is ignored by the server; the benchmark uses it to give every request URLs the service has never
seen (see ``bench/workload.py``). Before answering, the handler sleeps a latency drawn from
N(latency_ms, jitter_ms) clipped at 0. It counts the requests and bytes it served, so a benchmark can
check the service's ``images_fetched`` against what really left the "CDN".
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

SIZE = (1024, 768)  # width, height of a typical timeline photo as served by a CDN
QUALITIES = (95, 90, 85, 80, 75, 70, 60, 50, 40, 30)  # JPEG qualities tried, best first


@dataclass
class CdnConfig:
    latency_ms: float = 80.0  # mean time to first byte
    jitter_ms: float = 20.0  # standard deviation of the time to first byte (clipped at 0)
    n_images: int = 16  # distinct JPEGs in the pool
    image_dir: Path | None = None  # real photos (searched recursively, resized); None or empty: generated
    min_bytes: int = 100_000  # target JPEG size range; the quality is chosen to land inside it
    max_bytes: int = 300_000
    seed: int = 0  # seeds the generated photos and the latency draws


@dataclass(frozen=True)
class CdnStats:
    requests: int  # image requests answered (404s excluded), counted as the answer starts
    bytes: int  # body bytes of those answers


def encode_in_range(image: Image.Image, min_bytes: int, max_bytes: int) -> bytes:
    """The JPEG of ``image`` whose size is nearest the middle of [min_bytes, max_bytes].

    Qualities are tried best first (sizes shrink as quality drops), stopping once one falls below
    ``min_bytes``. A photo too plain to reach ``min_bytes`` even at the best quality stays small.
    """
    middle = (min_bytes + max_bytes) / 2
    best = b""
    for quality in QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        body = buffer.getvalue()
        if not best or abs(len(body) - middle) < abs(len(best) - middle):
            best = body
        if len(body) < min_bytes:
            break
    if len(best) > max_bytes:
        log.warning("JPEG still %d bytes at quality %d (max %d)", len(best), QUALITIES[-1], max_bytes)
    return best


def synthetic_photo(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """Gradients, shapes and sensor-like noise: a JPEG of it compresses about as a real photo does."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / max(width, height)
    base = np.stack([c0 + c1 * ramp for c0, c1 in rng.uniform(30, 200, (3, 2))], axis=-1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 16))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(40, width / 2), rng.uniform(40, height / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + w, y0 + h)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    pixels = np.asarray(image, dtype=np.float32)
    # mild noise only: it is what makes JPEGs of photos large, and too much of it would overshoot 300 kB
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def cover(image: Image.Image, size: tuple[int, int] = SIZE) -> Image.Image:
    """Scale and centre-crop to exactly ``size``, as a CDN's resized rendition would be."""
    image = image.convert("RGB")
    scale = max(size[0] / image.width, size[1] / image.height)
    resized = image.resize(
        (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left, top = (resized.width - size[0]) // 2, (resized.height - size[1]) // 2
    return resized.crop((left, top, left + size[0], top + size[1]))


def build_pool(config: CdnConfig) -> tuple[list[bytes], str]:
    """The JPEG bodies to serve and a one-line description of where they came from."""
    files = sorted(config.image_dir.rglob("*.jpg")) if config.image_dir and config.image_dir.is_dir() else []
    files = files[: config.n_images]
    if files:
        pool = []
        for path in files:
            with Image.open(path) as im:
                pool.append(encode_in_range(cover(im), config.min_bytes, config.max_bytes))
        return pool, f"{len(pool)} real photos from {config.image_dir}, resized to {SIZE[0]}x{SIZE[1]}"
    pool = [
        encode_in_range(synthetic_photo(config.seed * 1000 + i), config.min_bytes, config.max_bytes)
        for i in range(config.n_images)
    ]
    return pool, f"{len(pool)} generated {SIZE[0]}x{SIZE[1]} photos"


class CdnServer:
    """A running server on a free 127.0.0.1 port; close it (or use it as a context manager) when done."""

    def __init__(self, config: CdnConfig, pool: list[bytes] | None = None, source: str = "given") -> None:
        if pool is None:
            pool, source = build_pool(config)
        if not pool:
            raise ValueError("the CDN needs at least one image")
        self.config = config
        self.pool = pool
        self.source = source
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._requests = 0
        self._bytes = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="bench-cdn", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def body_for(self, key: str) -> bytes:
        """The JPEG served for ``<post>/<k>``: stable across calls and processes."""
        return self.pool[zlib.crc32(key.encode("utf-8")) % len(self.pool)]

    def draw_latency_s(self) -> float:
        with self._lock:
            ms = self._rng.gauss(self.config.latency_ms, self.config.jitter_ms)
        return max(0.0, ms) / 1000.0

    def record(self, size: int) -> None:
        with self._lock:
            self._requests += 1
            self._bytes += size

    def stats(self) -> CdnStats:
        with self._lock:
            return CdnStats(self._requests, self._bytes)

    def describe(self) -> dict[str, object]:
        sizes = [len(b) for b in self.pool]
        return {
            "images": self.source,
            "latency_ms": self.config.latency_ms,
            "jitter_ms": self.config.jitter_ms,
            "jpeg_kb": {
                "min": min(sizes) / 1000,
                "mean": sum(sizes) / len(sizes) / 1000,
                "max": max(sizes) / 1000,
            },
        }

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CdnServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive connections must not hold up the benchmark's exit
    owner: CdnServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a CDN speaks
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # one line per image would drown the log
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        head, _, key = urlsplit(self.path).path.lstrip("/").partition("/")
        if head != "img" or not key.endswith(".jpg") or key.count("/") != 1:
            self._send(404, b"not found", "text/plain")
            return
        time.sleep(owner.draw_latency_s())
        body = owner.body_for(key.removesuffix(".jpg"))
        # counted before sending, so that a count read right after the client has its answer includes it
        owner.record(len(body))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the service gave up (budget)
            self._send(200, body, "image/jpeg")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=86400")
        self.end_headers()
        self.wfile.write(body)
