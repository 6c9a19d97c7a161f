"""Fixtures of the hardening suite: one fault-injecting image server per module, hit counters reset per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.imageserver import ImageServer, start_image_server


@pytest.fixture(scope="module")
def module_images() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


@pytest.fixture
def images(module_images: ImageServer) -> ImageServer:
    module_images.reset_hits()
    return module_images
