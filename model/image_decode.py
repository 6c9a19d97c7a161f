"""From an opened image file to the RGB pixels the vision backbones see, shared by serving and training."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

DECODE_TARGET_PX = 448  # about 2x the vision input: JPEG draft mode and reduction stop here
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def bounded_upright_rgb(image: Image.Image, target: int = DECODE_TARGET_PX) -> Image.Image:
    """An opened (not yet loaded) image -> RGB, EXIF-upright, first frame only, JPEG decoded in draft mode
    and reduced by an integer factor while the shorter side stays >= ``target``. The service decodes
    fetched bytes with it and training reads image files with it, so both feed the backbone the same
    pixels."""
    if image.format == "JPEG":
        # Draft keeps both sides >= the requested size, so the shorter side stays >= target.
        image.draft("RGB", (target, target))
    image.load()  # the first frame only; an animation's other frames are never read
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as exc:
        # A malformed EXIF block should not cost the image; it is merely left as stored.
        logger.debug("ignoring unusable EXIF orientation: %s", exc)
    rgb = _rgb(image)
    factor = min(rgb.size) // target
    if factor >= 2:
        rgb = rgb.reduce(factor)
    return rgb


def _rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I"):
        # 16-bit greyscale: convert("RGB") would clip everything above 255 to white; keep the top byte.
        pixels = np.asarray(image, dtype=np.float64)
        grey = np.clip(pixels / 256.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        # Transparent pixels would otherwise show whatever colour they carry (often black): use white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, F
