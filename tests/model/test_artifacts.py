"""Artifacts: a save/load round trip reproduces the model; bad directories fail loudly; the weights are small."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from model.artifacts import (
    WEIGHTS,
    ArtifactError,
    ArtifactInfo,
    load_artifacts,
    save_artifacts,
    threshold_from_calibration,
)
from model.base import SaverBase
from model.config import SaverConfig
from model.evidence import PostEvidence
from model.loading import MNRE_RELATIONS, load_pipeline
from model.lora import LoRALinear
from model.mner import MnerBatch, MnerModel
from model.mre import MreBatch, MreModel
from model.text_encoder import TextEncoder

WORDS = [["Kevin", "Durant", "joins", "the", "Warriors"], ["Paris", "at", "night", "😀"]]
GEN = torch.Generator().manual_seed(0)
EVIDENCE: list[PostEvidence | None] = [
    PostEvidence(text=torch.randn(2, 384, generator=GEN), image=torch.randn(2, 1280, generator=GEN)),
    None,
]
# fp16 storage moves every weight by up to 2^-11 relative; through the whole network (with the deliberately
# large random vision weights used here) that is up to ~2e-3 on a probability. The exact test below shows
# rounding is the only loss.
PROB_TOLERANCE = 5e-3


def as_trained(model: SaverBase) -> SaverBase:
    """Give the zero-initialised parts (LoRA B, vision output layer) weights, so the round trip is tested on them."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.02)
        last = model.head.vision[-1]
        assert isinstance(last, torch.nn.Linear)
        last.weight.normal_()
        last.bias.normal_()
    return model.eval()


def predict(model: SaverBase) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, MnerModel):
            out: Any = model(MnerBatch(WORDS, list(EVIDENCE)), mode="always")[0]
        else:
            assert isinstance(model, MreModel)
            batch = MreBatch(WORDS, [(0, 2), (0, 1)], [(3, 5), (2, 3)], list(EVIDENCE))
            out = model(batch, mode="always")[0]
    return out.probs


@pytest.fixture
def second_encoder(encoder: TextEncoder) -> TextEncoder:
    return copy.deepcopy(encoder)


def build(task: str, encoder: TextEncoder) -> SaverBase:
    torch.manual_seed(0)
    if task == "mner":
        return as_trained(MnerModel(SaverConfig(), encoder=encoder))
    return as_trained(MreModel(SaverConfig(task="mre", labels=list(MNRE_RELATIONS)), encoder=encoder))


@pytest.mark.parametrize("task", ["mner", "mre"])
def test_round_trip_reproduces_the_outputs(
    task: str, fresh_encoder: TextEncoder, second_encoder: TextEncoder, tmp_path: Path
) -> None:
    model = build(task, fresh_encoder)
    expected = predict(model)
    info = ArtifactInfo(
        name="saver-test", version="1.2.3", trained=True, calibration={"tau": 0.7}, metrics={"f1": 50.0}
    )
    save_artifacts(model, tmp_path, info)
    loaded, loaded_info = load_artifacts(tmp_path, encoder=second_encoder)
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    assert not loaded.training
    torch.testing.assert_close(predict(loaded), expected, atol=PROB_TOLERANCE, rtol=0)
    assert (loaded_info.name, loaded_info.version, loaded_info.trained) == ("saver-test", "1.2.3", True)
    assert threshold_from_calibration(loaded_info.calibration) == 0.7
    assert loaded_info.metrics == {"f1": 50.0}
    assert json.loads((tmp_path / "labels.json").read_text()) == model.cfg.labels


def test_round_trip_is_exact_for_fp16_representable_weights(
    fresh_encoder: TextEncoder, second_encoder: TextEncoder, tmp_path: Path
) -> None:
    model = build("mner", fresh_encoder)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(p.half().float())
    expected = predict(model)
    save_artifacts(model, tmp_path, ArtifactInfo())
    loaded, _ = load_artifacts(tmp_path, encoder=second_encoder)
    assert torch.equal(predict(loaded), expected)


def test_stored_weights_exclude_the_frozen_encoder(encoder: TextEncoder, tmp_path: Path) -> None:
    model = MnerModel(SaverConfig(), encoder=encoder)
    save_artifacts(model, tmp_path, ArtifactInfo())
    size = (tmp_path / WEIGHTS).stat().st_size
    assert size < 25 * 2**20
    stored = load_file(str(tmp_path / WEIGHTS))
    bert = sum(p.numel() for p in encoder.bert.parameters() if not p.requires_grad)
    assert sum(t.numel() for t in stored.values()) < bert / 2
    encoder_keys = [k for k in stored if k.startswith("encoder.bert.")]
    assert encoder_keys and all("lora_" in k for k in encoder_keys)  # only the adapters' deltas
    assert "encoder.shape_embedding.weight" in stored
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["backbones"]["text"]["sha256"] and config["model"]["task"] == "mner"


def saved(model: SaverBase, path: Path, **info: Any) -> Path:
    save_artifacts(model, path, ArtifactInfo(**info))
    return path


@pytest.fixture(scope="module")
def plain_model(encoder: TextEncoder) -> MnerModel:
    return MnerModel(SaverConfig(), encoder=encoder)


def test_missing_directory_or_config_raises(
    plain_model: MnerModel, encoder: TextEncoder, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match=r"config\.json"):
        load_artifacts(tmp_path / "nowhere", encoder=encoder)
    path = saved(plain_model, tmp_path / "a")
    (path / "config.json").unlink()
    with pytest.raises(ArtifactError, match=r"config\.json"):
        load_artifacts(path, encoder=encoder)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights_raise(
    plain_model: MnerModel, encoder: TextEncoder, tmp_path: Path, damage: str
) -> None:
    path = saved(plain_model, tmp_path, trained=True)
    weights = path / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(
        {"garbage": b"\x00not a safetensors file" * 10, "truncated": data[: len(data) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(ArtifactError):
        load_artifacts(path, encoder=encoder)


def test_unreadable_config_raises(plain_model: MnerModel, encoder: TextEncoder, tmp_path: Path) -> None:
    path = saved(plain_model, tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        load_artifacts(path, encoder=encoder)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError):
        load_artifacts(path, encoder=encoder)


def test_weights_of_another_architecture_raise(
    plain_model: MnerModel, encoder: TextEncoder, tmp_path: Path
) -> None:
    path = saved(plain_model, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model"]["set_blocks"] = 2  # the stored weights have one block
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="do not match"):
        load_artifacts(path, encoder=encoder)


def test_trained_model_without_weights_raises(
    plain_model: MnerModel, encoder: TextEncoder, tmp_path: Path
) -> None:
    path = saved(plain_model, tmp_path, trained=True)
    (path / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifacts(path, encoder=encoder)


@pytest.mark.parametrize(
    ("calibration", "threshold"),
    [
        ({"tau": 0.31}, 0.31),
        ({"never_activate": True, "tau": 0.2}, math.inf),
        ({"tau": None}, math.inf),
        ({}, 0.5),  # no calibration at all: the gate's midpoint
    ],
)
def test_calibration_sets_the_threshold(
    plain_model: MnerModel,
    encoder: TextEncoder,
    tmp_path: Path,
    calibration: dict[str, Any],
    threshold: float,
) -> None:
    path = saved(plain_model, tmp_path, calibration=calibration)
    _, info = load_artifacts(path, encoder=encoder)
    assert threshold_from_calibration(info.calibration) == threshold and info.calibration == calibration
    # the pipeline built from the directory serves with that threshold
    assert load_pipeline(path, "mner", encoder=encoder).threshold == threshold
