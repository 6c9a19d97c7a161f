"""ONNX Runtime backend against the torch pipeline: same scores within a stated tolerance, same decoded
entities and relations, on tweets with emoji, URLs, mentions and very short posts; batched text encoding
gives each post what it gets alone; graphs shipped in ``artifacts/onnx`` are used instead of the cache.

Tolerance: ORT fuses and reorders the fp32 encoder's ops, so values differ from torch by ~1e-6 here;
we assert ``ATOL`` = 1e-4 on gate probabilities, text logits and unit vectors, and exact equality of the
decoded spans, labels and relation (scores to 1e-4).
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from model.artifacts import ArtifactInfo, load_artifacts, save_artifacts, threshold_from_calibration
from model.config import SaverConfig
from model.gate import VisionMode
from model.head import EnergyHead
from model.inference import TorchPipeline
from model.loading import MNRE_RELATIONS, OnnxOptions, load_pipeline
from model.lora import LoRALinear
from model.mner import MnerModel
from model.mre import MreModel
from model.onnx_export import (
    EVIDENCE_GRAPH,
    MANIFEST,
    TEXT_GRAPH,
    GraphDir,
    ensure_tier_graphs,
    evidence_graph_key,
)
from model.onnx_pipeline import OnnxBackbone, OnnxPipeline, available_cpus, onnx_pipeline
from model.pipeline import MnerResult, MreResult, SaverPipeline, TextRequest
from model.runner import run_pipeline
from model.text_encoder import TextEncoder
from tests.model.conftest import FakeBackbone, make_images

ATOL = 1e-4
THRESHOLD = 0.5  # τ of an uncalibrated model

TWEETS = [
    "Kevin Durant joins the Golden State Warriors tonight in #Oakland @warriors 🏀 http://t.co/xyz",
    "RT @NBA: LeBron James and Stephen Curry at Oracle Arena #NBAFinals 🔥🔥 https://t.co/aBcD123 lol",
    "Obama",
    "New York !",
    "@taylorswift13 see you in London 💖💖 www.example.com/tour?x=1",
]
PAIRS = [
    ("Kevin Durant joins the Golden State Warriors tonight", (0, 2), (3, 6)),
    ("Obama visited Paris", (0, 1), (2, 3)),
    ("@taylorswift13 and @edsheeran 🎤 on stage in London https://t.co/a", (0, 1), (2, 3)),
]


def randomise(model: MnerModel | MreModel, wake: Callable[[EnergyHead], None]) -> None:
    """Non-zero LoRA deltas (so the export's merge matters) and an awake vision head."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in model.encoder.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=generator) * 0.02)
    wake(model.head)


def pipelines(
    model: MnerModel | MreModel, cache: Path, backbone: FakeBackbone
) -> tuple[TorchPipeline, OnnxPipeline]:
    """A torch pipeline and an ONNX one on the same model and (fake) backbone."""
    torch_pipe = TorchPipeline(
        model, lambda: backbone, name="t", version="0", trained=False, threshold=THRESHOLD
    )
    built = onnx_pipeline(
        model,
        ArtifactInfo(name="o"),
        threshold=THRESHOLD,
        cache_dir=cache,
        threads=1,
        release_encoder=False,
    )
    graphs = ensure_tier_graphs(backbone, cache / "vision-fake", key="fake")
    onnx_pipe = OnnxPipeline(
        model,
        built.text_graph,
        lambda: OnnxBackbone(backbone, graphs, threads=1),
        name="o",
        version="0",
        trained=False,
        threshold=THRESHOLD,
        threads=1,
        evidence_graph=cache / f"evidence-{evidence_graph_key(model.encoder)}" / EVIDENCE_GRAPH,
    )
    assert onnx_pipe.evidence_session is not None  # evidence text (backbone tags) goes through ONNX too
    return torch_pipe, onnx_pipe


@pytest.fixture(scope="module")
def mner_pair(
    encoder: TextEncoder, wake: Callable[[EnergyHead], None], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TorchPipeline, OnnxPipeline]:
    torch.manual_seed(0)
    model = MnerModel(SaverConfig(), encoder=copy.deepcopy(encoder)).eval()
    randomise(model, wake)
    return pipelines(model, tmp_path_factory.mktemp("onnx-mner"), FakeBackbone())


@pytest.fixture(scope="module")
def mre_pair(
    encoder: TextEncoder, wake: Callable[[EnergyHead], None], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TorchPipeline, OnnxPipeline]:
    torch.manual_seed(0)
    cfg = SaverConfig(task="mre", labels=list(MNRE_RELATIONS), pair_rule="noisy_or")
    model = MreModel(cfg, encoder=copy.deepcopy(encoder)).eval()
    randomise(model, wake)
    return pipelines(model, tmp_path_factory.mktemp("onnx-mre"), FakeBackbone())


def staged(
    pipe: SaverPipeline, mode: VisionMode, images: list[Image.Image], **text: Any
) -> MnerResult | MreResult:
    """Every stage in order, as the service runs them."""
    return run_pipeline(pipe, TextRequest(**text), images, mode).result


def assert_same_entities(a: MnerResult | MreResult, b: MnerResult | MreResult) -> None:
    assert isinstance(a, MnerResult) and isinstance(b, MnerResult)
    key = [(e.token_start, e.token_end, e.start, e.end, e.type, e.activated, e.images) for e in a.entities]
    assert key == [
        (e.token_start, e.token_end, e.start, e.end, e.type, e.activated, e.images) for e in b.entities
    ]
    assert [e.score for e in a.entities] == pytest.approx([e.score for e in b.entities], abs=ATOL)
    assert [e.gate for e in a.entities] == pytest.approx([e.gate for e in b.entities], abs=ATOL)


def test_onnx_pipeline_satisfies_the_protocol(mner_pair: tuple[TorchPipeline, OnnxPipeline]) -> None:
    assert isinstance(mner_pair[1], SaverPipeline)
    assert mner_pair[1].text_session.get_providers()[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize("tweet", TWEETS)
def test_mner_text_stage_matches_torch(mner_pair: tuple[TorchPipeline, OnnxPipeline], tweet: str) -> None:
    torch_pipe, onnx_pipe = mner_pair
    a, b = torch_pipe.encode_text(text=tweet), onnx_pipe.encode_text(text=tweet)
    assert a.units == b.units and len(a.units) > 0
    np.testing.assert_allclose(a.gate, b.gate, atol=ATOL)
    for name in ("units", "text_logits"):
        np.testing.assert_allclose(getattr(a.state, name).numpy(), getattr(b.state, name).numpy(), atol=ATOL)


@pytest.mark.parametrize("mode", ["never", "always"])
def test_mner_decodes_the_same_entities(
    mner_pair: tuple[TorchPipeline, OnnxPipeline], mode: VisionMode
) -> None:
    torch_pipe, onnx_pipe = mner_pair
    images = make_images(3, seed=1)
    used_images = False
    for tweet in TWEETS:
        a, b = staged(torch_pipe, mode, images, text=tweet), staged(onnx_pipe, mode, images, text=tweet)
        assert_same_entities(a, b)
        assert isinstance(a, MnerResult)
        used_images |= any(e.images for e in a.entities)
    assert used_images == (mode == "always")  # the vision path really ran (or really did not)


def test_mner_pre_tokenised_and_empty_posts(mner_pair: tuple[TorchPipeline, OnnxPipeline]) -> None:
    torch_pipe, onnx_pipe = mner_pair
    tokens = ["RT", "@user", ":", "Paris", "Saint-Germain", "win", "#Ligue1", "😀"]
    assert_same_entities(
        staged(torch_pipe, "never", [], tokens=tokens), staged(onnx_pipe, "never", [], tokens=tokens)
    )
    empty = staged(onnx_pipe, "auto", [], text="   ")
    assert isinstance(empty, MnerResult) and empty.entities == []


@pytest.mark.parametrize("mode", ["never", "always"])
def test_mre_decodes_the_same_relation(
    mre_pair: tuple[TorchPipeline, OnnxPipeline], mode: VisionMode
) -> None:
    torch_pipe, onnx_pipe = mre_pair
    images = make_images(3, seed=2)
    for text, head, tail in PAIRS:
        ta, tb = (
            torch_pipe.encode_text(text=text, head=head, tail=tail),
            onnx_pipe.encode_text(text=text, head=head, tail=tail),
        )
        np.testing.assert_allclose(ta.gate, tb.gate, atol=ATOL)
        np.testing.assert_allclose(ta.state.text_logits.numpy(), tb.state.text_logits.numpy(), atol=ATOL)
        a = staged(torch_pipe, mode, images, text=text, head=head, tail=tail)
        b = staged(onnx_pipe, mode, images, text=text, head=head, tail=tail)
        assert isinstance(a, MreResult) and isinstance(b, MreResult)
        assert (a.relation, a.activated, a.images) == (b.relation, b.activated, b.images)
        assert [r for r, _ in a.top] == [r for r, _ in b.top]
        assert [s for _, s in a.top] == pytest.approx([s for _, s in b.top], abs=ATOL)


@pytest.mark.parametrize("backend", [0, 1])
def test_batched_text_encoding_equals_one_by_one(
    mner_pair: tuple[TorchPipeline, OnnxPipeline], mre_pair: tuple[TorchPipeline, OnnxPipeline], backend: int
) -> None:
    mner, mre = mner_pair[backend], mre_pair[backend]
    requests = [TextRequest(text=t) for t in TWEETS] + [TextRequest(text=""), TextRequest(tokens=["Obama"])]
    for pipe, reqs in (
        (mner, requests),
        (mre, [TextRequest(text=t, head=h, tail=tl) for t, h, tl in PAIRS]),
    ):
        batched = pipe.encode_text_batch(reqs)
        assert len(batched) == len(reqs)
        for request, together in zip(reqs, batched, strict=True):
            alone = pipe.encode_text(request.text, request.tokens, request.head, request.tail)
            assert (together.text, together.units) == (alone.text, alone.units)
            np.testing.assert_allclose(together.gate, alone.gate, atol=ATOL)
            np.testing.assert_allclose(
                together.state.text_logits.numpy(), alone.state.text_logits.numpy(), atol=ATOL
            )


def test_vision_tiers_match_torch(mner_pair: tuple[TorchPipeline, OnnxPipeline]) -> None:
    torch_pipe, onnx_pipe = mner_pair
    images = make_images(4, seed=3)
    a, b = torch_pipe.screen(images), onnx_pipe.screen(images)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.vector, y.vector, atol=ATOL)  # image + evidence-text channels
        assert x.tags == y.tags
    da, db = torch_pipe.detail(images[:2]), onnx_pipe.detail(images[:2])
    for u, v in zip(da, db, strict=True):
        np.testing.assert_allclose(u.payload["regions"].numpy(), v.payload["regions"].numpy(), atol=ATOL)
        np.testing.assert_allclose(u.payload["text"].numpy(), v.payload["text"].numpy(), atol=ATOL)


@pytest.fixture
def saved_mner(
    encoder: TextEncoder, wake: Callable[[EnergyHead], None], tmp_path: Path
) -> Iterator[tuple[Path, TextEncoder]]:
    torch.manual_seed(1)
    model = MnerModel(SaverConfig(), encoder=copy.deepcopy(encoder)).eval()
    randomise(model, wake)
    save_artifacts(model, tmp_path / "art", ArtifactInfo(name="saved", trained=True))
    yield tmp_path / "art", copy.deepcopy(encoder)


def test_graphs_in_the_artifacts_are_used_and_stale_ones_are_not(
    saved_mner: tuple[Path, TextEncoder], tmp_path: Path
) -> None:
    art, enc = saved_mner
    cache = tmp_path / "cache"
    first = load_pipeline(
        art, "mner", encoder=enc, backend="onnx", onnx=OnnxOptions(cache_dir=cache, threads=1)
    )
    assert isinstance(first, OnnxPipeline) and first.text_graph.parent.parent == cache
    # what `saver export --onnx` leaves behind: the same graphs inside the artifact directory
    shipped = GraphDir(art / "onnx")
    shipped.path.mkdir()
    assert first.evidence_graph is not None
    for graph in (first.text_graph, first.evidence_graph):
        shutil.copy(graph, shipped.path / graph.name)
        shipped.record(graph.name, GraphDir(graph.parent).manifest()[graph.name])
    shutil.rmtree(cache)
    options = OnnxOptions(cache_dir=cache, threads=1)
    second = load_pipeline(art, "mner", encoder=copy.deepcopy(enc), backend="onnx", onnx=options)
    assert isinstance(second, OnnxPipeline) and second.text_graph == art / "onnx" / TEXT_GRAPH
    assert not cache.exists()
    # a manifest recorded for other weights is never trusted
    (art / "onnx" / MANIFEST).write_text('{"text.onnx": "someone-elses-weights"}')
    third = load_pipeline(art, "mner", encoder=copy.deepcopy(enc), backend="onnx", onnx=options)
    assert isinstance(third, OnnxPipeline) and third.text_graph.parent.parent == cache
    model, info = load_artifacts(art, copy.deepcopy(enc))
    threshold = threshold_from_calibration(info.calibration)
    assert first.threshold == second.threshold == third.threshold == threshold
    reference = TorchPipeline(model, FakeBackbone, name="t", version="0", trained=True, threshold=threshold)
    tweet = TWEETS[0]
    np.testing.assert_allclose(
        third.encode_text(text=tweet).gate, reference.encode_text(text=tweet).gate, atol=ATOL
    )


def test_the_built_pipeline_frees_the_torch_encoder_and_still_agrees(
    mner_pair: tuple[TorchPipeline, OnnxPipeline],
) -> None:
    torch_pipe, onnx_pipe = mner_pair
    cache = onnx_pipe.text_graph.parent.parent
    model = copy.deepcopy(torch_pipe.model)
    # graphs found by key
    built = onnx_pipeline(model, ArtifactInfo(name="b"), threshold=THRESHOLD, cache_dir=cache, threads=1)
    assert built.text_graph == onnx_pipe.text_graph
    assert all(p.is_meta for p in model.encoder.bert.parameters())
    for tweet in TWEETS[:2]:
        np.testing.assert_allclose(
            built.encode_text(text=tweet).gate, torch_pipe.encode_text(text=tweet).gate, atol=ATOL
        )


def test_available_cpus_respects_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
