"""Shared fixtures for the model tests: one frozen text encoder, a tiny fake vision backbone, offline runs."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import SaverConfig
from model.head import EnergyHead
from model.text_encoder import TextEncoder
from model.vision.backbone import VisionBackbone
from model.vision.preprocess import ImageTransform, images_to_batch

REPO = Path(__file__).resolve().parents[2]

# Executed first in an offline child process: any attempt to open a connection fails loudly.
NO_NETWORK_PRELUDE = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def _network_namespace_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_offline(
    code: str, *args: str, tmp_home: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python with sockets refused, the HF hub offline and an empty HF cache
    (so a model can only come from its package path); inside a network namespace where the kernel allows."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_home))
    command = [sys.executable, "-c", textwrap.dedent(NO_NETWORK_PRELUDE) + textwrap.dedent(code), *args]
    if _network_namespace_works():
        command = ["unshare", "--net", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(name="run_offline")
def run_offline_fixture() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_offline


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """These tests push tiny tensors; on a small shared CI box, intra-op threads only add spin-waiting
    (measured 10-50x slower steps under load with 2 threads than with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    """The real MiniLM encoder, loaded once; models built on it share it (tests must not train it)."""
    torch.manual_seed(0)
    return TextEncoder(SaverConfig()).eval()


@pytest.fixture
def fresh_encoder(encoder: TextEncoder) -> TextEncoder:
    """A private copy for tests that train or load weights into the encoder's adapters."""
    return copy.deepcopy(encoder)


class FakeBackbone(VisionBackbone):
    """A tiny deterministic backbone with the real interface: mean colour per cell through a fixed
    random projection, a 2x2 region grid and three tags. It counts its calls."""

    name = "fake"
    dim = 1280
    screen_size = 32
    detail_size = 64
    num_regions = 4

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1234)
        self.proj = torch.nn.Parameter(torch.randn(3, self.dim, generator=generator))
        self.classifier = torch.nn.Parameter(torch.randn(self.dim, 3, generator=generator) / 40)
        self.freeze()
        self.calls = {"screen": 0, "detail": 0}

    # plain [0, 1] RGB, squashed to a square: preprocessing the ONNX export can record
    transform = ImageTransform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_fraction=None)

    def preprocess(self, images: Sequence[Image.Image], size: int) -> torch.Tensor:
        return images_to_batch(images, size, self.transform)

    def screen_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        vectors = pixels.mean(dim=(2, 3)) @ self.proj
        return vectors, vectors @ self.classifier

    def detail_tensor(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cells = torch.nn.functional.adaptive_avg_pool2d(pixels, 2).flatten(2).transpose(1, 2)  # (k, 4, 3)
        regions = cells @ self.proj
        vectors = regions.mean(dim=1)
        return vectors, regions, vectors @ self.classifier

    def weight_files(self) -> list[Path]:
        return []

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": "fixed-seed-1234"}  # no weight files to hash

    @property
    def tag_vocabulary(self) -> list[str]:
        return ["dog", "stadium", "guitar"]

    def screen(self, images: Sequence[Image.Image]):  # type: ignore[no-untyped-def]
        self.calls["screen"] += 1
        return super().screen(images)

    def detail(self, images: Sequence[Image.Image]):  # type: ignore[no-untyped-def]
        self.calls["detail"] += 1
        return super().detail(images)


@pytest.fixture
def fake_backbone() -> FakeBackbone:
    return FakeBackbone()


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Distinct small photos-to-be (random colour blocks)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def images() -> Callable[[int], list[Image.Image]]:
    return make_images


def wake_vision_head(head: EnergyHead, seed: int = 0) -> None:
    """The vision output layer is zero-initialised on purpose; give it weights so vision visibly matters."""
    generator = torch.Generator().manual_seed(seed)
    last = head.vision[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator))
        last.bias.copy_(torch.randn(last.bias.shape, generator=generator))


@pytest.fixture(scope="session")
def wake() -> Callable[[EnergyHead], None]:
    return wake_vision_head
