"""What is measured is what is served: ``saver evaluate`` and the HTTP service give the same answers.

The same posts, with real JPEG evidence (files for evaluation, the same bytes fetched over a real socket
by the service), in ``never``, ``auto`` and ``always``: identical entities or relations, scores within
1e-4. Both read the committed default artifacts (τ set low in a copy, so that ``auto`` activates some
units and differs from both other modes).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from saver.cli import main as saver_main
from tests.service.apphelpers import app_settings, running_app
from tests.service.imageserver import ImageServer, start_image_server

REPO = Path(__file__).resolve().parents[2]
TAU = 0.3
MNER_POSTS = [
    (["Barack", "Obama", "meets", "Angela", "Merkel", "in", "Berlin"], 2),
    (["Kevin", "Durant", "scores", "40", "for", "the", "Warriors", "#NBA"], 1),
    (["RT", "@CNN", ":", "Taylor", "Swift", "sings", "at", "Wembley", "Stadium"], 3),
    (["Sunny", "day", "at", "the", "beach", "with", "Anna"], 1),
]
MRE_POSTS = [
    (["Barack", "Obama", "and", "Michelle", "Obama", "in", "Chicago"], (0, 2), (3, 5)),
    (["Kevin", "Durant", "joins", "the", "Golden", "State", "Warriors"], (0, 2), (4, 7)),
]


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 40))
        draw.ellipse((x, y, x + 40, y + 30), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("parity")
    photos = root / "img" / "posts"
    photos.mkdir(parents=True)
    names: list[str] = []
    for i in range(6):
        name = f"p{i}"
        _photo(i, (320 + 64 * i, 240 + 32 * (i % 3))).save(photos / f"{name}.jpg", quality=90)
        names.append(name)
    artifacts = {}
    for task in ("mner", "mre"):
        target = root / task
        shutil.copytree(REPO / "artifacts" / task, target, ignore=shutil.ignore_patterns("onnx"))
        record = json.loads((target / "calibration.json").read_text())
        record.update(tau=TAU, never_activate=False)
        (target / "calibration.json").write_text(json.dumps(record))
        artifacts[task] = target
    mner, cursor = [], 0
    for i, (tokens, n_images) in enumerate(MNER_POSTS):
        picked = [f"posts/{names[(cursor + k) % len(names)]}.jpg" for k in range(n_images)]
        cursor += n_images
        mner.append({"id": f"m{i}", "tokens": tokens, "images": picked, "entities": []})
    mre = [
        {"id": f"r{i}", "tokens": t, "images": [f"posts/{names[i]}.jpg"], "head": list(h), "tail": list(tl),
         "relation": "None"}
        for i, (t, h, tl) in enumerate(MRE_POSTS)
    ]  # fmt: skip
    for task, rows in (("mner", mner), ("mre", mre)):
        (root / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with start_image_server(root / "img") as server:
        yield {"root": root, "artifacts": artifacts, "posts": {"mner": mner, "mre": mre}, "server": server}


def _evaluated(setup: dict[str, Any], task: str, mode: str) -> list[dict[str, Any]]:
    root = setup["root"]
    out, pred = root / f"eval-{task}-{mode}.json", root / f"pred-{task}-{mode}.jsonl"
    saver_main(
        ["evaluate", task, "--artifacts", str(setup["artifacts"][task]), "--data", str(root / f"{task}.jsonl"),
         "--images", str(root / "img"), "--vision", mode, "--out", str(out), "--predictions", str(pred)]
    )  # fmt: skip
    return [json.loads(line) for line in pred.read_text().splitlines()]


def _url(server: ImageServer, ref: str) -> str:
    return server.url(f"/img/real_{Path(ref).stem}.jpg")


@pytest.mark.parametrize("mode", ["never", "auto", "always"])
async def test_evaluate_and_service_agree(setup: dict[str, Any], mode: str) -> None:
    server: ImageServer = setup["server"]
    expected = {task: _evaluated(setup, task, mode) for task in ("mner", "mre")}
    settings = app_settings(
        mner_artifacts=setup["artifacts"]["mner"], mre_artifacts=setup["artifacts"]["mre"], backend="torch"
    )
    activated = 0
    async with running_app(settings, load_models=True) as (client, _):
        for post, want in zip(setup["posts"]["mner"], expected["mner"], strict=True):
            body = {"tokens": post["tokens"], "image_urls": [_url(server, r) for r in post["images"]]}
            r = await client.post("/mner", json={**body, "options": {"vision": mode}})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["vision"]["fallback"] is None or got["vision"]["units_activated"] == 0
            activated += got["vision"]["units_activated"]
            served = sorted(
                (e["token_start"], e["token_end"], e["type"], e["score"]) for e in got["entities"]
            )
            measured = sorted(tuple(e) for e in want["entities"])
            assert [s[:3] for s in served] == [m[:3] for m in measured], (post["tokens"], served, measured)
            for s, m in zip(served, measured, strict=True):
                assert s[3] == pytest.approx(m[3], abs=1e-4)
        for post, want in zip(setup["posts"]["mre"], expected["mre"], strict=True):
            body = {
                "tokens": post["tokens"],
                "head": {"start": post["head"][0], "end": post["head"][1]},
                "tail": {"start": post["tail"][0], "end": post["tail"][1]},
                "image_urls": [_url(server, r) for r in post["images"]],
                "options": {"vision": mode},
            }
            r = await client.post("/mre", json=body)
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["relation"] == want["relation"]
            assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    if mode == "never":
        assert activated == 0
        return
    # the comparison covered the vision path, not only text: vision moved some scores
    assert activated > 0
    text_only = _evaluated(setup, "mner", "never")
    moved = [
        abs(a[3] - b[3])
        for want, base in zip(expected["mner"], text_only, strict=True)
        for a, b in zip(sorted(want["entities"]), sorted(base["entities"]), strict=False)
    ]
    assert max(moved, default=0.0) > 1e-4
