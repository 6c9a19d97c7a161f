"""Decoding untrusted bytes: format sniffing, bomb refusal, first frame only, and conversion to RGB."""

from __future__ import annotations

import io
import time

import pytest
from PIL import GifImagePlugin, Image

from service.fetch_policy import FetchError, FetchPolicy
from service.images import decode_image, sniff_format
from tests.service.imageserver import SHARED_IMAGES, fixture_bytes, png_header_only

POLICY = FetchPolicy()


def _reason(data: bytes, policy: FetchPolicy = POLICY) -> str:
    with pytest.raises(FetchError) as caught:
        decode_image(data, policy)
    return caught.value.reason


def _close(pixel: object, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("rgb.jpg", "JPEG"),
        ("1x1.png", "PNG"),
        ("many_frames.gif", "GIF"),
        ("image.webp", "WEBP"),
        ("image.bmp", "BMP"),
        ("image.tiff", None),
        ("page.html", None),
    ],
)
def test_sniffing_reads_magic_bytes(name: str, fmt: str | None) -> None:
    assert sniff_format(fixture_bytes(name)[:12]) == fmt


@pytest.mark.parametrize("name", ["rgb.jpg", "1x1.png", "many_frames.gif", "image.webp", "image.bmp"])
def test_every_allowed_format_decodes_to_rgb(name: str) -> None:
    image = decode_image(fixture_bytes(name), POLICY)
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"<!doctype html><html>", b"GIF90a" + bytes(20)])
def test_non_images_are_refused(data: bytes) -> None:
    assert _reason(data) == "not_image"


def test_formats_outside_the_allow_list_are_refused() -> None:
    assert _reason(fixture_bytes("image.tiff")) == "not_image"
    assert _reason(fixture_bytes("rgb.jpg"), FetchPolicy(allowed_formats=("PNG",))) == "not_image"


def test_a_magic_prefix_does_not_make_garbage_an_image() -> None:
    assert _reason(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10) == "decode"


def test_truncated_jpeg_fails_clearly() -> None:
    assert _reason(fixture_bytes("truncated.jpg")) == "decode"


def test_huge_png_header_is_refused_before_decoding() -> None:
    started = time.monotonic()
    assert _reason(fixture_bytes("huge_header.png")) == "too_many_pixels"
    assert time.monotonic() - started < 1.0  # nothing of 10^10 pixels was allocated


def test_the_pixel_cap_is_the_policy_s_not_only_pillow_s() -> None:
    # 8000×6000 = 48M pixels: under Pillow's own bomb limit, over the default policy's 40M.
    assert _reason(png_header_only(8000, 6000)) == "too_many_pixels"
    assert _reason(fixture_bytes("rgb.jpg"), FetchPolicy(max_pixels=100)) == "too_many_pixels"


def test_animated_gif_uses_the_first_frame_without_iterating(monkeypatch: pytest.MonkeyPatch) -> None:
    frames_read: list[int] = []
    original = GifImagePlugin.GifImageFile._seek

    def recording_seek(
        self: GifImagePlugin.GifImageFile, frame: int, *args: object, **kwargs: object
    ) -> None:
        frames_read.append(frame)
        original(self, frame, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek", recording_seek)
    image = decode_image(fixture_bytes("many_frames.gif"), POLICY)
    assert image.getpixel((0, 0)) == (255, 0, 0)  # frame 0 is red, the 2999 others blue
    assert set(frames_read) == {0}  # not one of the 2999 other frames was parsed


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = decode_image(fixture_bytes("cmyk.jpg"), POLICY)
    assert image.mode == "RGB"
    assert _close(image.getpixel((16, 16)), (255, 0, 0))


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    image = decode_image(fixture_bytes("gray16.png"), POLICY)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (128, 128, 128)
    assert image.getpixel((31, 0)) == (255, 255, 255)


def test_palette_images_become_rgb_and_transparency_becomes_white() -> None:
    opaque = decode_image(fixture_bytes("palette.png"), POLICY)
    assert opaque.getpixel((0, 0)) == (0, 0, 255) and opaque.getpixel((15, 0)) == (255, 0, 0)
    transparent = decode_image(fixture_bytes("palette_alpha.png"), POLICY)
    assert transparent.getpixel((0, 0)) == (255, 255, 255) and transparent.getpixel((15, 0)) == (255, 0, 0)


def test_alpha_is_composited_on_white() -> None:
    image = decode_image(fixture_bytes("rgba.png"), POLICY)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((15, 0)) == (255, 0, 0)


def test_one_pixel_image() -> None:
    image = decode_image(fixture_bytes("1x1.png"), POLICY)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (10, 200, 30)


def test_exif_orientation_is_applied() -> None:
    image = decode_image(fixture_bytes("exif_rotated.jpg"), POLICY)
    assert image.size == (32, 64)  # stored 64×32, orientation 6 turns it upright
    assert _close(image.getpixel((16, 8)), (255, 0, 0))  # the stored left (red) half is now on top
    assert _close(image.getpixel((16, 56)), (0, 0, 255))


def _jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 120, 220)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(4000, 3000), (1000, 900), (300, 200), (448, 2000)])
def test_large_images_are_reduced_but_never_below_the_target(size: tuple[int, int]) -> None:
    target = POLICY.decode_target_px
    image = decode_image(_jpeg(size), POLICY)
    assert min(image.size) >= min(target, *size)
    assert min(image.size) < 2 * target or min(size) < 2 * target
    ratio = size[0] / size[1]
    assert abs(image.width / image.height - ratio) < 0.05 * ratio


def test_png_is_reduced_like_jpeg() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 2000), (1, 2, 3)).save(buffer, "PNG")
    image = decode_image(buffer.getvalue(), POLICY)
    assert 448 <= min(image.size) < 896


@pytest.mark.data
def test_real_photos_decode() -> None:
    photos = sorted(SHARED_IMAGES.glob("*/*.jpg"))[:5] if SHARED_IMAGES.is_dir() else []
    if not photos:
        pytest.skip(f"no photos under {SHARED_IMAGES} (../shared/data is absent)")
    for photo in photos:
        image = decode_image(photo.read_bytes(), POLICY)
        assert image.mode == "RGB" and min(image.size) >= 1
