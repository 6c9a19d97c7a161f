"""End to end through the training package on tiny hand-written fixtures: train -> fit gate -> calibrate ->
check -> evaluate -> export.

These use the real MiniLM encoder (no network) and two optimisation steps; they check the contracts (run folder,
artifact directory, the SPEC §5 JSON keys), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saver.cli import main as saver_main
from training.splits import SplitSpec, split_datasets, split_posts
from training.trainer import TrainConfig, schedule_at
from training.workflow import train

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
SPLIT = {"selection": 0.34, "calibration": 0.33, "check": 0.33, "seed": 3}
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
            "split": SPLIT,
        }
        model = {"task": "mner", "labels": ["PER", "LOC", "ORG", "MISC"], "d_model": 32, "lora_rank": 2}
    else:
        data = {
            "train": [str(FIXTURES / "mnre_sample.txt")],
            "dev": [str(FIXTURES / "mnre_sample.txt")],
            "captions": [str(FIXTURES / "captions_sample.txt")],
            "evidence_style": "caption",
            "split": SPLIT,
        }
        labels = json.loads((FIXTURES / "rel2id_sample.json").read_text())
        model = {"task": "mre", "labels": sorted(labels, key=labels.get), "d_model": 32, "lora_rank": 2}
    path = tmp_path / f"{task}.json"
    config = {"model": model, "train": {"epochs": 2, "batch_size": 2}, "data": data}
    config["calibration"] = {"method": "fixed_sequence", "alpha": 0.1, "delta": 0.05}
    if task == "mner":
        config["gate_fit"] = {"enabled": True, "targets": ["groundability", "utility"], "epochs": 2}
    path.write_text(json.dumps(config))
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
    # the record says which posts it was computed on, by what rule, and which evidence
    sample = "fixtures/umt_sample" if task == "mner" else "fixtures/mnre_sample"
    assert set(calibration["split"]["parts"][sample]) == {"selection", "calibration", "check"}
    assert {"eligibility", "evidence", "scan_start_tau", "test_level"} <= calibration.keys()
    assert set(metrics["dev"]) >= {"never", "auto", "always", "train_seconds"}
    assert "pooled" in metrics["check"] and "harm_rate" in metrics["check"]["pooled"]
    if task == "mner":
        assert metrics["gate_fit"]["chosen"] in {"groundability", "utility"}

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
            "bonferroni",
        ]
    )
    record = json.loads((artifact / "calibration.json").read_text())
    assert record["alpha"] == 0.2 and record["method"] == "bonferroni"
    assert 0.0 <= record["unit_activation_rate"] <= 1.0
    assert record["data"] == str(FIXTURES / "umt_sample.txt")


def test_gate_schedule_warms_up_then_anneals_the_floor() -> None:
    cfg = TrainConfig(forced_vision_epochs=0.5, floor_anneal_epochs=1.0)
    assert schedule_at(cfg, 0.1).forced
    floors = [schedule_at(cfg, t).floor for t in (0.5, 0.75, 1.0, 1.25, 1.5, 3.0)]
    assert not schedule_at(cfg, 0.6).forced
    assert floors == sorted(floors, reverse=True) and floors[0] == 1.0 and floors[-1] == 0.0


class _Post:
    def __init__(self, i: int, post: str | None = None) -> None:
        self.id = f"p{i}"
        self.post_key = post or self.id


def test_dev_split_is_deterministic_disjoint_and_complete() -> None:
    posts = [_Post(i) for i in range(101)]
    spec = SplitSpec(0.4, 0.3, 0.3, seed=7)
    a, b = split_posts(posts, spec, "d"), split_posts(posts, spec, "d")
    assert a == b
    ids = [{p.id for p in a[part]} for part in ("selection", "calibration", "check")]
    assert [len(x) for x in ids] == [40, 30, 31]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {p.id for p in posts}
    # each dataset is cut on its own: adding a second dataset does not move the first one's posts
    both = split_datasets({"d": posts, "e": [_Post(i) for i in range(200, 250)]}, spec)
    assert both["d"] == a
    with pytest.raises(ValueError):
        SplitSpec(0.5, 0.5, 0.5)


def test_examples_of_one_post_stay_in_one_part() -> None:
    # MRE: several marked pairs share one image and sentence; no post may straddle two parts
    pairs = [_Post(i, post=f"img{i // 3}") for i in range(90)]
    parts = split_posts(pairs, SplitSpec(0.4, 0.3, 0.3, seed=1), "mre")
    where = {p.post_key: name for name, members in parts.items() for p in members}
    for name, members in parts.items():
        assert all(where[p.post_key] == name for p in members)
    assert sum(len(m) for m in parts.values()) == 90
    assert [len({p.post_key for p in parts[n]}) for n in ("selection", "calibration", "check")] == [12, 9, 9]
