"""Large lookup tables held once: on disk per export, in memory per process.

A worker runs three MiniLM graphs (the MNER text graph, the MRE text graph, the evidence-text encoder),
and each would carry the same 30522 x 384 word-embedding table (45 MiB): 90 MiB of the image and of every
worker's memory are copies. ``share_gather_tables`` (export time, needs ``onnx``) moves every large
initializer that a graph only gathers rows from out of the graph into ``store/<digest>.npy``, one file
per distinct table however many graphs hold it, and turns it into a graph input named as before; the
graph's metadata (``saver.gather_tables``) maps each such input to its file, relative to the graph.

``gather_feeds`` (serving time, numpy only) opens those files as read-only memory maps, once per process,
and the session (model/onnx_pipeline.py) feeds them on every run. ONNX Runtime reads a CPU input in place,
so only the pages of the rows of tokens actually seen become resident, and worker processes on one node
share them through the page cache. Only ``Gather`` consumers qualify: Gather has no prepacked form, so a
table fed as an input costs nothing per run (a MatMul weight would lose its packed layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

METADATA_KEY = "saver.gather_tables"  # JSON: graph input name -> table file, relative to the graph's folder
MIN_BYTES = 4 * 2**20  # smaller tables are not worth a file (MiniLM's position table is 0.75 MiB)

_TABLES: dict[Path, np.ndarray] = {}
_TABLES_LOCK = threading.Lock()


def table_files(graph: Path, metadata: dict[str, str]) -> dict[str, Path]:
    """Input name -> table file for a graph whose metadata is ``metadata`` (empty for other graphs)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    return {str(name): (graph.parent / rel).resolve() for name, rel in json.loads(raw).items()}


def gather_feeds(graph: Path, metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """The tables a graph reads as inputs, memory-mapped read-only, each file mapped once per process."""
    feeds = {}
    for name, path in table_files(graph, metadata).items():
        with _TABLES_LOCK:
            table = _TABLES.get(path)
            if table is None:
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{graph} reads its input {name!r} from {path}, which is missing: export the graphs again"
                    )
                table = _TABLES[path] = np.load(path, mmap_mode="r")
        feeds[name] = table
    return feeds


def share_gather_tables(graph: Path, store: Path) -> list[Path]:
    """Move ``graph``'s large gather-only initializers into ``store`` (see the module docstring) and
    rewrite the graph in place. Idempotent: a graph already rewritten is left alone. Returns the table
    files the graph reads."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(graph))
    metadata = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY in metadata:
        return list(table_files(graph, metadata).values())
    uses: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            uses[name].add((node.op_type, position))
    moved: dict[str, str] = {}
    paths = []
    for init in list(model.graph.initializer):
        if uses.get(init.name) != {("Gather", 0)}:
            continue
        table = numpy_helper.to_array(init)
        if table.nbytes < MIN_BYTES:
            continue
        path = _store_table(np.ascontiguousarray(table), store)
        model.graph.initializer.remove(init)
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        moved[init.name] = os.path.relpath(path, graph.parent)
        paths.append(path.resolve())
    if not moved:
        return []
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(moved, sort_keys=True))
    atomic_write(graph, lambda tmp: onnx.save(model, tmp))
    return paths


def copy_table_metadata(src: Path, dst: Path) -> None:
    """Give ``dst`` (a graph derived from ``src`` in the same folder, e.g. its int8 form) ``src``'s table
    inputs, when a tool that rewrote it dropped the metadata."""
    import onnx

    source = onnx.load(str(src), load_external_data=False)
    value = {p.key: p.value for p in source.metadata_props}.get(METADATA_KEY)
    if value is None:
        return
    model = onnx.load(str(dst))
    if any(p.key == METADATA_KEY for p in model.metadata_props):
        return
    model.metadata_props.add(key=METADATA_KEY, value=value)
    atomic_write(dst, lambda tmp: onnx.save(model, tmp))


def _store_table(table: np.ndarray, store: Path) -> Path:
    digest = hashlib.sha256(f"{table.dtype.str}{table.shape}".encode())
    digest.update(table.tobytes())
    path = store / f"{digest.hexdigest()[:24]}.npy"
    if not path.is_file():
        atomic_write(path, lambda tmp: np.save(tmp, table))
    return path


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Readers (other workers sharing the folder) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
