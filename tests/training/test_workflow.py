"""End to end through the training package on tiny hand-written fixtures: train -> calibrate -> evaluate -> export.

These use the real MiniLM encoder (no network) and two optimisation steps; they check the contracts (run folder,
artifact directory, the SPEC §5 JSON keys), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saver.cli import main as saver_main
from training.trainer import TrainConfig, schedule_at
from training.workflow import split_for_calibration, train

FIXTURES = Path(__file__).parent / "fixtures"
SPEC_KEYS = {
    "task",
    "n_examples",
    "precision",
    "recall",
    "f1",
    "per_label",
    "aurc",
    "coverage_at_risk",
    "gate",
    "seconds",
}
GATE_KEYS = {
    "threshold",
    "activation_rate",
    "harm_rate_activated",
    "auroc_groundability",
    "requests_activated",
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(tmp_path: Path, task: str) -> Path:
    if task == "mner":
        data = {
            "train": [str(FIXTURES / "umt_sample.txt")],
            "dev": [str(FIXTURES / "umt_sample.txt")],
            "captions": [str(FIXTURES / "captions_sample.txt")],
            "groundability": str(FIXTURES / "groundability_sample.jsonl"),
            "evidence_style": "pseudo_tags",
            "calibration_fraction": 1.0,
        }
        model = {"task": "mner", "labels": ["PER", "LOC", "ORG", "MISC"], "d_model": 32, "lora_rank": 2}
    else:
        data = {
            "train": [str(FIXTURES / "mnre_sample.txt")],
            "dev": [str(FIXTURES / "mnre_sample.txt")],
            "captions": [str(FIXTURES / "captions_sample.txt")],
            "evidence_style": "caption",
            "calibration_fraction": 1.0,
        }
        labels = json.loads((FIXTURES / "rel2id_sample.json").read_text())
        model = {"task": "mre", "labels": sorted(labels, key=labels.get), "d_model": 32, "lora_rank": 2}
    path = tmp_path / f"{task}.json"
    path.write_text(json.dumps({"model": model, "train": {"epochs": 2, "batch_size": 2}, "data": data}))
    return path


@pytest.mark.parametrize("task", ["mner", "mre"])
def test_train_writes_run_folder_and_artifact(tmp_path: Path, task: str) -> None:
    metrics = train(_config(tmp_path, task), tmp_path / "run", {"max_steps": 2})
    run = tmp_path / "run"
    for name in ("command.txt", "train_config.json", "model_config.json", "train.log", "metrics.json"):
        assert (run / name).is_file(), name
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history][:1] == [1]
    artifact = run / "artifact"
    for name in ("config.json", "labels.json", "weights.safetensors", "calibration.json", "metrics.json"):
        assert (artifact / name).is_file(), name
    calibration = json.loads((artifact / "calibration.json").read_text())
    assert {
        "method",
        "alpha",
        "delta",
        "n",
        "tau",
        "coverage",
        "empirical_risk",
        "bound",
    } <= calibration.keys()
    assert set(metrics) >= {"never", "auto", "always", "train_seconds"}

    saver_main(["export", "--run", str(run), "--out", str(tmp_path / "exported")])
    card = (tmp_path / "exported" / "MODEL_CARD.md").read_text()
    assert "How vision was seen in training" in card and "calibration" in card.lower()

    data = FIXTURES / ("umt_sample.txt" if task == "mner" else "mnre_sample.txt")
    for mode in ("never", "auto", "always"):
        out = tmp_path / f"eval-{mode}.json"
        args = ["evaluate", task, "--artifacts", str(tmp_path / "exported"), "--data", str(data)]
        args += ["--captions", str(FIXTURES / "captions_sample.txt"), "--vision", mode, "--out", str(out)]
        saver_main(args)
        report = json.loads(out.read_text())
        assert report.keys() >= SPEC_KEYS
        assert report["gate"].keys() >= GATE_KEYS
        assert report["task"] == task and 0.0 <= report["f1"] <= 100.0
        if mode == "never":
            assert report["gate"]["activation_rate"] == 0.0
            assert report["gate"]["requests_activated"] == 0.0


def test_calibrate_command_rewrites_calibration(tmp_path: Path) -> None:
    train(_config(tmp_path, "mner"), tmp_path / "run", {"max_steps": 1, "epochs": 1})
    artifact = tmp_path / "run" / "artifact"
    args = ["calibrate", "--artifacts", str(artifact), "--data", str(FIXTURES / "umt_sample.txt")]
    saver_main(
        [
            *args,
            "--captions",
            str(FIXTURES / "captions_sample.txt"),
            "--alpha",
            "0.2",
            "--method",
            "fixed_sequence",
        ]
    )
    record = json.loads((artifact / "calibration.json").read_text())
    assert record["alpha"] == 0.2 and record["method"] == "fixed_sequence"
    assert 0.0 <= record["unit_activation_rate"] <= 1.0


def test_gate_schedule_warms_up_then_anneals_the_floor() -> None:
    cfg = TrainConfig(forced_vision_epochs=0.5, floor_anneal_epochs=1.0)
    assert schedule_at(cfg, 0.1).forced
    floors = [schedule_at(cfg, t).floor for t in (0.5, 0.75, 1.0, 1.25, 1.5, 3.0)]
    assert not schedule_at(cfg, 0.6).forced
    assert floors == sorted(floors, reverse=True) and floors[0] == 1.0 and floors[-1] == 0.0


def test_calibration_split_is_deterministic_and_disjoint() -> None:
    items = list(range(100))
    a1, b1 = split_for_calibration(items, 0.3, seed=7)  # type: ignore[arg-type]
    a2, b2 = split_for_calibration(items, 0.3, seed=7)  # type: ignore[arg-type]
    assert a1 == a2 and b1 == b2 and len(a1) == 30
    assert not set(a1) & set(b1) and sorted(a1 + b1) == items
