"""POST /mre end to end: argument forms, pair gate, vision and the 422s naming the argument."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.apphelpers import running_app
from tests.service.imageserver import ImageServer, start_image_server

TEXT = "Kevin Durant joins the Warriors in oakland"


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with start_image_server() as s:
        yield s


async def test_pair_of_capitalised_arguments_uses_the_image(server: ImageServer) -> None:
    body = {"text": TEXT, "head": {"start": 0, "end": 12}, "tail": {"text": "Warriors"},
            "image_urls": [server.url("/gen/rgb.jpg")]}  # fmt: skip
    async with running_app() as (client, _):
        r = await client.post("/mre", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["relation"] != "None" and out["score"] == pytest.approx(0.8)
    assert out["top"][0] == {"relation": out["relation"], "score": out["score"]}
    v = out["vision"]
    assert (v["units_total"], v["units_activated"], v["activated"], v["images"]) == (1, 1, True, [0])
    assert v["gate"] == pytest.approx(0.9) and v["images_fetched"] == 1


async def test_pair_below_the_gate_stays_text_only(server: ImageServer) -> None:
    server.reset_hits()
    body = {"text": TEXT, "head": {"text": "joins"}, "tail": {"text": "oakland"},
            "image_urls": [server.url("/gen/rgb.jpg")]}  # fmt: skip
    async with running_app() as (client, _):
        r = await client.post("/mre", json=body)
    assert r.json()["relation"] == "None"
    assert r.json()["vision"]["activated"] is False and r.json()["vision"]["units_activated"] == 0
    assert server.total_hits == 0


async def test_token_indices_with_tokens_input() -> None:
    body = {"tokens": TEXT.split(), "head": {"start": 0, "end": 2}, "tail": {"start": 4, "end": 5}}
    async with running_app() as (client, _):
        r = await client.post("/mre", json=body)
    assert r.status_code == 200 and r.json()["vision"]["gate"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("head", "tail", "field"),
    [
        ({"start": 0, "end": 500}, {"text": "Warriors"}, "head.end"),
        ({"text": "Kevin"}, {"text": "Lakers"}, "tail.text"),
        ({"text": "Warriors"}, {"text": "Warriors"}, "tail"),
        ({"start": 0, "end": 12}, {"start": 6, "end": 18}, "tail"),
        ({"start": 5, "end": 5}, {"text": "Warriors"}, "head"),
        ({"text": "Kevin", "start": 0, "end": 5}, {"text": "Warriors"}, "head"),
    ],
)
async def test_bad_arguments_are_422_naming_the_field(
    head: dict[str, object], tail: dict[str, object], field: str
) -> None:
    async with running_app() as (client, _):
        r = await client.post("/mre", json={"text": TEXT, "head": head, "tail": tail})
    assert r.status_code == 422
    assert field in [d["field"] for d in r.json()["error"]["details"]]
