"""Export pieces: the dense text scorer and router equal the sparse router, graph keys follow the weights,
stale graphs are never picked, the real EfficientNet tiers export and agree with torch on the numpy
preprocessing, int8 quantisation stays close."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.answer import top_tags
from model.artifacts import ArtifactInfo
from model.config import SaverConfig
from model.head import EnergyHead
from model.mner import MnerModel
from model.onnx_export import (
    TEXT_GRAPH,
    TEXT_GRAPH_INT8,
    GraphDir,
    ensure_text_graph,
    ensure_tier_graphs,
    text_graph_key,
)
from model.onnx_pipeline import make_session, onnx_pipeline
from model.pixels import images_to_array
from model.text_encoder import TextEncoder
from tests.model.conftest import FakeBackbone, make_images


@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 1), (4, 2), (3, 3)])
def test_dense_text_scores_equal_the_sparse_router(n_experts: int, top_k: int) -> None:
    torch.manual_seed(n_experts + top_k)
    head = EnergyHead(32, 5, n_experts, top_k, 16, 1.0, 0.0).eval()
    units = torch.randn(40, 32)
    with torch.no_grad():
        torch.testing.assert_close(head.text_scores_dense(units), head.text_scores(units).scores)
        # any leading shape: (B, U, d) as the MNER graph uses it
        torch.testing.assert_close(
            head.text_scores_dense(units.view(4, 10, 32)), head.text_scores(units).scores.view(4, 10, 5)
        )
        # the fuse graph's router on [units; evidence], as the vision path calls it
        x = torch.randn(40, 64)
        torch.testing.assert_close(head.router.dense(x).scores, head.router(x).scores)


@pytest.fixture(scope="module")
def model(encoder: TextEncoder) -> MnerModel:
    torch.manual_seed(0)
    return MnerModel(SaverConfig(), encoder=copy.deepcopy(encoder)).eval()


def test_graph_key_follows_the_stored_weights_and_config(model: MnerModel) -> None:
    key = text_graph_key(model)
    assert key == text_graph_key(model)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.span_rep.width_embedding.weight.add_(1e-3)
    assert text_graph_key(changed) != key
    other = copy.deepcopy(model)
    other.cfg = SaverConfig(candidate_none_max=0.9)
    assert text_graph_key(other) != key


def test_graph_dir_only_returns_graphs_built_for_the_key(tmp_path: Path) -> None:
    graphs = GraphDir(tmp_path)
    (tmp_path / "text.onnx").write_bytes(b"graph")
    assert graphs.graph("text.onnx", "k1") is None  # no manifest: unknown provenance
    graphs.record("text.onnx", "k1")
    graphs.record("screen.onnx", "v1")
    assert graphs.graph("text.onnx", "k1") == tmp_path / "text.onnx"
    assert graphs.graph("text.onnx", "k2") is None
    assert graphs.graph("detail.onnx", "v1") is None  # recorded nowhere, file missing
    (tmp_path / "manifest.json").write_text("not json")
    assert graphs.graph("text.onnx", "k1") is None


@pytest.fixture(scope="module")
def graphs(model: MnerModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("graphs")
    ensure_text_graph(model, directory)
    return directory


def test_int8_text_graph_is_smaller_and_close(model: MnerModel, graphs: Path) -> None:
    pipes = [
        onnx_pipeline(
            model,
            ArtifactInfo(name="q"),
            threshold=0.5,
            cache_dir=graphs,
            quantize=q,
            threads=1,
            backbone=FakeBackbone(),
        )
        for q in (False, True)
    ]
    full, int8 = (p.text_graph for p in pipes)
    assert (full.name, int8.name) == (TEXT_GRAPH, TEXT_GRAPH_INT8)
    # the transformer layers shrink 4x; the fp32 word-embedding table (47 MB) is a gather, left as is
    assert int8.stat().st_size < 0.75 * full.stat().st_size
    tweet = "Kevin Durant joins the Golden State Warriors tonight in #Oakland @warriors"
    a, b = (p.encode_text(text=tweet) for p in pipes)
    assert a.units == b.units
    # int8 is lossy: close, not equal (the dev-F1 check decides whether it may be switched on)
    assert np.abs(a.gate - b.gate).max() < 0.05
    ua, ub = a.state.units, b.state.units
    assert 0 < np.linalg.norm(ua - ub) / np.linalg.norm(ua) < 0.2  # measured 0.13 on this random-head model


def test_efficientnet_tiers_export_and_match_torch(tmp_path: Path) -> None:
    """The tier graphs on the numpy preprocessing the torch-free worker runs, against the torch backbone."""
    from model.vision import build_backbone

    backbone = build_backbone("efficientnet-lite0")
    assert backbone.transform is not None
    graphs = ensure_tier_graphs(backbone, tmp_path)
    assert set(graphs) == {"screen", "detail"}
    images = make_images(3, seed=4)
    a = backbone.screen(images)
    vectors, tag_logits = make_session(graphs["screen"], 1).run(
        None, {"pixels": images_to_array(images, backbone.screen_size, backbone.transform)}
    )
    np.testing.assert_allclose(vectors, a.global_vectors.numpy(), atol=1e-4, rtol=1e-3)
    assert backbone.tag_vocabulary is not None
    assert backbone.tags(a.tag_logits, 5) == top_tags(tag_logits, backbone.tag_vocabulary, 5)
    da = backbone.detail(images[:1])
    _, regions, _ = make_session(graphs["detail"], 1).run(
        None, {"pixels": images_to_array(images[:1], backbone.detail_size, backbone.transform)}
    )
    assert regions.shape == da.regions.shape == (1, backbone.num_regions, backbone.dim)
    np.testing.assert_allclose(regions, da.regions.numpy(), atol=1e-4, rtol=1e-3)
    # a second call finds the graphs by key instead of exporting again
    before = {t: p.stat().st_mtime_ns for t, p in graphs.items()}
    again = ensure_tier_graphs(backbone, tmp_path)
    assert {t: p.stat().st_mtime_ns for t, p in again.items()} == before


def test_sessions_use_the_cpu_provider_without_a_gpu(model: MnerModel, graphs: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the CPU-only path is what is tested here")
    session = make_session(ensure_text_graph(model, graphs), threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
