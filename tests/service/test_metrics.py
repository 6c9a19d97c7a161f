"""Metrics after a known sequence of requests show exactly the expected increments."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from service.metrics import LATENCY_BUCKETS
from tests.service.apphelpers import metric_value, running_app
from tests.service.imageserver import ImageServer, start_image_server


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with start_image_server() as s:
        yield s


async def test_known_sequence_gives_exact_counts(server: ImageServer) -> None:
    rgb, missing, html = (server.url(p) for p in ("/gen/rgb.jpg", "/status/404", "/gen/page.html"))
    async with running_app() as (client, _):
        before = (await client.get("/metrics")).text
        # 1. nothing groundable: 6 words -> 15 units (widths 1..3), all skipped; its image is skipped
        await client.post("/mner", json={"text": "so tired of this weather today", "image_urls": [rgb]})
        # 2. 5 words -> 12 units, 3 of them capitalised; one image fetched and selected, one fails
        await client.post(
            "/mner", json={"text": "Kevin Durant joins the warriors", "image_urls": [rgb, missing]}
        )
        # 3. activated, but the only image is an HTML page: fallback
        await client.post("/mner", json={"text": "Kevin Durant joins the warriors", "image_urls": [html]})
        # 4. invalid
        await client.post("/mner", json={"text": ""})
        # 5. MRE pair activated without images
        await client.post(
            "/mre", json={"text": "Kevin met Lisa", "head": {"text": "Kevin"}, "tail": {"text": "Lisa"}}
        )
        text = (await client.get("/metrics")).text

    assert metric_value(before, "saver_requests_total", endpoint="mner", status="200") == 0

    def m(name: str, /, **labels: str) -> float:
        return metric_value(text, name, **labels)

    assert m("saver_requests_total", endpoint="mner", status="200") == 3
    assert m("saver_requests_total", endpoint="mner", status="422") == 1
    assert m("saver_requests_total", endpoint="mre", status="200") == 1
    assert m("saver_request_duration_seconds_count", endpoint="mner") == 4
    assert m("saver_gate_requests_total", endpoint="mner", decision="skipped", mode="auto") == 1
    assert m("saver_gate_requests_total", endpoint="mner", decision="activated", mode="auto") == 2
    assert m("saver_gate_requests_total", endpoint="mre", decision="activated", mode="auto") == 1
    assert m("saver_gate_units_total", endpoint="mner", decision="skipped", mode="auto") == 15 + 9 + 9
    assert m("saver_gate_units_total", endpoint="mner", decision="activated", mode="auto") == 3 + 3
    assert m("saver_gate_units_total", endpoint="mre", decision="activated", mode="auto") == 1
    assert m("saver_images_total", endpoint="mner", outcome="skipped") == 1
    assert m("saver_images_total", endpoint="mner", outcome="fetched") == 1
    assert m("saver_images_total", endpoint="mner", outcome="selected") == 1
    assert m("saver_images_total", endpoint="mner", outcome="failed") == 2
    assert m("saver_images_total", endpoint="mner", outcome="cache_hit") == 0
    assert m("saver_vision_fallbacks_total", endpoint="mner", reason="fetch_failed:not_image") == 1
    assert m("saver_vision_fallbacks_total", endpoint="mre", reason="no_images") == 1
    assert m("saver_stage_duration_seconds_count", endpoint="mner", stage="text_encode") == 3
    assert m("saver_stage_duration_seconds_count", endpoint="mner", stage="queue") == 3
    assert m("saver_stage_duration_seconds_count", endpoint="mner", stage="fetch") == 2
    assert m("saver_stage_duration_seconds_count", endpoint="mner", stage="detail") == 1
    assert m("saver_inflight_requests") == 0
    labels = {
        "task": "mner",
        "name": "fake-mner",
        "version": "0.0-test",
        "trained": "false",  # the fake is no trained model
        "threshold": "0.5",
    }
    assert m("saver_model_info", **labels) == 1
    assert m("saver_gate_calibrated_coverage", endpoint="mner") == 0.25
    # No URL, text or request id ever becomes a label value.
    assert not re.search(r'="[^"]*(http|Kevin|tired)', text)


async def test_gate_counters_are_labelled_with_the_vision_mode() -> None:
    plain = "so tired of this weather today"  # 15 units, none capitalised: auto skips them all
    async with running_app() as (client, _):
        await client.post("/mner", json={"text": plain, "options": {"vision": "always"}})
        await client.post("/mner", json={"text": plain, "options": {"vision": "never"}})
        await client.post("/mner", json={"text": plain})
        text = (await client.get("/metrics")).text

    def m(name: str, /, **labels: str) -> float:
        return metric_value(text, name, **labels)

    # "always" activates what auto would skip: counted under its own mode, never under auto's.
    assert m("saver_gate_requests_total", endpoint="mner", decision="activated", mode="always") == 1
    assert m("saver_gate_units_total", endpoint="mner", decision="activated", mode="always") == 15
    assert m("saver_gate_requests_total", endpoint="mner", decision="activated", mode="auto") == 0
    assert m("saver_gate_units_total", endpoint="mner", decision="activated", mode="auto") == 0
    assert m("saver_gate_requests_total", endpoint="mner", decision="skipped", mode="never") == 1
    assert m("saver_gate_requests_total", endpoint="mner", decision="skipped", mode="auto") == 1
    assert m("saver_gate_units_total", endpoint="mner", decision="skipped", mode="auto") == 15


async def test_repeated_post_counts_cache_hits(server: ImageServer) -> None:
    request = {"text": "Paris", "image_urls": [server.url("/gen/rgb.jpg")]}
    async with running_app() as (client, _):
        await client.post("/mner", json=request)
        await client.post("/mner", json=request)
        text = (await client.get("/metrics")).text
    assert metric_value(text, "saver_images_total", endpoint="mner", outcome="cache_hit") == 1
    # The cached image was selected, so it was fetched again for detail: 2 fetches, 2 selections.
    assert metric_value(text, "saver_images_total", endpoint="mner", outcome="fetched") == 2
    assert metric_value(text, "saver_images_total", endpoint="mner", outcome="selected") == 2
    assert metric_value(text, "saver_stage_duration_seconds_count", endpoint="mner", stage="screen") == 1


def test_latency_buckets_cover_the_slo_points() -> None:
    for point in (0.001, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0):
        assert point in LATENCY_BUCKETS
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
