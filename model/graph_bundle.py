"""The self-describing directory of exported graphs one torch-free ONNX worker serves a task from.

``ROOT/<task>-<key>/bundle.json`` names every graph of the task (text, decide, query, items, fuse; the
evidence-text encoder and the vision tiers live in sibling directories shared by both tasks), the
lookup tables those graphs read as inputs (``ROOT/tables/``, one file per distinct table: see
model/gather_tables.py), the tokenizer file, the vision backbone's preprocessing and tag names, and what the glue needs of the config.
``key`` is ``artifact_key`` of the artifact directory (a hash of its config and weights), so a worker
without torch finds its graphs by hashing two files; a model built in memory is keyed by its weights'
hash instead. ``bundle.json`` is written last: a directory without it is an interrupted export.

Written by ``model/onnx_stages.py`` (``saver export-graphs``, or the first start of a worker that has
torch); read by ``model/onnx_pipeline.py``. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(".cache/onnx")  # relative to the working directory; SAVER_ONNX_CACHE_DIR overrides
BUNDLE = "bundle.json"
BUNDLE_FORMAT = 2  # bump when a graph's inputs, outputs or meaning change: old bundles stop matching
EXPORT_COMMAND = "saver export-graphs --out DIR"
TABLES_DIR = "tables"  # ROOT/tables/<digest>.npy: lookup tables several graphs read (model/gather_tables.py)


@dataclass
class OnnxOptions:
    """How the ONNX Runtime backend finds or builds its graphs (see model/onnx_pipeline.py)."""

    cache_dir: Path | None = (
        None  # searched after ``artifacts/onnx``, and where graphs are built; None: default
    )
    quantize: bool = False  # int8 dynamic quantisation of the text graph
    threads: int | None = None  # ORT intra-op threads; None: the CPUs available to this process


@dataclass(frozen=True)
class Bundle:
    path: Path
    record: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.record["task"])

    def graph(self, name: str) -> Path:
        """A graph's file (paths in the record are relative to the bundle directory)."""
        return (self.path / self.record["graphs"][name]).resolve()

    def vision_graph(self, tier: str) -> Path:
        return (self.path / self.record["vision"]["graphs"][tier]).resolve()

    def has(self, name: str) -> bool:
        return self.record["graphs"].get(name) is not None

    def files(self) -> list[Path]:
        graphs = [self.graph(n) for n, f in self.record["graphs"].items() if f is not None]
        vision = [self.vision_graph(t) for t in self.record["vision"]["graphs"]]
        tables = [(self.path / t).resolve() for t in self.record["tables"]]
        return [*graphs, *vision, *tables, self.path / self.record["tokenizer"]["file"]]


def bundle_dir(root: Path, task: str, key: str) -> Path:
    return root / f"{task}-{key}"


def read_bundle(directory: Path, task: str, key: str) -> Bundle | None:
    """The bundle in ``directory`` if it is complete and was exported for ``task`` and ``key``."""
    try:
        record = json.loads((directory / BUNDLE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("format") != BUNDLE_FORMAT or record.get("task") != task or record.get("key") != key:
        return None
    bundle = Bundle(directory, record)
    try:
        return bundle if all(f.is_file() for f in bundle.files()) else None
    except (KeyError, TypeError):
        return None


def find_bundle(task: str, key: str, roots: list[Path]) -> Bundle | None:
    """The first complete bundle for ``task`` and ``key`` under ``roots`` (each holds ``<task>-<key>/``)."""
    for root in roots:
        found = read_bundle(bundle_dir(root, task, key), task, key)
        if found is not None:
            return found
    return None


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Atomically, last: readers only ever see a complete bundle."""
    tmp = directory / f".{BUNDLE}.{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / BUNDLE)
