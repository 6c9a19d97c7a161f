"""Real images in training and your own backbones, end to end on generated JPEGs.

train (the image channel on, features from the feature cache) -> calibrate --images -> export -> the
service answers with vision; with the default EfficientNet-Lite0 and with a user's own Hugging Face
text encoder (tiny BERT) and vision tower (tiny CLIP), torch and ONNX.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from model.vision import build_backbone
from saver.cli import main as saver_main
from tests.service.apphelpers import app_settings, running_app
from tests.service.imageserver import start_image_server
from tests.training.conftest import Tiny
from tests.training.tiny import tiny_config
from training.feature_cache import FeatureCache, backbone_key
from training.workflow import Launch, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cache(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVER_CACHE_DIR", str(tiny.cache))


def test_feature_cache_encodes_each_image_once_per_backbone(tiny: Tiny, tmp_path: Path) -> None:
    files = sorted(tiny.images.glob("posts/*.jpg"))
    clip = build_backbone(f"hf:{tiny.clip}")
    first = FeatureCache(clip, tmp_path)
    t0 = time.perf_counter()
    features = first.features(files)
    encode = time.perf_counter() - t0
    again = FeatureCache(build_backbone(f"hf:{tiny.clip}"), tmp_path)
    t0 = time.perf_counter()
    cached = again.features(files + files[:2])  # repeats are read, never re-encoded
    read = time.perf_counter() - t0
    print(f"feature cache, {len(files)} images: encode {encode:.2f} s, read back {read:.3f} s")
    assert first.encoded == len(files) and again.encoded == 0
    for a, b in zip(features, cached, strict=False):
        assert a is not None and b is not None
        assert (a.regions == b.regions).all() and (a.screen == b.screen).all()
    # the same features as serving computes for the image
    from training.data import ImageStore

    detail = clip.detail([ImageStore().load(str(files[0]))])  # type: ignore[list-item]
    assert features[0] is not None and (detail.regions[0] - features[0].regions).abs().max() < 1e-6
    # another backbone never reads these features
    other = build_backbone("efficientnet-lite0")
    assert backbone_key(other) != backbone_key(clip)
    assert FeatureCache(other, tmp_path).dir != first.dir


async def _served(artifact: Path, image_root: Path, backend: str) -> list[dict[str, Any]]:
    posts = [
        ["Anna", "at", "the", "game", "in", "Berlin"],
        ["Kevin", "with", "friends", "today"],
    ]
    answers = []
    with start_image_server(image_root) as server:
        urls = [server.url(p) for p in server.image_paths[:2]]
        settings = app_settings(mner_artifacts=artifact, backend=backend)
        async with running_app(settings, load_models=True) as (client, _):
            models = (await client.get("/v1/models")).json()
            assert "image" in json.dumps(models)
            for tokens in posts:
                body = {"tokens": tokens, "image_urls": urls, "options": {"vision": "always"}}
                r = await client.post("/mner", json=body)
                assert r.status_code == 200, r.text
                answers.append(r.json())
    for got in answers:
        vision = got["vision"]
        assert vision["fallback"] is None and vision["units_activated"] > 0
        assert vision["images_selected"] > 0
    return answers


async def test_real_images_train_calibrate_export_serve(tiny: Tiny, tmp_path: Path) -> None:
    # the default backbone (EfficientNet-Lite0 with ImageNet tags) and the tiny text encoder
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tiny.manifest, tiny.images, tiny.bert, epochs=1)))
    run = tmp_path / "run"
    saver_main(["train", "--config", str(config), "--out", str(run), "--device", "cpu"])
    artifact = run / "artifact"
    saver_main(
        [
            "calibrate",
            "--artifacts",
            str(artifact),
            "--data",
            str(tiny.manifest),
            "--images",
            str(tiny.images),
        ]
    )
    record = json.loads((artifact / "calibration.json").read_text())
    assert record["data"] == str(tiny.manifest)
    exported = tmp_path / "exported"
    saver_main(["export", "--run", str(run), "--out", str(exported)])
    config_json = json.loads((exported / "config.json").read_text())
    assert "image" in config_json["model"]["evidence_channels"]  # switched on by the manifest's images
    assert config_json["backbones"]["vision"]["name"] == "efficientnet-lite0"
    assert config_json["backbones"]["vision"]["sha256"]
    metrics = json.loads((exported / "metrics.json").read_text())
    assert metrics["image_evidence"]["posts"] == 16
    await _served(exported, tiny.images, "torch")


async def test_own_backbones_end_to_end_torch_and_onnx(tiny: Tiny, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    own = tiny_config(tiny.manifest, tiny.images, tiny.bert, f"hf:{tiny.clip}", 32, epochs=1)
    config.write_text(json.dumps(own))
    run, exported = tmp_path / "run", tmp_path / "exported"
    train(config, run, launch=Launch(device="cpu"))
    saver_main(["export", "--run", str(run), "--out", str(exported), "--onnx"])
    assert (exported / "onnx").is_dir()
    backbones = json.loads((exported / "config.json").read_text())["backbones"]
    assert (
        backbones["text"]["spec"] == str(tiny.bert)
        and backbones["vision"]["model_type"] == "clip_vision_model"
    )
    by_torch = await _served(exported, tiny.images, "torch")
    by_onnx = await _served(exported, tiny.images, "onnx")
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert [(e["token_start"], e["token_end"], e["type"]) for e in a["entities"]] == [
            (e["token_start"], e["token_end"], e["type"]) for e in b["entities"]
        ]
        for x, y in zip(a["entities"], b["entities"], strict=True):
            assert x["score"] == pytest.approx(y["score"], abs=1e-3)
