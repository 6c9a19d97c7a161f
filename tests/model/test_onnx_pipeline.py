"""ONNX Runtime backend against the torch pipeline: same scores within a stated tolerance, same decoded
entities and relations, on tweets with emoji, URLs, mentions and very short posts, text-only and with
vision on (every stage a graph: decide, query, items, fuse, padded selections included); batched text
encoding gives each post what it gets alone; bundles shipped in ``artifacts/onnx`` are used instead of
the cache, and stale ones are not.

Tolerance: ORT fuses and reorders the fp32 encoder's ops, so values differ from torch by ~1e-6 here;
we assert ``ATOL`` = 1e-4 on gate probabilities, text logits and unit vectors, and exact equality of the
decoded spans, labels and relation (scores to 1e-4).
"""

from __future__ import annotations

import copy
import json
import math
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
from model.graph_bundle import BUNDLE, OnnxOptions
from model.head import EnergyHead
from model.inference import TorchPipeline
from model.loading import MNRE_RELATIONS
from model.lora import LoRALinear
from model.mner import MnerModel
from model.mre import MreModel
from model.onnx_pipeline import OnnxPipeline, available_cpus, load_onnx_pipeline, onnx_pipeline
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
    onnx_pipe = onnx_pipeline(
        model, ArtifactInfo(name="o"), threshold=THRESHOLD, cache_dir=cache, threads=1, backbone=backbone
    )
    assert onnx_pipe.evidence_session is not None  # evidence text (backbone tags) goes through ONNX too
    return torch_pipe, onnx_pipe


def arr(x: Any) -> np.ndarray:
    """A torch tensor (torch pipeline) or an array (ONNX pipeline) as an array."""
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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
    # ISAB blocks and R' < R region tokens: the fuse graph's other branches
    cfg = SaverConfig(
        task="mre", labels=list(MNRE_RELATIONS), pair_rule="noisy_or", set_inducing=2, top_regions=2
    )
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
        np.testing.assert_allclose(arr(getattr(a.state, name)), arr(getattr(b.state, name)), atol=ATOL)


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
        np.testing.assert_allclose(arr(ta.state.text_logits), arr(tb.state.text_logits), atol=ATOL)
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
                arr(together.state.text_logits), arr(alone.state.text_logits), atol=ATOL
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
        for key in ("image", "regions", "text"):
            np.testing.assert_allclose(arr(u.payload[key]), arr(v.payload[key]), atol=ATOL)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, math.inf])
def test_the_decide_graph_matches_torch(
    mner_pair: tuple[TorchPipeline, OnnxPipeline], threshold: float
) -> None:
    torch_pipe, onnx_pipe = mner_pair
    torch_pipe._threshold = onnx_pipe._threshold = threshold
    try:
        for tweet in TWEETS:
            a, b = torch_pipe.encode_text(text=tweet), onnx_pipe.encode_text(text=tweet)
            for mode in ("auto", "always", "never"):
                np.testing.assert_array_equal(torch_pipe.activation(a, mode), onnx_pipe.activation(b, mode))
    finally:
        torch_pipe._threshold = onnx_pipe._threshold = THRESHOLD


@pytest.mark.parametrize("n_images", [1, 2, 5])
def test_fuse_matches_torch_with_padded_selections_and_missing_images(
    mner_pair: tuple[TorchPipeline, OnnxPipeline], mre_pair: tuple[TorchPipeline, OnnxPipeline], n_images: int
) -> None:
    """One image gives every unit fewer images than ``select_k`` (the fuse graph's padding); an image that
    did not arrive makes the units that selected it fall back to text, in both backends alike."""
    images = make_images(n_images, seed=4)
    for (torch_pipe, onnx_pipe), kwargs in (
        (mner_pair, {"text": TWEETS[0]}),
        (mre_pair, {"text": PAIRS[0][0], "head": PAIRS[0][1], "tail": PAIRS[0][2]}),
    ):
        answers = []
        for pipe in (torch_pipe, onnx_pipe):
            text = pipe.encode_text(**kwargs)
            on = pipe.activation(text, "always")
            screened = pipe.screen(images)
            chosen = pipe.select(text, on, screened)
            wanted = sorted({i for sel in chosen for i in sel})
            arrived = wanted[:-1] if n_images == 5 else wanted  # the last selected image "timed out"
            details = dict(zip(arrived, pipe.detail([images[i] for i in arrived]), strict=True))
            answers.append((chosen, pipe.fuse(text, on, chosen, details, dict(enumerate(screened)))))
        (chosen_t, a), (chosen_o, b) = answers
        # the same images per unit; the order of two picks whose gains tie to ~1e-7 may differ between
        # backends (their unit vectors agree to ~1e-6), and fuse pools a set, so only the set is compared
        assert [sorted(s) for s in chosen_t] == [sorted(s) for s in chosen_o]
        if isinstance(a, MnerResult):
            assert_same_entities(a, b)
        else:
            assert isinstance(b, MreResult)
            assert (a.relation, a.activated, a.images) == (b.relation, b.activated, b.images)
            assert [s for _, s in a.top] == pytest.approx([s for _, s in b.top], abs=ATOL)


@pytest.fixture
def saved_mner(encoder: TextEncoder, wake: Callable[[EnergyHead], None], tmp_path: Path) -> Iterator[Path]:
    torch.manual_seed(1)
    model = MnerModel(SaverConfig(), encoder=copy.deepcopy(encoder)).eval()
    randomise(model, wake)
    save_artifacts(model, tmp_path / "art", ArtifactInfo(name="saved", trained=True))
    yield tmp_path / "art"


def test_bundles_in_the_artifacts_are_used_and_stale_ones_are_not(saved_mner: Path, tmp_path: Path) -> None:
    art = saved_mner
    cache = tmp_path / "cache"
    options = OnnxOptions(cache_dir=cache, threads=1)
    first = load_onnx_pipeline("mner", art, options)  # built (torch is installed here) into the cache
    assert first.bundle.path.parent == cache and first.name == "saved" and first.trained
    # what `saver export --onnx` leaves behind: the bundle (and its shared siblings) in the artifacts
    shutil.copytree(cache, art / "onnx")
    shutil.rmtree(cache)
    second = load_onnx_pipeline("mner", art, options)
    assert second.bundle.path.parent == art / "onnx" and not cache.exists()
    # a bundle recorded for other weights is never trusted
    record = json.loads((second.bundle.path / BUNDLE).read_text())
    (second.bundle.path / BUNDLE).write_text(json.dumps({**record, "key": "someone-elses-weights"}))
    third = load_onnx_pipeline("mner", art, options)
    assert third.bundle.path.parent == cache
    model, info = load_artifacts(art)
    threshold = threshold_from_calibration(info.calibration)
    assert first.threshold == second.threshold == third.threshold == threshold
    reference = TorchPipeline(model, FakeBackbone, name="t", version="0", trained=True, threshold=threshold)
    tweet = TWEETS[0]
    np.testing.assert_allclose(
        third.encode_text(text=tweet).gate, reference.encode_text(text=tweet).gate, atol=ATOL
    )
    with pytest.raises(ValueError, match="mner model, expected mre"):
        load_onnx_pipeline("mre", art, options)


def test_a_model_in_memory_finds_its_bundle_by_its_weights(
    mner_pair: tuple[TorchPipeline, OnnxPipeline],
) -> None:
    torch_pipe, onnx_pipe = mner_pair
    cache = onnx_pipe.bundle.path.parent
    model = copy.deepcopy(torch_pipe.model)
    built = onnx_pipeline(
        model,
        ArtifactInfo(name="b"),
        threshold=THRESHOLD,
        cache_dir=cache,
        threads=1,
        backbone=FakeBackbone(),
    )
    assert built.bundle.path == onnx_pipe.bundle.path  # found, not exported again
    with torch.no_grad():
        model.span_rep.width_embedding.weight.add_(1e-3)
    other = onnx_pipeline(
        model,
        ArtifactInfo(name="c"),
        threshold=THRESHOLD,
        cache_dir=cache,
        threads=1,
        backbone=FakeBackbone(),
    )
    assert other.bundle.path != onnx_pipe.bundle.path


def test_available_cpus_respects_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
