"""Tiny backbones and a synthetic manifest of generated JPEGs, built once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.training.tiny import tiny_bert, tiny_clip, write_manifest


@dataclass(frozen=True)
class Tiny:
    bert: Path
    clip: Path
    manifest: Path
    images: Path
    cache: Path  # SAVER_CACHE_DIR shared by the session's tiny runs
    even: Path  # the same posts' kind, all of one length (the DDP comparison)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("tiny")
    manifest, images = write_manifest(root)
    even, _ = write_manifest(root, seed=1, words=4, name="even")
    return Tiny(tiny_bert(root / "bert"), tiny_clip(root / "clip"), manifest, images, root / "cache", even)
