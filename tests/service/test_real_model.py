"""The app on the real (untrained) torch pipeline: the path the fake stands in for, with an image."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.apphelpers import running_app
from tests.service.imageserver import start_image_server

pytestmark = pytest.mark.slow


async def test_untrained_fallback_serves_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("model.loading")
    settings = Settings(
        mner_artifacts=tmp_path / "missing-mner", mre_artifacts=tmp_path / "missing-mre", allow_loopback=True
    )
    with start_image_server() as server:
        async with running_app(settings, load_models=True) as (client, _):
            mner = await client.post(
                "/mner",
                json={"text": "Kevin Durant joins the Warriors", "image_urls": [server.url("/gen/rgb.jpg")],
                      "options": {"vision": "always"}},
            )  # fmt: skip
            mre = await client.post(
                "/mre",
                json={"text": "Kevin Durant joins the Warriors", "head": {"text": "Kevin Durant"},
                      "tail": {"text": "Warriors"}, "options": {"vision": "never"}},
            )  # fmt: skip
            models = (await client.get("/v1/models")).json()["models"]
    assert mner.status_code == 200 and mre.status_code == 200
    v = mner.json()["vision"]
    assert v["units_activated"] == v["units_total"] > 0
    assert v["images_fetched"] == 1 and v["images_selected"] == 1 and v["fallback"] is None
    assert server.hits["/gen/rgb.jpg"] >= 1
    for body in (mner.json(), mre.json()):
        assert body["model"]["trained"] is False
        assert body["model"]["warning"] == "untrained: randomly initialised weights"
    assert mre.json()["vision"]["activated"] is False
    assert all(not m["trained"] for m in models)
