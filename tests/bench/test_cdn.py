"""The CDN stand-in: real-size JPEGs, stable per post image, behind the configured time to first byte."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.cdn import SIZE, CdnConfig, CdnServer, build_pool, cover, encode_in_range, synthetic_photo


@pytest.fixture(scope="module")
def pool() -> list[bytes]:
    return build_pool(CdnConfig(n_images=2, image_dir=None))[0]


@pytest.fixture
def cdn(pool: list[bytes]) -> Iterator[CdnServer]:
    with CdnServer(CdnConfig(latency_ms=60.0, jitter_ms=0.0), pool) as server:
        yield server


def test_generated_photos_are_real_size_jpegs_in_the_size_range(pool: list[bytes]) -> None:
    assert len(pool) == 2 and pool[0] != pool[1]
    for body in pool:
        assert 100_000 <= len(body) <= 300_000
        with Image.open(io.BytesIO(body)) as im:
            assert (im.format, im.size) == ("JPEG", SIZE)


def test_real_photos_are_resized_to_the_cdn_size(tmp_path: Path) -> None:
    Image.new("RGB", (400, 500), (10, 120, 200)).save(tmp_path / "tall.jpg")
    (tmp_path / "sub").mkdir()
    synthetic_photo(1, (300, 200)).save(tmp_path / "sub" / "wide.jpg")
    bodies, source = build_pool(CdnConfig(n_images=5, image_dir=tmp_path))
    assert len(bodies) == 2 and "real photos" in source
    for body in bodies:
        assert Image.open(io.BytesIO(body)).size == SIZE


def test_quality_is_lowered_until_the_jpeg_fits() -> None:
    photo = synthetic_photo(7)
    small = encode_in_range(photo, 20_000, 60_000)
    assert len(small) <= 60_000
    assert len(encode_in_range(photo, 100_000, 300_000)) > len(small)
    assert cover(Image.new("RGB", (10, 30))).size == SIZE


def test_serves_the_same_jpeg_for_a_post_image_and_counts_it(cdn: CdnServer) -> None:
    with httpx.Client(base_url=cdn.base_url) as client:
        first = client.get("/img/post1/0.jpg?v=text-0")
        again = client.get("/img/post1/0.jpg?v=saver-3")  # the tag changes the URL, not the bytes
        assert first.status_code == again.status_code == 200
        assert first.headers["content-type"] == "image/jpeg"
        assert first.content == again.content == cdn.body_for("post1/0")
        assert client.get("/img/nope.png").status_code == 404
        assert client.get("/other/post1/0.jpg").status_code == 404
    stats = cdn.stats()
    assert stats.requests == 2  # 404s are not images served
    assert stats.bytes == 2 * len(first.content)


def test_answers_after_the_configured_latency(cdn: CdnServer) -> None:
    with httpx.Client(base_url=cdn.base_url) as client:
        client.get("/img/warm/0.jpg")
        started = time.perf_counter()
        client.get("/img/p/1.jpg")
        assert time.perf_counter() - started >= 0.058


def test_latency_draws_follow_the_configured_mean_and_jitter(pool: list[bytes]) -> None:
    with CdnServer(CdnConfig(latency_ms=80, jitter_ms=20, seed=1), pool) as server:
        draws = [server.draw_latency_s() * 1000 for _ in range(4000)]
    assert statistics.fmean(draws) == pytest.approx(80, abs=1.5)
    assert statistics.stdev(draws) == pytest.approx(20, abs=1.5)
    with CdnServer(CdnConfig(latency_ms=5, jitter_ms=50), pool) as server:
        assert min(server.draw_latency_s() for _ in range(1000)) == 0.0  # clipped, never negative
