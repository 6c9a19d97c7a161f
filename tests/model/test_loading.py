"""Building pipelines: from artifacts (task checked), or an untrained one that says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.artifacts import ArtifactError, ArtifactInfo, save_artifacts
from model.config import SaverConfig
from model.inference import TorchPipeline
from model.loading import MNRE_RELATIONS, default_config, load_pipeline, untrained_pipeline
from model.mner import MnerModel
from model.text_encoder import TextEncoder


def test_default_configs() -> None:
    assert default_config("mner").labels == ["PER", "LOC", "ORG", "MISC"]
    mre = default_config("mre")
    assert mre.task == "mre" and len(mre.labels) == 23 and mre.labels[0] == "None"
    assert len(set(MNRE_RELATIONS)) == 23


@pytest.mark.parametrize("task", ["mner", "mre"])
def test_untrained_pipeline_is_labelled(encoder: TextEncoder, task: str) -> None:
    pipe = untrained_pipeline(task, encoder=encoder)  # type: ignore[arg-type]
    assert isinstance(pipe, TorchPipeline)
    assert pipe.task == task and pipe.trained is False and "untrained" in pipe.name
    assert pipe.labels == default_config(task).labels  # type: ignore[arg-type]


def test_untrained_pipelines_are_reproducible(encoder: TextEncoder) -> None:
    a = untrained_pipeline("mner", encoder=encoder, seed=3).encode_text(text="Obama in Paris")
    b = untrained_pipeline("mner", encoder=encoder, seed=3).encode_text(text="Obama in Paris")
    assert (a.gate == b.gate).all()


def test_load_pipeline_checks_the_task(encoder: TextEncoder, tmp_path: Path) -> None:
    save_artifacts(
        MnerModel(SaverConfig(), encoder=encoder),
        tmp_path,
        ArtifactInfo(name="saver-x", version="2.0.0", trained=True),
    )
    pipe = load_pipeline(tmp_path, "mner", encoder=encoder)
    assert (pipe.name, pipe.version, pipe.trained, pipe.task) == ("saver-x", "2.0.0", True, "mner")
    with pytest.raises(ValueError, match="mner"):
        load_pipeline(tmp_path, "mre", encoder=encoder)
    with pytest.raises(ArtifactError):
        load_pipeline(tmp_path / "missing", "mner", encoder=encoder)
