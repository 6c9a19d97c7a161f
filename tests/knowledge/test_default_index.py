"""Finding and building the default index, on a tiny stand-in source so the test builds in milliseconds
(the real corpus's readers are tested in test_default_corpus.py, and `make index` builds it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from knowledge import KnowledgeIndex
from knowledge.corpus import Passage
from knowledge.default_index import default_index_dir, ensure_default_index, find_default_index
from knowledge.sources import PackageSource


def _read(files: dict[str, Path]) -> Iterator[Passage]:
    for i, line in enumerate(files["data.txt"].read_text().splitlines()):
        yield Passage(id=f"s:{i}", title=line, text=f"{line} is a thing.", source="stand-in")


@dataclass(frozen=True)
class FolderSource(PackageSource):
    """A PackageSource whose 'package' is a folder: same fingerprint and build path, no pip install."""

    root: Path = Path()

    def version(self) -> str:
        return "0.0.1"

    def locate(self) -> dict[str, Path]:
        return {name: self.root / name for name in self.files}


def _source(root: Path, lines: list[str]) -> FolderSource:
    root.mkdir(exist_ok=True)
    (root / "data.txt").write_text("\n".join(lines))
    return FolderSource(
        key="stand-in",
        distribution="stand-in",
        files=("data.txt",),
        licence="CC0",
        credit="Stand-in {version}",
        read=_read,
        root=root,
    )


def test_builds_once_then_finds(tmp_path: Path) -> None:
    sources = [_source(tmp_path / "pkg", ["Boston", "Paris"])]
    cache = tmp_path / "cache"
    assert find_default_index(cache, sources) is None
    folder = ensure_default_index(cache, sources)
    assert folder == default_index_dir(cache, sources) and folder.name.startswith("default-")
    assert len(folder.name) == len("default-") + 16
    manifest_bytes = (folder / "manifest.json").read_bytes()
    inode = (folder / "manifest.json").stat().st_ino
    assert ensure_default_index(cache, sources) == folder
    assert (folder / "manifest.json").stat().st_ino == inode, "found, not rebuilt"
    m = KnowledgeIndex.load(folder).manifest
    assert m.sources["stand-in"].licence == "CC0" and m.sources["stand-in"].credit == "Stand-in 0.0.1"
    assert [c.name for c in m.corpora] == ["stand-in.jsonl"]
    assert json.loads(manifest_bytes)["passages"] == 2
    assert sorted(p.name for p in cache.iterdir()) == [folder.name], "no temporary corpus left"


def test_changed_source_data_gives_a_new_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ensure_default_index(cache, [_source(tmp_path / "pkg", ["Boston"])])
    second = ensure_default_index(cache, [_source(tmp_path / "pkg", ["Boston", "Lyon"])])
    assert first != second and first.is_dir() and len(KnowledgeIndex.load(second)) == 2


def test_a_damaged_cached_index_is_rebuilt(tmp_path: Path) -> None:
    sources = [_source(tmp_path / "pkg", ["Boston", "Paris"])]
    folder = ensure_default_index(tmp_path / "cache", sources)
    (folder / "vocab.json").write_text('["x"]')
    assert find_default_index(tmp_path / "cache", sources) is None
    assert ensure_default_index(tmp_path / "cache", sources) == folder
    assert KnowledgeIndex.load(folder).search("Paris", 1)[0].passage.title == "Paris"
