"""Image preprocessing in PIL and numpy: what every vision backbone's ``preprocess`` does, and what the
torch-free ONNX worker runs before the exported tier graphs (model/vision/preprocess.py wraps it for torch).

Web images arrive in every PIL mode (palette GIFs, RGBA logos, 16-bit PNGs, CMYK JPEGs, 1x1 tracking
pixels), so everything is first brought to 8-bit RGB, then resized and normalised per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels become white: logos and stickers on the web are drawn for a white page.
_MATTE = (255, 255, 255)
# PIL modes holding more than 8 bits per pixel; `convert("RGB")` clips them instead of rescaling.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class ImageTransform:
    mean: tuple[float, float, float]  # per-channel mean, on the [0, 1] scale
    std: tuple[float, float, float]  # per-channel standard deviation, on the [0, 1] scale
    crop_fraction: float | None = 0.875  # side of the centre crop / shorter side; None = squash to a square
    resample: int = Image.Resampling.BICUBIC  # PIL resampling filter


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of any PIL image, EXIF rotation applied, transparency over a white matte."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in _WIDE_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        top = float(pixels.max()) if pixels.size else 0.0
        scaled = pixels * (255.0 / top) if top > 0 else pixels
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        matte = Image.new("RGBA", rgba.size, (*_MATTE, 255))
        return Image.alpha_composite(matte, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def image_to_array(image: Image.Image, size: int, transform: ImageTransform) -> np.ndarray:
    """One image as a normalised (3, size, size) float32 array."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    rgb = to_rgb(image)
    width, height = rgb.size
    if transform.crop_fraction is None:
        box = (0.0, 0.0, float(width), float(height))
    else:
        # Crop in source coordinates and resize the crop in one step: resizing first would blow a
        # 1x5000 banner up to thousands of pixels only to throw most of them away.
        side = transform.crop_fraction * min(width, height)
        left, top = (width - side) / 2.0, (height - side) / 2.0
        box = (left, top, left + side, top + side)
    resized = rgb.resize((size, size), resample=transform.resample, box=box, reducing_gap=3.0)
    pixels = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.asarray(transform.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(transform.std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std)


def images_to_array(images: Sequence[Image.Image], size: int, transform: ImageTransform) -> np.ndarray:
    """A (N, 3, size, size) float32 batch; N = 0 gives an empty batch of the right shape."""
    if not images:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return np.stack([image_to_array(image, size, transform) for image in images])


def transform_record(transform: ImageTransform) -> dict[str, Any]:
    """The transform as JSON (the exported graph directory's manifest records it)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(transform).items()}


def transform_from_record(record: dict[str, Any]) -> ImageTransform:
    crop = record.get("crop_fraction")
    return ImageTransform(
        mean=tuple(float(x) for x in record["mean"]),  # type: ignore[arg-type]
        std=tuple(float(x) for x in record["std"]),  # type: ignore[arg-type]
        crop_fraction=None if crop is None else float(crop),
        resample=int(record["resample"]),
    )
