"""The ONNX backend serves the shipped artifacts without torch: ``saver serve`` runs with torch and
transformers made unimportable (bench/torch_blocker), from graphs exported ahead of time, and
answers ``/mner`` (text only, and with vision forced on a real JPEG from a local image server) and ``/mre``
as the torch backend does, within 1e-4. Without the graphs it stays not-ready and names the command."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.service_process import ServiceProcess, start_service
from model.image_decode import bounded_upright_rgb
from model.loading import load_pipeline
from model.onnx_stages import build_artifact_bundle
from model.pipeline import MnerResult, MreResult, SaverPipeline, Task, TextRequest, VisionMode
from model.runner import run_pipeline
from tests.service.imageserver import ImageServer, start_image_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS: dict[Task, Path] = {"mner": REPO / "artifacts/mner", "mre": REPO / "artifacts/mre"}
BLOCKER = REPO / "bench" / "torch_blocker"
GRAPHS = REPO / ".cache/onnx"  # the default cache: `make serve` and the shipped-artifacts test share it
ATOL = 1e-4
MNER_POSTS = [
    "Barack Obama spoke in Chicago on Monday",
    "RT @nytimes : Taylor Swift performs in London tonight 🎤 https://t.co/x",
]
MRE_TEXT, MRE_HEAD, MRE_TAIL = "Barack Obama and Michelle Obama visited Chicago", (0, 2), (3, 5)


def _env(graphs: Path, blocked_log: Path) -> dict[str, str]:
    path = os.pathsep.join([str(BLOCKER), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {
        "SAVER_BACKEND": "onnx",
        "SAVER_MNER_ARTIFACTS": str(ARTIFACTS["mner"]),
        "SAVER_MRE_ARTIFACTS": str(ARTIFACTS["mre"]),
        "SAVER_ONNX_CACHE_DIR": str(graphs),
        "SAVER_WORKERS": "1",
        "SAVER_TORCH_THREADS": "2",  # as compose and the k8s deployment set it: ignored, never imports torch
        "SAVER_FAKE_MODEL": "false",
        "PYTHONPATH": path,
        "SAVER_BLOCKED_IMPORTS": str(blocked_log),
    }


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Path]]:
    for task, directory in ARTIFACTS.items():  # what `saver export-graphs --out .cache/onnx` does
        assert build_artifact_bundle(directory, GRAPHS).task == task
    work = tmp_path_factory.mktemp("lean")
    blocked = work / "blocked-imports.txt"
    try:
        proc = start_service(_env(GRAPHS, blocked), work / "serve.log", ready_timeout_s=300)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(
            f"the torch-free worker did not become ready: {exc}\n{(work / 'serve.log').read_text()[-4000:]}"
        )
    yield proc, blocked
    proc.stop()


@pytest.fixture(scope="module")
def reference() -> dict[str, SaverPipeline]:
    return {task: load_pipeline(path, task, backend="torch") for task, path in ARTIFACTS.items()}


def _decoded(images: ImageServer, path: str) -> Image.Image:
    """The photo as the service decodes what it fetched."""
    with Image.open(io.BytesIO(images.images[path.removeprefix("/img/")])) as opened:
        return bounded_upright_rgb(opened)


def _post(service: ServiceProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(service.base_url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _same_mner(got: dict[str, Any], want: MnerResult) -> None:
    assert [
        (e["start"], e["end"], e["type"], e["vision"]["activated"], e["vision"]["images"])
        for e in got["entities"]
    ] == [(e.start, e.end, e.type, e.activated, e.images) for e in want.entities]
    assert [e["score"] for e in got["entities"]] == pytest.approx([e.score for e in want.entities], abs=ATOL)
    assert [e["vision"]["gate"] for e in got["entities"]] == pytest.approx(
        [e.gate for e in want.entities], abs=ATOL
    )


@pytest.mark.parametrize("text", MNER_POSTS)
def test_text_only_mner_equals_torch(
    lean: tuple[ServiceProcess, Path], reference: dict[str, SaverPipeline], text: str
) -> None:
    got = _post(lean[0], "/mner", {"text": text, "options": {"vision": "never"}})
    want = run_pipeline(reference["mner"], TextRequest(text=text), [], "never").result
    assert isinstance(want, MnerResult) and want.entities
    _same_mner(got, want)


def test_forced_vision_on_a_real_jpeg_equals_torch(
    lean: tuple[ServiceProcess, Path], reference: dict[str, SaverPipeline], images: ImageServer
) -> None:
    path = images.image_paths[0]
    text = MNER_POSTS[0]
    got = _post(
        lean[0], "/mner", {"text": text, "image_urls": [images.url(path)], "options": {"vision": "always"}}
    )
    assert got["vision"]["images_fetched"] == 1 and got["vision"]["fallback"] is None
    photo = _decoded(images, path)
    want = run_pipeline(reference["mner"], TextRequest(text=text), [photo], "always").result
    assert isinstance(want, MnerResult) and any(e.activated and e.images == [0] for e in want.entities)
    _same_mner(got, want)


@pytest.mark.parametrize("vision", ["never", "always"])
def test_mre_equals_torch(
    lean: tuple[ServiceProcess, Path],
    reference: dict[str, SaverPipeline],
    images: ImageServer,
    vision: VisionMode,
) -> None:
    path = images.image_paths[0]
    text, (hs, he), (ts, te) = MRE_TEXT, MRE_HEAD, MRE_TAIL
    words = text.split()
    char = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words) + 1)]
    body = {
        "text": text,
        "head": {"start": char[hs], "end": char[he] - 1},
        "tail": {"start": char[ts], "end": char[te] - 1},
        "image_urls": [images.url(path)],
        "options": {"vision": vision},
    }
    got = _post(lean[0], "/mre", body)
    photo = _decoded(images, path)
    want = run_pipeline(
        reference["mre"], TextRequest(text=text, head=(hs, he), tail=(ts, te)), [photo], vision
    ).result  # type: ignore[arg-type]
    assert isinstance(want, MreResult)
    assert (got["relation"], got["vision"]["activated"]) == (want.relation, want.activated)
    assert [t["relation"] for t in got["top"]] == [r for r, _ in want.top]
    assert [t["score"] for t in got["top"]] == pytest.approx([s for _, s in want.top], abs=ATOL)


def test_the_worker_never_tried_to_import_torch(lean: tuple[ServiceProcess, Path]) -> None:
    service, blocked = lean
    assert httpx.get(service.base_url + "/readyz", timeout=10).status_code == 200
    attempts = blocked.read_text().split() if blocked.exists() else []
    assert not [m for m in attempts if m.partition(".")[0] in {"torch", "transformers"}], attempts


def test_without_graphs_and_torch_it_stays_not_ready_and_names_the_command(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = _env(tmp_path / "no-graphs", tmp_path / "blocked.txt")
    try:
        proc = start_service(env, log, ready_timeout_s=10)
    except (RuntimeError, TimeoutError):
        pass  # not ready, as it must be
    else:
        proc.stop()
        pytest.fail("a worker without graphs and without torch became ready")
    assert "saver export-graphs" in log.read_text()
