"""End to end through the ASGI app with the fake model and a local image server (no network)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest

from service.fake import FakePipeline
from service.schemas import MAX_IMAGE_URLS, MAX_TEXT_CHARS
from tests.service.apphelpers import app_settings, fakes, running_app
from tests.service.fakes import InstrumentedFake, instrumented
from tests.service.imageserver import ImageServer, start_image_server

GROUNDABLE = "Kevin Durant joins the warriors"  # capitalised span: the fake's gate activates
PLAIN = "so tired of this weather today"  # nothing capitalised: every unit stays text-only


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


@pytest.fixture
def server(images: ImageServer) -> ImageServer:
    images.reset_hits()
    return images


async def test_text_without_groundable_span_touches_no_image(server: ImageServer) -> None:
    pipes = instrumented()
    async with running_app(pipelines=pipes) as (client, _):
        at_warmup = dict(pipes["mner"].calls)
        r = await client.post("/mner", json={"text": PLAIN, "image_urls": [server.url("/gen/rgb.jpg")]})
    assert r.status_code == 200
    body = r.json()
    assert body["entities"] == []
    assert body["vision"]["units_activated"] == 0
    assert body["vision"]["images_fetched"] == 0
    assert body["vision"]["fallback"] is None
    assert body["timings_ms"]["fetch"] == 0.0 and body["timings_ms"]["screen"] == 0.0
    assert server.total_hits == 0
    calls = pipes["mner"].calls
    assert calls["encode_text"] == at_warmup["encode_text"] + 1 and calls["fuse"] == at_warmup["fuse"] + 1
    assert (calls["screen"], calls["select"], calls["detail"]) == (
        at_warmup["screen"], at_warmup["select"], at_warmup["detail"]
    )  # fmt: skip


async def test_groundable_span_fetches_selects_and_reports(server: ImageServer) -> None:
    async with running_app() as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [server.url("/gen/rgb.jpg")]})
    assert r.status_code == 200
    body = r.json()
    (entity,) = body["entities"]
    assert (entity["text"], entity["start"], entity["end"]) == ("Kevin Durant", 0, 12)
    assert (entity["token_start"], entity["token_end"]) == (0, 2)
    assert entity["vision"] == {"gate": pytest.approx(0.9), "activated": True, "images": [0]}
    v = body["vision"]
    assert v["units_activated"] > 0 and v["images_fetched"] == 1 and v["images_selected"] == 1
    assert v["fallback"] is None and v["image_errors"] == []
    assert set(body["timings_ms"]) == {
        "text_encode", "gate", "fetch", "screen", "select", "detail", "fuse", "total"
    }  # fmt: skip
    assert body["timings_ms"]["total"] >= body["timings_ms"]["fetch"] > 0
    assert server.hits["/gen/rgb.jpg"] == 1


async def test_vision_never_and_always_override_the_gate(server: ImageServer) -> None:
    async with running_app() as (client, _):
        never = await client.post(
            "/mner",
            json={
                "text": GROUNDABLE,
                "image_urls": [server.url("/gen/rgb.jpg")],
                "options": {"vision": "never"},
            },
        )
        assert server.total_hits == 0
        always = await client.post(
            "/mner",
            json={"text": PLAIN, "image_urls": [server.url("/gen/rgb.jpg")], "options": {"vision": "always"}},
        )
    assert never.json()["vision"]["units_activated"] == 0
    assert never.json()["entities"][0]["vision"]["activated"] is False
    assert always.json()["vision"]["units_activated"] == always.json()["vision"]["units_total"]
    assert server.total_hits == 1


async def test_screen_cache_refetches_only_selected_images(server: ImageServer) -> None:
    pipes = instrumented(select_k=1)
    paths = ["/gen/rgb.jpg", "/gen/palette.png", "/gen/rgba.png"]
    request = {"text": "Paris", "image_urls": [server.url(p) for p in paths]}
    async with running_app(pipelines=pipes) as (client, _):
        first = (await client.post("/mner", json=request)).json()
        screened_after_first = pipes["mner"].images_seen["screen"]
        server.reset_hits()
        second = (await client.post("/mner", json=request)).json()
    assert first["vision"]["images_fetched"] == 3
    chosen = first["entities"][0]["vision"]["images"]
    assert len(chosen) == 1
    # Second time: no screening at all, and only the selected image travels again (for detail).
    assert pipes["mner"].images_seen["screen"] == screened_after_first
    assert server.total_hits == 1 and server.hits[paths[chosen[0]]] == 1
    assert second["entities"][0]["vision"]["images"] == chosen
    assert second["vision"]["images_fetched"] == 1


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/gen/page.html", "fetch_failed:not_image"), ("/status/404", "fetch_failed:http_status")],
)
async def test_unusable_image_falls_back_to_text(server: ImageServer, path: str, reason: str) -> None:
    async with running_app() as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [server.url(path)]})
    assert r.status_code == 200
    body = r.json()
    assert body["vision"]["fallback"] == reason
    assert body["vision"]["image_errors"] == [{"index": 0, "reason": reason}]
    assert body["entities"][0]["vision"]["activated"] is False
    assert body["entities"][0]["score"] == pytest.approx(0.6)  # the fake's text-only score


async def test_late_image_exceeds_the_budget(server: ImageServer) -> None:
    async with running_app() as (client, _):
        r = await client.post(
            "/mner",
            json={
                "text": GROUNDABLE,
                "image_urls": [server.url("/gen/rgb.jpg?delay=1.5")],
                "options": {"vision_budget_ms": 200},
            },
        )
    body = r.json()
    assert r.status_code == 200
    assert body["vision"]["fallback"] == "budget_exceeded"
    assert body["entities"][0]["vision"]["activated"] is False
    assert body["timings_ms"]["total"] < 1200


async def test_partial_failure_keeps_vision_from_the_good_image(server: ImageServer) -> None:
    async with running_app() as (client, _):
        r = await client.post(
            "/mner",
            json={"text": GROUNDABLE, "image_urls": [server.url("/status/404"), server.url("/gen/rgb.jpg")]},
        )
    body = r.json()
    assert body["vision"]["fallback"] is None
    assert body["vision"]["image_errors"] == [{"index": 0, "reason": "fetch_failed:http_status"}]
    assert body["entities"][0]["vision"]["images"] == [1]


async def test_private_address_is_refused_without_a_connection(server: ImageServer) -> None:
    async with running_app(app_settings(allow_loopback=False)) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [server.url("/gen/rgb.jpg")]})
    assert r.status_code == 200
    assert r.json()["vision"]["fallback"] == "fetch_failed:blocked_address"
    assert server.total_hits == 0


async def test_activated_units_without_images_say_no_images() -> None:
    async with running_app() as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE})
    assert r.json()["vision"]["fallback"] == "no_images"
    assert r.json()["vision"]["units_activated"] > 0


# ---- request validation -----------------------------------------------------------------------------


async def _post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    return await client.post("/mner", json=body)


async def test_limits_at_and_past_the_caps() -> None:
    at_cap = ("a " * (MAX_TEXT_CHARS // 2))[:MAX_TEXT_CHARS]
    urls = [f"https://example.org/{i}.jpg" for i in range(MAX_IMAGE_URLS)]
    async with running_app() as (client, _):
        ok = await _post(client, {"text": at_cap, "image_urls": urls})
        long = await _post(client, {"text": at_cap + "b"})
        many = await _post(client, {"text": "x", "image_urls": [*urls, "https://example.org/x.jpg"]})
    assert ok.status_code == 200
    assert long.status_code == 422 and long.json()["error"]["details"][0]["field"] == "text"
    assert many.status_code == 422 and many.json()["error"]["details"][0]["field"] == "image_urls"


async def test_operator_limits_tighter_than_the_schema() -> None:
    async with running_app(app_settings(max_text_chars=10, max_image_urls=1)) as (client, _):
        ok = await _post(client, {"text": "a" * 10})
        long = await _post(client, {"text": "a" * 11})
        many = await _post(client, {"text": "a", "image_urls": ["http://a.example/1", "http://a.example/2"]})
    assert ok.status_code == 200
    assert long.status_code == 422 and long.json()["error"]["details"] == [
        {"field": "text", "message": "`text` is longer than 10 characters"}
    ]
    assert many.status_code == 422 and many.json()["error"]["details"][0]["field"] == "image_urls"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "ok", "image_urls": ["not a url"]}, "image_urls.0"),
        ({"text": "ok", "image_urls": ["ftp://example.org/a.jpg"]}, "image_urls.0"),
        ({"text": "ok", "image_urls": ["http://:80/a.jpg"]}, "image_urls.0"),
        ({"text": "ok", "options": {"vision": "sometimes"}}, "options.vision"),
        ({"text": "ok", "options": {"vision_budget_ms": -1}}, "options.vision_budget_ms"),
        ({"text": "ok", "options": {"turbo": True}}, "options.turbo"),
        ({"text": "ok", "tokens": ["ok"]}, "body"),
        ({}, "body"),
    ],
)
async def test_invalid_requests_name_the_field(body: object, field: str) -> None:
    async with running_app() as (client, _):
        r = await _post(client, body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [d["field"] for d in error["details"]]
    assert error["request_id"] == r.headers["x-request-id"]


async def test_tokens_input_and_malformed_json() -> None:
    async with running_app() as (client, _):
        tokens = await _post(client, {"tokens": ["RT", "@user", ":", "New", "York", "rocks"]})
        broken = await client.post(
            "/mner", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert tokens.status_code == 200
    assert [e["text"] for e in tokens.json()["entities"]] == ["RT", "New York"]
    assert tokens.json()["entities"][1]["token_start"] == 3
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_json"


async def test_body_over_the_byte_cap_is_413() -> None:
    async with running_app(app_settings(max_body_bytes=2048)) as (client, _):
        declared = await _post(client, {"text": "a" * 3000})

        async def chunks() -> object:
            for _ in range(10):
                yield b" " * 512

        streamed = await client.post("/mner", content=chunks(), headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"


# ---- capacity and failures ---------------------------------------------------------------------------


async def test_full_queue_answers_429_with_retry_after() -> None:
    release = threading.Event()
    pipes = {"mner": InstrumentedFake("mner", block_stage="fuse", release=release)}
    settings = app_settings(max_concurrent_inferences=1, max_queue=1, retry_after_s=3, warmup=False)
    async with running_app(settings, pipes) as (client, app):
        busy = asyncio.create_task(_post(client, {"text": PLAIN}))
        queued = asyncio.create_task(_post(client, {"text": PLAIN}))
        await asyncio.to_thread(pipes["mner"].entered.wait, 5)
        for _ in range(500):  # until the second request waits in the queue
            if app.state.predictor.admission.admitted == 2:
                break
            await asyncio.sleep(0.01)
        rejected = await _post(client, {"text": PLAIN})
        release.set()
        done = await asyncio.gather(busy, queued)
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "3"
    assert rejected.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in done] == [200, 200]


async def test_request_past_its_deadline_is_504() -> None:
    release = threading.Event()
    pipes = {"mner": InstrumentedFake("mner", block_stage="encode_text", release=release)}
    async with running_app(app_settings(request_timeout_s=0.2, warmup=False), pipes) as (client, _):
        r = await _post(client, {"text": PLAIN})
        release.set()
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"


class _Exploding(FakePipeline):
    def fuse(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise RuntimeError("secret internal detail /etc/passwd")


async def test_internal_error_is_500_without_leaking(caplog: pytest.LogCaptureFixture) -> None:
    pipes = {"mner": _Exploding("mner")}
    with caplog.at_level(logging.ERROR):
        async with running_app(app_settings(warmup=False), pipes) as (client, _):
            r = await _post(client, {"text": PLAIN})
    assert r.status_code == 500
    assert "secret" not in r.text
    assert r.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error",
        "details": [],
        "request_id": r.headers["x-request-id"],
    }
    assert any("secret internal detail" in (rec.exc_text or "") for rec in caplog.records)


async def test_unknown_route_uses_the_error_shape() -> None:
    async with running_app() as (client, _):
        r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ---- probes, models, request id ----------------------------------------------------------------------


async def test_probes_models_and_request_id() -> None:
    pipes = {"mner": FakePipeline("mner"), "mre": FakePipeline("mre", trained=True)}
    async with running_app(pipelines=pipes) as (client, app):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        models = (await client.get("/v1/models")).json()["models"]
        answer = await client.post("/mner", json={"text": PLAIN}, headers={"X-Request-ID": "abc-123"})
        bad_id = await client.post(
            "/mner", json={"text": PLAIN}, headers={"X-Request-ID": "bad id; drop table"}
        )
        app.state.predictor.ready = False
        draining = await client.get("/readyz")
    assert health.json() == {"status": "ok"} and ready.json() == {"status": "ready"}
    assert draining.status_code == 503
    by_task = {m["task"]: m for m in models}
    assert by_task["mner"]["name"] == "fake-mner"
    assert by_task["mner"]["trained"] is False  # the fake's default: it is no trained model
    assert by_task["mner"]["warning"].startswith("fake model")
    assert by_task["mre"]["trained"] is True and by_task["mre"]["warning"] is None
    assert by_task["mre"]["labels"][0] == "None" and by_task["mre"]["calibration"]["coverage"] == 0.25
    assert answer.headers["x-request-id"] == "abc-123"
    assert answer.json()["model"] == {
        "name": "fake-mner",
        "version": "0.0-test",
        "trained": False,
        "warning": "fake model: a deterministic test stand-in, not a trained model",
    }
    assert bad_id.headers["x-request-id"] != "bad id; drop table"
    assert len(bad_id.headers["x-request-id"]) == 32


async def test_not_ready_before_startup() -> None:
    from service.app import create_app

    app = create_app(app_settings(), fakes())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saver.test") as client:
        r = await client.get("/readyz")
        m = await client.post("/mner", json={"text": PLAIN})
    assert r.status_code == 503 and m.status_code == 503
    assert m.json()["error"]["code"] == "not_ready"


async def test_no_text_or_url_at_info_level(server: ImageServer, caplog: pytest.LogCaptureFixture) -> None:
    secret_path = "/gen/rgb.jpg?token=s3cr3t"
    with caplog.at_level(logging.INFO):
        async with running_app() as (client, _):
            await client.post(
                "/mner", json={"text": "Zanzibar Quokka", "image_urls": [server.url(secret_path)]}
            )
    infos = [rec.getMessage() + str(vars(rec)) for rec in caplog.records if rec.levelno >= logging.INFO]
    assert infos, "expected an access log line"
    assert not any("Zanzibar" in line or "s3cr3t" in line for line in infos)


async def test_shutdown_drains_in_flight_requests() -> None:
    from service.app import create_app

    release = threading.Event()
    pipes = {"mner": InstrumentedFake("mner", block_stage="fuse", release=release)}
    app = create_app(app_settings(warmup=False, shutdown_grace_s=5), pipes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saver.test") as client:
        async with app.router.lifespan_context(app):
            in_flight = asyncio.create_task(_post(client, {"text": PLAIN}))
            await asyncio.to_thread(pipes["mner"].entered.wait, 5)
            asyncio.get_running_loop().call_later(0.2, release.set)
        # Lifespan shutdown returned only after the request finished.
        assert in_flight.done()
        assert (await in_flight).status_code == 200


async def test_openapi_declares_the_limits() -> None:
    async with running_app() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    post = spec["components"]["schemas"]["MnerRequest"]["properties"]
    text_limits = next(s for s in post["text"]["anyOf"] if s.get("type") == "string")
    urls = post["image_urls"]
    assert text_limits["maxLength"] == MAX_TEXT_CHARS and urls["maxItems"] == MAX_IMAGE_URLS
    assert spec["components"]["schemas"]["Options"]["additionalProperties"] is False
    assert "429" in spec["paths"]["/mner"]["post"]["responses"]
