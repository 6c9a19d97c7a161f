"""Hostile or odd image hosts and bodies through the HTTP API (loopback allowed: the local fault server).

A faulty image makes its units answer text-only with the reason; an odd but valid image (CMYK, 16-bit,
palette, alpha, 1×1, EXIF-rotated, thousands of GIF frames) reaches the model as a bounded RGB picture.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.pipeline import ScreenedImage
from service.fake import FakePipeline
from tests.hardening.helpers import GROUNDABLE
from tests.service.apphelpers import app_settings, running_app
from tests.service.imageserver import ImageServer, fixture_bytes


class RecordingPipeline(FakePipeline):
    """The fake model, keeping what each screened image looked like on arrival."""

    def __init__(self) -> None:
        super().__init__("mner")
        self.arrived: list[tuple[str, tuple[int, int], tuple[int, int, int]]] = []  # mode, size, top-left

    def screen(self, images: list[Image.Image]) -> list[ScreenedImage]:
        for image in images:
            self.arrived.append((image.mode, image.size, tuple(image.getpixel((0, 0)))))  # type: ignore[arg-type]
        return super().screen(images)


async def _post(path_or_url: str, images: ImageServer, **options: Any) -> tuple[dict[str, Any], float]:
    url = path_or_url if "://" in path_or_url else images.url(path_or_url)
    started = time.monotonic()
    async with running_app(app_settings(warmup=False)) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [url], "options": options})
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - started


FAULTS = {
    # id: (path, expected fallback reason, options)
    "drip-one-byte-per-second": (
        "/drip?interval=1.0&size=5000",
        "budget_exceeded",
        {"vision_budget_ms": 1500},
    ),
    "headers-later-than-budget": ("/gen/rgb.jpg?delay=3", "budget_exceeded", {"vision_budget_ms": 500}),
    "endless-body": ("/endless", "fetch_failed:too_large", {"vision_budget_ms": 5000}),
    "declared-1-gb": ("/big?declared=1000000000", "fetch_failed:too_large", {}),
    "reset-before-response": ("/reset", "fetch_failed:network", {}),
    "reset-mid-body": ("/reset_mid", "fetch_failed:network", {}),
    "html-served-as-image-jpeg": ("/gen/page.html", "fetch_failed:not_image", {}),
    "html-claiming-image-png": ("/gen/page.html?content_type=image/png", "fetch_failed:not_image", {}),
    "tiff-not-an-allowed-format": ("/gen/image.tiff", "fetch_failed:not_image", {}),
    "truncated-jpeg": ("/gen/truncated.jpg", "fetch_failed:decode", {}),
    "png-header-100000x100000": ("/gen/huge_header.png", "fetch_failed:too_many_pixels", {}),
    "status-404": ("/status/404", "fetch_failed:http_status", {}),
    "status-500": ("/status/500", "fetch_failed:http_status", {}),
    "redirect-without-location": ("/status/302", "fetch_failed:redirects", {}),
}


@pytest.mark.parametrize(("path", "reason", "options"), list(FAULTS.values()), ids=list(FAULTS))
async def test_faulty_image_falls_back_to_text_with_its_reason(
    images: ImageServer, path: str, reason: str, options: dict[str, Any]
) -> None:
    body, seconds = await _post(path, images, **options)
    vision = body["vision"]
    assert vision["units_activated"] > 0
    assert vision["fallback"] == reason
    assert vision["image_errors"] == [{"index": 0, "reason": reason}]
    assert vision["images_fetched"] == 0 and vision["images_selected"] == 0
    assert all(not e["vision"]["activated"] for e in body["entities"])
    budget_s = options.get("vision_budget_ms", 1500) / 1000
    assert seconds < budget_s + 2.0  # no hung request: the budget (plus slack for a busy CPU) bounds it


# id: (fixture path, size as the model sees it, top-left pixel as the model sees it or None)
ODD_BUT_VALID = {
    "content-type-lies-text-html": ("/gen/rgb.jpg?content_type=text/html", (96, 64), None),
    "cmyk-jpeg": ("/gen/cmyk.jpg", (32, 32), None),
    "gray-16-bit-png": ("/gen/gray16.png", (32, 16), (128, 128, 128)),
    "palette-png": ("/gen/palette.png", (16, 16), (0, 0, 255)),
    "palette-png-with-transparency": ("/gen/palette_alpha.png", (16, 16), (255, 255, 255)),
    "rgba-png-transparent-half": ("/gen/rgba.png", (16, 16), (255, 255, 255)),
    "one-by-one-png": ("/gen/1x1.png", (1, 1), (10, 200, 30)),
    "exif-rotated-jpeg": ("/gen/exif_rotated.jpg", (32, 64), None),
    "gif-3000-frames": ("/gen/many_frames.gif", (16, 16), (255, 0, 0)),
    "bmp": ("/gen/image.bmp", (16, 8), (0, 0, 255)),
    "webp": ("/gen/image.webp", (16, 8), None),
}


@pytest.mark.parametrize(("path", "size", "corner"), list(ODD_BUT_VALID.values()), ids=list(ODD_BUT_VALID))
async def test_odd_but_valid_images_reach_the_model_as_rgb(
    images: ImageServer, path: str, size: tuple[int, int], corner: tuple[int, int, int] | None
) -> None:
    pipe = RecordingPipeline()
    # Build the served body first: the test server makes fixtures lazily (the 3000-frame GIF takes seconds on a
    # busy machine), and that preparation must not eat the request's vision budget.
    fixture_bytes(path.removeprefix("/gen/").split("?")[0])
    started = time.monotonic()
    async with running_app(app_settings(warmup=False), {"mner": pipe}) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [images.url(path)]})
    assert r.status_code == 200
    vision = r.json()["vision"]
    assert vision["fallback"] is None and vision["image_errors"] == []
    assert vision["images_fetched"] == 1
    ((mode, seen_size, seen_corner),) = pipe.arrived
    assert mode == "RGB" and seen_size == size
    if corner is not None:
        assert np.allclose(seen_corner, corner, atol=3), seen_corner
    assert time.monotonic() - started < 5.0  # e.g. the 3000-frame GIF is not walked frame by frame


async def test_exif_rotation_is_applied(images: ImageServer) -> None:
    # Stored 64×32 with the left half red, orientation 6 (rotate 90° clockwise): upright, red is on top.
    pipe = RecordingPipeline()
    async with running_app(app_settings(warmup=False), {"mner": pipe}) as (client, _):
        await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [images.url("/gen/exif_rotated.jpg")]}
        )
    ((_, size, corner),) = pipe.arrived
    assert size == (32, 64)
    assert corner[0] > 200 and corner[2] < 60  # red at the top-left once upright


async def test_one_bad_image_does_not_cost_the_good_ones(images: ImageServer) -> None:
    urls = [images.url(p) for p in ("/gen/truncated.jpg", "/gen/rgb.jpg", "/reset", "/gen/huge_header.png")]
    async with running_app(app_settings(warmup=False)) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": urls})
    vision = r.json()["vision"]
    assert r.status_code == 200
    assert vision["fallback"] is None  # the unit got the good image
    assert vision["images_fetched"] == 1
    assert vision["image_errors"] == [
        {"index": 0, "reason": "fetch_failed:decode"},
        {"index": 2, "reason": "fetch_failed:network"},
        {"index": 3, "reason": "fetch_failed:too_many_pixels"},
    ]
    assert r.json()["entities"][0]["vision"]["images"] == [1]
