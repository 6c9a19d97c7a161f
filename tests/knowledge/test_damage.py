"""Every kind of damage an index folder can suffer is refused with a typed error, never a wrong answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from knowledge import IndexCorruptError, IndexMissingError, KnowledgeIndex
from knowledge.manifest import MANIFEST, compute_identity


def test_no_folder(tmp_path: Path) -> None:
    with pytest.raises(IndexMissingError, match="no such folder"):
        KnowledgeIndex.load(tmp_path / "absent")


def test_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(IndexMissingError, match=r"no manifest\.json"):
        KnowledgeIndex.load(tmp_path)


def _edit_manifest(folder: Path, edit: Callable[[dict], None], resign: bool) -> None:
    path = folder / MANIFEST
    raw = json.loads(path.read_text())
    edit(raw)
    if resign:  # a consistent-looking manifest: only the cross-checks against the files can catch it
        raw["identity"] = compute_identity({k: v for k, v in raw.items() if k != "identity"})
    path.write_text(json.dumps(raw))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest not JSON": (lambda d: (d / MANIFEST).write_text("{not json"), "unreadable manifest"),
    "manifest of another format": (
        lambda d: _edit_manifest(d, lambda m: m.update(format="other/9"), resign=False),
        "not a saver-knowledge-index/1 manifest",
    ),
    "manifest field missing": (
        lambda d: _edit_manifest(d, lambda m: m.pop("files"), resign=True),
        "malformed manifest",
    ),
    "manifest edited": (
        lambda d: _edit_manifest(d, lambda m: m.update(passages=99), resign=False),
        "does not match its contents",
    ),
    "file deleted": (lambda d: (d / "bm25" / "indices.csc.index.npy").unlink(), "is missing"),
    "file truncated": (
        lambda d: (d / "passages.jsonl").write_bytes((d / "passages.jsonl").read_bytes()[:-10]),
        "bytes, the manifest says",
    ),
    "bit flipped": (lambda d: _flip_last_byte(d / "bm25" / "data.csc.index.npy"), "SHA-256"),
    "counts disagree with the arrays": (
        lambda d: _edit_manifest(d, lambda m: m.update(passages=m["passages"] + 1), resign=True),
        "manifest says 7 passages",
    ),
    "tokenizer changed": (
        lambda d: _edit_manifest(d, lambda m: m.update(tokenizer="other/1"), resign=True),
        "rebuild it",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_refused(index_dir: Path, kind: str) -> None:
    damage, message = DAMAGE[kind]
    damage(index_dir)
    with pytest.raises(IndexCorruptError, match=message):
        KnowledgeIndex.load(index_dir)


def test_unreadable_array_is_corrupt_even_unverified(index_dir: Path) -> None:
    path = index_dir / "passages.offsets.npy"
    path.write_bytes(b"\x00" * path.stat().st_size)  # same size, no npy header
    with pytest.raises(IndexCorruptError, match="unreadable index file"):
        KnowledgeIndex.load(index_dir, verify=False)
