"""A local HTTP image server for tests and benchmarks: real images plus every fault an image host can show.

Usage::

    from tests.service.imageserver import start_image_server

    with start_image_server() as server:
        url = server.url("/gen/rgb.jpg")
        ...
        assert server.total_hits == 0   # e.g. to prove a refused URL opened no connection

As a pytest fixture (one server per module; call ``reset_hits()`` where a test counts)::

    @pytest.fixture(scope="module")
    def image_server() -> Iterator[ImageServer]:
        with start_image_server() as server:
            yield server

It listens on 127.0.0.1 only, in a daemon thread, speaking HTTP/1.0 (one request per connection, so every
request is a fresh connection and a fresh name resolution). Hits are counted per path, query excluded.

Routes (any route also takes ``?delay=SECONDS`` before answering and ``?content_type=TYPE`` to lie):

- ``/img/<name>``: real JPEGs from ``../shared/data/images`` when present, generated photos otherwise;
  ``server.image_paths`` lists them.
- ``/gen/<name>``: generated fixtures, see ``fixture_names()``: rgb.jpg, cmyk.jpg, gray16.png, palette.png,
  palette_alpha.png, rgba.png, 1x1.png, exif_rotated.jpg (stored 64x32, orientation 6: left half red),
  many_frames.gif (3000 frames, the first red, the rest blue), huge_header.png (a 100000x100000 IHDR),
  truncated.jpg, image.bmp, image.webp, image.tiff, page.html (served as image/jpeg).
- ``/status/<code>``; ``/redirect?to=URL[&code=302]``; ``/loop`` (redirects to itself);
  ``/drip?interval=1.0&size=100`` (one byte per interval); ``/endless`` (a JPEG start, then zeros
  forever); ``/big?declared=N`` (announces N bytes); ``/reset`` (RST before any response);
  ``/reset_mid`` (RST in the middle of the body).
"""

from __future__ import annotations

import contextlib
import functools
import io
import socket
import ssl
import struct
import subprocess
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
from PIL import Image

SHARED_IMAGES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "images"
RED, BLUE = (255, 0, 0), (0, 0, 255)


class ImageServer:
    """A running server; close it (or use it as a context manager) when done."""

    def __init__(self, image_dir: Path | None = None, tls: ssl.SSLContext | None = None) -> None:
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self.stop = threading.Event()
        self.images = _load_images(image_dir if image_dir is not None else SHARED_IMAGES)
        self.uses_real_images = any(name.startswith("real_") for name in self.images)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self.scheme = "https" if tls is not None else "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="imageserver", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """Absolute URL of ``path``; ``host`` may be a name that a test resolver maps to 127.0.0.1."""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def redirect_url(self, to: str, code: int = 302, host: str = "127.0.0.1") -> str:
        """URL of a redirect (status ``code``) to the absolute or relative URL ``to``."""
        return self.url(f"/redirect?{urlencode({'to': to, 'code': code})}", host)

    @property
    def image_paths(self) -> list[str]:
        """Routes of the photo JPEGs (real ones when the shared data is present)."""
        return [f"/img/{name}" for name in sorted(self.images)]

    @property
    def hits(self) -> Counter[str]:
        """A snapshot of requests received per path."""
        with self._lock:
            return Counter(self._hits)

    @property
    def total_hits(self) -> int:
        with self._lock:
            return sum(self._hits.values())

    def reset_hits(self) -> None:
        with self._lock:
            self._hits.clear()

    def record_hit(self, path: str) -> None:
        with self._lock:
            self._hits[path] += 1

    def close(self) -> None:
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ImageServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_image_server(image_dir: Path | None = None, tls: ssl.SSLContext | None = None) -> ImageServer:
    """Start a server on a free 127.0.0.1 port (``image_dir`` defaults to ../shared/data/images).

    With ``tls`` (a server-side context, e.g. from ``self_signed_tls``) it speaks HTTPS.
    """
    return ImageServer(image_dir, tls)


def self_signed_tls(hostname: str, directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for ``hostname`` and the CA file a client must trust.

    Needs the ``openssl`` command; callers should skip when it is missing (``shutil.which("openssl")``).
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={hostname}",
         "-addext", f"subjectAltName=DNS:{hostname}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ImageServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        owner.record_hit(path)
        if "delay" in query and owner.stop.wait(float(query["delay"])):
            return
        lie = query.get("content_type")
        # The client gives up early on drips and endless bodies, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(owner, path, query, lie)

    def _route(self, owner: ImageServer, path: str, query: dict[str, str], lie: str | None) -> None:
        head, _, rest = path.lstrip("/").partition("/")
        if head == "img" and rest in owner.images:
            self._send(200, owner.images[rest], lie or "image/jpeg")
        elif head == "gen" and rest in fixture_names():
            body, content_type = _fixture(rest)
            self._send(200, body, lie or content_type)
        elif head == "status" and rest.isdigit():
            self._send(int(rest), b"status page", lie or "text/plain")
        elif head == "redirect":
            self._redirect(query.get("to", "/"), int(query.get("code", "302")))
        elif head == "loop":
            self._redirect("/loop", 302)
        elif head == "drip":
            self._drip(owner, float(query.get("interval", "1.0")), int(query.get("size", "100")))
        elif head == "endless":
            self._endless(owner)
        elif head == "big":
            self._headers(200, "image/jpeg", int(query.get("declared", str(1 << 30))))
            self.wfile.write(b"\xff\xd8\xff\xe0")
        elif head == "reset":
            self._reset()
        elif head == "reset_mid":
            self._headers(200, "image/jpeg", 100_000)
            self.wfile.write(fixture_bytes("rgb.jpg")[:200])
            self.wfile.flush()
            self._reset()
        else:
            self._send(404, b"not found", "text/plain")

    def _headers(self, status: int, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._headers(status, content_type, len(body))
        self.wfile.write(body)

    def _redirect(self, location: str, code: int) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drip(self, owner: ImageServer, interval: float, size: int) -> None:
        body = (fixture_bytes("rgb.jpg") * (size // 100 + 1))[:size]
        self._headers(200, "image/jpeg", size)
        for byte in body:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            if owner.stop.wait(interval):
                return

    def _endless(self, owner: ImageServer) -> None:
        self._headers(200, "image/jpeg", None)  # HTTP/1.0 without length: the body ends at close
        self.wfile.write(b"\xff\xd8\xff\xe0" + bytes(60))
        chunk = bytes(64 * 1024)
        while not owner.stop.is_set():
            self.wfile.write(chunk)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


def _load_images(image_dir: Path) -> dict[str, bytes]:
    real = sorted(image_dir.glob("*/*.jpg"))[:8] if image_dir.is_dir() else []
    if real:
        return {f"real_{path.stem}.jpg": path.read_bytes() for path in real}
    return {f"photo{i}.jpg": _noise_jpeg(seed=i, size=(320 + 40 * i, 240)) for i in range(4)}


def fixture_names() -> list[str]:
    return sorted(_FIXTURES)


def fixture_bytes(name: str) -> bytes:
    """The body served at ``/gen/<name>``, for tests that decode without a server."""
    return _fixture(name)[0]


@functools.cache
def _fixture(name: str) -> tuple[bytes, str]:
    """Each fixture is made on first use (the many-frame GIF takes a second or two), then kept."""
    make, content_type = _FIXTURES[name]
    return make(), content_type


def _truncated_jpeg() -> bytes:
    jpeg = _noise_jpeg(seed=3, size=(256, 256))
    return jpeg[: len(jpeg) // 2]


_FIXTURES: dict[str, tuple[Callable[[], bytes], str]] = {
    "rgb.jpg": (lambda: _noise_jpeg(seed=7, size=(96, 64)), "image/jpeg"),
    "cmyk.jpg": (lambda: _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), "image/jpeg"),
    "gray16.png": (lambda: _save(_gray16(), "PNG"), "image/png"),
    "palette.png": (lambda: _save(_palette(transparent=False), "PNG"), "image/png"),
    "palette_alpha.png": (lambda: _save(_palette(transparent=True), "PNG", transparency=0), "image/png"),
    "rgba.png": (lambda: _save(_half_transparent(), "PNG"), "image/png"),
    "1x1.png": (lambda: _save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), "image/png"),
    "exif_rotated.jpg": (lambda: _exif_rotated(), "image/jpeg"),
    "many_frames.gif": (lambda: _many_frames(3000), "image/gif"),
    "huge_header.png": (lambda: png_header_only(100_000, 100_000), "image/png"),
    "truncated.jpg": (_truncated_jpeg, "image/jpeg"),
    "image.bmp": (lambda: _save(Image.new("RGB", (16, 8), BLUE), "BMP"), "image/bmp"),
    "image.webp": (lambda: _save(Image.new("RGB", (16, 8), BLUE), "WEBP"), "image/webp"),
    "image.tiff": (lambda: _save(Image.new("RGB", (16, 8), BLUE), "TIFF"), "image/tiff"),
    "page.html": (lambda: b"<!doctype html><html><body>not an image</body></html>", "image/jpeg"),
}


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels, "RGB"), "JPEG", quality=90)


def _gray16() -> Image.Image:
    # Left half 0x8000 (mid grey once scaled to 8 bits), right half 0xFFFF.
    values = np.full((16, 32), 0x8000, dtype=np.uint16)
    values[:, 16:] = 0xFFFF
    return Image.fromarray(values)


def _palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, *RED, *BLUE] + [0] * (256 - 3) * 3)
    for x in range(8):
        for y in range(16):
            image.putpixel((x, y), 0 if transparent else 2)
    return image


def _half_transparent() -> Image.Image:
    image = Image.new("RGBA", (16, 16), (*RED, 255))
    image.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half: fully transparent black
    return image


def _exif_rotated() -> bytes:
    image = Image.new("RGB", (64, 32), BLUE)
    image.paste(RED, (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return _save(image, "JPEG", exif=exif.tobytes(), quality=95)


def _many_frames(count: int) -> bytes:
    # Frame 0 is all red; every later frame is blue with one green pixel that moves, so that no two
    # consecutive frames are equal (Pillow would merge them) and the file really holds ``count`` frames.
    palette = [*RED, *BLUE, 0, 255, 0] + [0] * 253 * 3
    frames = [Image.new("P", (16, 16), 0)]
    for index in range(1, count):
        frame = Image.new("P", (16, 16), 1)
        frame.putpixel((index % 16, (index // 16) % 16), 2)
        frames.append(frame)
    for frame in frames:
        frame.putpalette(palette)
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` RGB with a tiny IDAT: the head of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
