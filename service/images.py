"""Decoding untrusted image bytes into a bounded RGB ``PIL.Image``.

The order is what makes it safe: the format is sniffed from magic bytes (the server's Content-Type is
never trusted), Pillow is opened with only that plugin allowed, the pixel count is checked from the header
before any pixel is decoded, and only the first frame of an animation is ever loaded (no frame is iterated;
``n_frames``/``is_animated`` are never touched, as they walk the file).

Truncated files fail with reason ``decode``: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a process-wide switch,
and grey-padded half images would be evidence of nothing; the unit falls back to text instead.
"""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image

from model.image_decode import bounded_upright_rgb
from service.fetch_policy import FetchError, FetchPolicy

logger = logging.getLogger(__name__)

# (offset, magic, Pillow format). WEBP also needs "RIFF" at offset 0, checked in sniff_format.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WEBP"),
    (0, b"BM", "BMP"),
)
SNIFF_BYTES = 12  # enough of the body to recognise every format above


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name that ``head`` (the first bytes of a body) starts with, or None."""
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (name != "WEBP" or head.startswith(b"RIFF")):
            return name
    return None


def decode_image(data: bytes, policy: FetchPolicy) -> Image.Image:
    """Decode ``data`` into an RGB image, EXIF-upright, first frame only.

    JPEG is decoded in draft mode (DCT scaling) and large images of any format are reduced by an integer
    factor, both stopping while the shorter side is still at least ``policy.decode_target_px``.
    Raises ``FetchError`` with reason ``not_image``, ``too_many_pixels`` or ``decode``.
    """
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None or fmt not in policy.allowed_formats:
        raise FetchError("not_image", f"magic bytes {data[:8]!r} are not one of {policy.allowed_formats}")
    try:
        # Pillow's own bomb check runs inside open(); turn its warning into an error. catch_warnings is
        # process-global, so under concurrent threads the filter may not hold: the explicit max_pixels check
        # below (stricter than Pillow's default limit) is the guard that does not depend on it.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FetchError("too_many_pixels", str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise FetchError("decode", f"{fmt}: {exc}") from exc
    width, height = image.size
    if width * height > policy.max_pixels:
        raise FetchError("too_many_pixels", f"{width}x{height} is over {policy.max_pixels} pixels")
    try:
        return bounded_upright_rgb(image, policy.decode_target_px)
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise FetchError("decode", f"{fmt} {width}x{height}: {exc}") from exc
