"""``IndexHandle``: how a long-running process (the service) holds an index it may not have.

Knowledge is an optional extra to a post's text answer, so a missing or damaged index must never take the
process down: loading catches this package's typed errors, logs them once, and leaves the handle in a
state that says why; `search` then answers [] and the caller answers text-only. `load_async` does the
file hashing and mapping in a worker thread, off the event loop. The status is what `/v1/models` shows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from knowledge.errors import IndexCorruptError, IndexMissingError
from knowledge.index import Hit, KnowledgeIndex

log = logging.getLogger(__name__)

State = Literal["disabled", "loading", "ready", "missing", "corrupt"]


@dataclass(frozen=True)
class IndexStatus:
    state: State
    path: str | None = None
    identity: str | None = None
    passages: int | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> passages, licence, credit
    error: str | None = None  # why the index is not in use (missing/corrupt)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def card(self) -> dict[str, Any]:
        """The JSON object `/v1/models` shows under "knowledge"."""
        return {
            "state": self.state,
            "path": self.path,
            "identity": self.identity,
            "passages": self.passages,
            "sources": self.sources,
            "error": self.error,
        }


class IndexHandle:
    """Holds at most one loaded index. `path=None` means knowledge is switched off."""

    def __init__(self, path: str | Path | None, verify: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.verify = verify
        self._index: KnowledgeIndex | None = None
        self._status = (
            IndexStatus("disabled") if self.path is None else IndexStatus("loading", str(self.path))
        )
        self._lock = threading.Lock()  # load and close may race with each other, not with search

    @property
    def status(self) -> IndexStatus:
        return self._status

    @property
    def index(self) -> KnowledgeIndex | None:
        return self._index

    def load(self) -> IndexStatus:
        """Load (or reload) the index; never raises for a missing or corrupt one."""
        if self.path is None:
            return self._status
        with self._lock:
            try:
                index = KnowledgeIndex.load(self.path, verify=self.verify)
            except IndexMissingError as exc:
                self._set_failed("missing", exc)
            except IndexCorruptError as exc:
                self._set_failed("corrupt", exc)
            else:
                m = index.manifest
                self._index = index
                self._status = IndexStatus(
                    "ready",
                    str(self.path),
                    m.identity,
                    m.passages,
                    {
                        name: {"passages": s.passages, "licence": s.licence, "credit": s.credit}
                        for name, s in sorted(m.sources.items())
                    },
                )
        return self._status

    async def load_async(self) -> IndexStatus:
        return await asyncio.to_thread(self.load)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Hits, or [] when no index is in use (the caller answers text-only and reports the status)."""
        index = self._index
        return index.search(query, k) if index is not None else []

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None

    def _set_failed(self, state: State, exc: Exception) -> None:
        self._index = None
        self._status = IndexStatus(state, str(self.path), error=str(exc))
        log.warning("knowledge index not in use (%s); answering text-only: %s", state, exc)
