from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from knowledge.handle import IndexHandle


def test_a_sound_index_is_ready_and_searchable(index_dir: Path) -> None:
    handle = IndexHandle(index_dir)
    assert handle.status.state == "loading" and handle.search("Paris") == []
    status = handle.load()
    assert status.ready and status.passages == 6 and status.identity == handle.index.identity  # type: ignore[union-attr]
    assert status.sources["geo"] == {"passages": 2, "licence": "CC BY 4.0", "credit": "GeoNames"}
    assert handle.search("Paris France", 1)[0].passage.id == "geo:2"
    card = status.card()
    assert card["state"] == "ready" and card["identity"] == status.identity and card["error"] is None


def test_disabled_when_no_path() -> None:
    handle = IndexHandle(None)
    assert handle.load().state == "disabled" and handle.search("Paris") == [] and handle.index is None


def test_missing_index_leaves_the_handle_usable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    handle = IndexHandle(tmp_path / "absent")
    with caplog.at_level(logging.WARNING, logger="knowledge.handle"):
        status = handle.load()
    assert status.state == "missing" and "no knowledge index" in (status.error or "")
    assert handle.search("Paris") == []
    assert "answering text-only" in caplog.text


def test_corrupt_index_then_repaired(index_dir: Path) -> None:
    original = (index_dir / "vocab.json").read_bytes()
    (index_dir / "vocab.json").write_bytes(original[:-2] + b"x\n")
    handle = IndexHandle(index_dir)
    assert handle.load().state == "corrupt" and handle.search("Paris") == []
    (index_dir / "vocab.json").write_bytes(original)
    assert handle.load().ready and handle.search("Paris", 1)


def test_load_async_runs_off_the_event_loop(index_dir: Path) -> None:
    handle = IndexHandle(index_dir)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = handle.load

    def spy() -> object:
        seen.append(threading.get_ident())
        return original()

    handle.load = spy  # type: ignore[method-assign]
    status = asyncio.run(handle.load_async())
    assert status.ready and seen and seen[0] != loop_thread
