"""The committed default artifacts, as users get them: loaded, and served by a real ``saver serve``.

The service runs as its own process on the ONNX backend (the default), with the artifacts in
``artifacts/`` and nothing else; a local image server hands it a real JPEG over a real socket.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.service_process import ServiceProcess, start_service
from model.artifacts import load_artifacts, threshold_from_calibration
from tests.service.imageserver import ImageServer, start_image_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = {"mner": REPO / "artifacts/mner", "mre": REPO / "artifacts/mre"}  # what `make serve` loads

# Posts whose entities a trained tagger must find: plain names in plain contexts.
EASY_POSTS = [
    ("Barack Obama spoke in Chicago on Monday", {("Barack Obama", "PER"), ("Chicago", "LOC")}),
    ("RT @nytimes : Taylor Swift performs in London tonight", {("Taylor Swift", "PER"), ("London", "LOC")}),
]


def _tau(task: str) -> float:
    record = json.loads((ARTIFACTS[task] / "calibration.json").read_text())
    return threshold_from_calibration(record)


@pytest.mark.parametrize("task", ["mner", "mre"])
def test_committed_artifacts_load_trained_and_calibrated(task: str) -> None:
    model, info = load_artifacts(ARTIFACTS[task])
    assert info.trained and model.cfg.task == task
    record = info.calibration
    # the certificate's record says what it was computed on
    assert {"method", "alpha", "delta", "n", "split", "eligibility", "evidence"} <= record.keys()
    parts = record["split"]["parts"]
    assert parts and all({"selection", "calibration", "check"} <= p.keys() for p in parts.values())
    assert "check" in info.metrics and "pooled" in info.metrics["check"]
    size = sum(f.stat().st_size for f in ARTIFACTS[task].rglob("*") if f.is_file())
    assert size < 12_500_000  # both directories together stay under the 25 MB budget


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("shipped") / "serve.log"
    env = {
        "SAVER_BACKEND": "onnx",
        "SAVER_MNER_ARTIFACTS": str(ARTIFACTS["mner"]),
        "SAVER_MRE_ARTIFACTS": str(ARTIFACTS["mre"]),
        "SAVER_WORKERS": "1",
    }
    env_clear = {"SAVER_FAKE_MODEL": "false"}
    try:
        proc = start_service({**env, **env_clear}, log, ready_timeout_s=600)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"saver serve did not become ready: {exc}\n{log.read_text()[-4000:]}")
    yield proc
    proc.stop()


def _post(service: ServiceProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(service.base_url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_models_endpoint_reports_the_shipped_calibration(service: ServiceProcess) -> None:
    models = httpx.get(service.base_url + "/v1/models", timeout=10).json()
    by_task = {m["task"]: m for m in models["models"]}
    for task in ("mner", "mre"):
        m = by_task[task]
        assert m["trained"] is True
        tau = _tau(task)
        assert m["threshold"] == (None if math.isinf(tau) else pytest.approx(tau))


@pytest.mark.parametrize(("text", "expected"), EASY_POSTS)
def test_easy_posts_get_their_entities(service: ServiceProcess, text: str, expected: set) -> None:  # type: ignore[type-arg]
    out = _post(service, "/mner", {"text": text, "options": {"vision": "never"}})
    assert out["model"]["trained"] is True
    found = {(e["text"], e["type"]) for e in out["entities"]}
    assert expected <= found, found
    for e in out["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]
    assert out["vision"]["images_fetched"] == 0


def test_forced_vision_fetches_a_real_jpeg(service: ServiceProcess, images: ImageServer) -> None:
    url = images.url(images.image_paths[0])
    images.reset_hits()
    text = EASY_POSTS[0][0]
    out = _post(service, "/mner", {"text": text, "image_urls": [url], "options": {"vision": "always"}})
    assert out["vision"]["images_fetched"] == 1 and out["vision"]["fallback"] is None
    assert images.total_hits == 1
    assert any(e["vision"]["activated"] and e["vision"]["images"] == [0] for e in out["entities"])
    text_only = _post(service, "/mner", {"text": text, "image_urls": [url], "options": {"vision": "never"}})
    assert text_only["vision"]["images_fetched"] == 0 and images.total_hits == 1
    for e in out["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]


def test_auto_follows_the_calibrated_gate(service: ServiceProcess, images: ImageServer) -> None:
    url = images.url(images.image_paths[0])
    text = EASY_POSTS[1][0]
    out = _post(service, "/mner", {"text": text, "image_urls": [url], "options": {"vision": "auto"}})
    tau = _tau("mner")
    for e in out["entities"]:
        assert e["vision"]["activated"] == (not math.isinf(tau) and e["vision"]["gate"] >= tau)


def test_mre_answers_with_its_labels(service: ServiceProcess) -> None:
    labels = json.loads((ARTIFACTS["mre"] / "labels.json").read_text())
    body = {
        "text": "Barack Obama and Michelle Obama visited Chicago",
        "head": {"start": 0, "end": 12},
        "tail": {"start": 17, "end": 31},
    }
    out = _post(service, "/mre", body)
    assert out["relation"] in labels and out["model"]["trained"] is True
    assert 0.0 <= out["score"] <= 1.0


def test_metrics_name_the_trained_models(service: ServiceProcess) -> None:
    text = httpx.get(service.base_url + "/metrics", timeout=10).text
    assert "saver_model_info{" in text and 'trained="true"' in text


def _same_entities(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(e["text"], e["type"], e["start"], e["end"]) for e in got] == [
        (e["text"], e["type"], e["start"], e["end"]) for e in want
    ]
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        assert g["vision"]["gate"] == pytest.approx(w["vision"]["gate"], abs=1e-5)
        assert (g["vision"]["activated"], g["vision"]["images"]) == (
            w["vision"]["activated"],
            w["vision"]["images"],
        )


def test_batch_answers_equal_single_answers(service: ServiceProcess, images: ImageServer) -> None:
    url = images.url(images.image_paths[0])
    items = [
        {"text": EASY_POSTS[0][0], "image_urls": [url], "options": {"vision": "always"}},  # a real JPEG
        {"text": EASY_POSTS[1][0]},
        {"text": "Manchester United beat Arsenal at Old Trafford as Ronaldo scored twice in the second half"},
        {"tokens": ["Paris", "Hilton", "in", "Paris"]},
        {"text": "   "},  # fails alone
    ]
    batch = _post(service, "/v1/mner:batch", {"items": items})["items"]
    assert [it["status"] for it in batch] == [200, 200, 200, 200, 422]
    assert batch[0]["result"]["vision"]["fallback"] is None
    assert any(e["vision"]["activated"] for e in batch[0]["result"]["entities"])
    for item, body in zip(batch[:4], items[:4], strict=True):
        _same_entities(item["result"]["entities"], _post(service, "/mner", body)["entities"])

    pairs = [
        {"text": "Barack Obama and Michelle Obama visited Chicago", "head": {"start": 0, "end": 12},
         "tail": {"start": 17, "end": 31}},
        {"text": "Kevin Durant joins the Warriors in Oakland", "head": {"text": "Warriors"},
         "tail": {"text": "Oakland"}, "image_urls": [url], "options": {"vision": "always"}},
    ]  # fmt: skip
    answers = _post(service, "/v1/mre:batch", {"items": pairs})["items"]
    for item, body in zip(answers, pairs, strict=True):
        single = _post(service, "/mre", body)
        assert item["status"] == 200 and item["result"]["relation"] == single["relation"]
        assert [t["relation"] for t in item["result"]["top"]] == [t["relation"] for t in single["top"]]
        for a, b in zip(item["result"]["top"], single["top"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert item["result"]["vision"]["activated"] == single["vision"]["activated"]
