"""Lookup tables that several graphs hold are stored once and fed from a memory map (model/gather_tables.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model.gather_tables import MIN_BYTES, share_gather_tables
from model.onnx_pipeline import _new_session

ROWS, DIM = MIN_BYTES // (4 * 64) + 1, 64  # just over the size at which a table gets its own file


def _graph(path: Path, table: np.ndarray, scale: float, matmul_weight: np.ndarray) -> None:
    """ids -> Gather(table) * scale, and a MatMul weight of the same size (not gather-only: stays put)."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Mul", ["rows", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "weight"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", matmul_weight.shape[1]])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array(scale, np.float32), "scale"),
            numpy_helper.from_array(matmul_weight, "weight"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))


@pytest.fixture()
def graphs(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    weight = rng.standard_normal((DIM, ROWS)).astype(np.float32)
    paths = []
    for i, scale in enumerate((1.0, 2.0)):
        (tmp_path / f"g{i}").mkdir()
        paths.append(tmp_path / f"g{i}" / "model.onnx")
        _graph(paths[-1], table, scale, weight)
    return paths, table


def test_a_table_two_graphs_hold_is_stored_once_and_answers_do_not_change(
    graphs: tuple[list[Path], np.ndarray], tmp_path: Path
) -> None:
    paths, table = graphs
    ids = np.array([0, 5, ROWS - 1], np.int64)
    before = [_new_session(p, 1).run(None, {"ids": ids})[0] for p in paths]
    sizes = [p.stat().st_size for p in paths]
    files = [share_gather_tables(p, tmp_path / "tables") for p in paths]
    assert files[0] == files[1] and len(files[0]) == 1  # one file for the one distinct table
    assert sorted((tmp_path / "tables").iterdir()) == files[0]
    np.testing.assert_array_equal(np.load(files[0][0]), table)
    for p, size in zip(paths, sizes, strict=True):
        assert size - p.stat().st_size > table.nbytes - 1024  # the graph no longer holds it
        names = {i.name for i in onnx.load(str(p)).graph.initializer}
        assert "table" not in names and "weight" in names  # a MatMul weight keeps its packed layout
    for p, expected in zip(paths, before, strict=True):
        session = _new_session(p, 1)
        assert [i.name for i in session.get_inputs()] == ["ids"]  # callers feed what they always fed
        np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], expected)
    assert share_gather_tables(paths[0], tmp_path / "tables") == files[0]  # idempotent


def test_a_missing_table_names_the_file_and_the_fix(
    graphs: tuple[list[Path], np.ndarray], tmp_path: Path
) -> None:
    paths, _ = graphs
    (table,) = share_gather_tables(paths[0], tmp_path / "tables")
    table.unlink()
    with pytest.raises(FileNotFoundError, match="export the graphs again"):
        _new_session(paths[0], 1)
