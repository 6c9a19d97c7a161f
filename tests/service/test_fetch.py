"""Fetching against a local server: every SSRF refusal opens no connection, and every limit holds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.fetch import FetchError, FetchPolicy, fetch_all, fetch_image_bytes, make_client
from tests.service.imageserver import ImageServer, fixture_bytes, start_image_server

OPEN = FetchPolicy(allow_loopback=True, connect_timeout_s=1.0, read_timeout_s=2.0)  # tests only
CLOSED = FetchPolicy()  # production defaults


async def _fetch(url: str, policy: FetchPolicy, budget_s: float = 5.0) -> bytes:
    async with make_client(policy) as client:
        return await fetch_image_bytes(client, url, policy, time.monotonic() + budget_s)


async def _reason(url: str, policy: FetchPolicy, budget_s: float = 5.0) -> str:
    with pytest.raises(FetchError) as caught:
        await _fetch(url, policy, budget_s)
    return caught.value.reason


def _resolver(answers: dict[str, list[str]]) -> Callable[[str], list[str]]:
    def resolve(host: str) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


@pytest.fixture(scope="module")
def module_server() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


@pytest.fixture
def server(module_server: ImageServer) -> ImageServer:
    module_server.reset_hits()
    return module_server


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "0.0.0.0",
        "[::]",
    ],
)
async def test_loopback_in_any_spelling_is_refused_without_a_connection(
    server: ImageServer, host: str
) -> None:
    assert await _reason(f"http://{host}:{server.port}/gen/rgb.jpg", CLOSED) == "blocked_address"
    assert server.total_hits == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.1/",
        "http://192.168.0.1:8080/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
        "https://[::ffff:169.254.169.254]/",
        "http://[::ffff:7f00:1]:{port}/gen/rgb.jpg",
        "http://0:{port}/gen/rgb.jpg",
    ],
)
async def test_non_global_addresses_stay_refused_when_loopback_is_allowed(
    server: ImageServer, url: str
) -> None:
    assert await _reason(url.format(port=server.port), OPEN) == "blocked_address"
    assert server.total_hits == 0


async def test_names_resolving_to_private_addresses_are_refused(server: ImageServer) -> None:
    policy = FetchPolicy(
        resolver=_resolver({"intranet.test": ["10.0.0.7"], "mixed.test": ["8.8.8.8", "::1"]})
    )
    for host in ("intranet.test", "mixed.test"):
        assert await _reason(server.url("/gen/rgb.jpg", host=host), policy) == "blocked_address"
    assert await _reason(server.url("/gen/rgb.jpg", host="nowhere.test"), policy) == "dns"
    assert server.total_hits == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/a.jpg", "scheme"),
        ("gopher://127.0.0.1:70/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("//example.com/a.jpg", "scheme"),
        ("http://", "invalid_url"),
        ("http://user:secret@{host}/gen/rgb.jpg", "invalid_url"),
        ("http://[::1/", "invalid_url"),
        ("http://example.com/" + "a" * 3000, "invalid_url"),
    ],
)
async def test_malformed_urls_and_other_schemes_are_refused(
    server: ImageServer, url: str, reason: str
) -> None:
    assert await _reason(url.format(host=f"127.0.0.1:{server.port}"), OPEN) == reason
    assert server.total_hits == 0


async def test_real_photos_are_fetched_and_decoded_when_loopback_is_allowed(server: ImageServer) -> None:
    urls = [server.url(path) for path in server.image_paths[:4]]
    outcomes = await fetch_all(urls, OPEN, time.monotonic() + 10)
    for outcome, path in zip(outcomes, server.image_paths, strict=False):
        assert outcome.ok, outcome.reason
        assert outcome.image is not None and outcome.image.mode == "RGB"
        assert outcome.n_bytes == len(server.images[path.removeprefix("/img/")])
        assert outcome.elapsed_ms > 0
    assert server.total_hits == 4


async def test_content_type_is_ignored_in_favour_of_magic_bytes(server: ImageServer) -> None:
    assert await _fetch(server.url("/gen/rgb.jpg?content_type=text/html"), OPEN) == fixture_bytes("rgb.jpg")
    assert await _reason(server.url("/gen/page.html"), OPEN) == "not_image"  # served as image/jpeg


@pytest.mark.parametrize(
    ("status", "reason"), [(404, "http_status"), (500, "http_status"), (204, "not_image")]
)
async def test_error_statuses_and_empty_bodies_are_refused(
    server: ImageServer, status: int, reason: str
) -> None:
    assert await _reason(server.url(f"/status/{status}"), OPEN) == reason


async def test_redirects_are_followed_by_hand_up_to_the_cap(server: ImageServer) -> None:
    hop3 = server.redirect_url(server.redirect_url(server.redirect_url("/gen/rgb.jpg", code=301), code=307))
    assert await _fetch(hop3, OPEN) == fixture_bytes("rgb.jpg")
    assert await _reason(hop3, FetchPolicy(allow_loopback=True, max_redirects=2)) == "redirects"


async def test_redirect_loops_are_capped(server: ImageServer) -> None:
    assert await _reason(server.url("/loop"), OPEN) == "redirects"
    assert server.hits["/loop"] == OPEN.max_redirects + 1


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "blocked_address"),
        ("http://10.1.2.3/", "blocked_address"),
        ("http://[::ffff:127.0.0.1]:{port}/gen/rgb.jpg", "blocked_address"),
        ("http://0x0a.1/", "blocked_address"),
        ("http://012.0.0.1/", "blocked_address"),
        ("file:///etc/passwd", "scheme"),
        ("http://[::1", "redirects"),
    ],
)
async def test_every_redirect_hop_is_checked_again(server: ImageServer, target: str, reason: str) -> None:
    assert await _reason(server.redirect_url(target.format(port=server.port)), OPEN) == reason
    assert server.hits == {"/redirect": 1}


async def test_a_public_url_redirecting_to_a_private_name_is_refused(server: ImageServer) -> None:
    # "public.test" stands in for a public host (it resolves to the test server, with loopback allowed).
    resolve = _resolver({"public.test": ["127.0.0.1"], "internal.test": ["192.168.0.10"]})
    policy = FetchPolicy(allow_loopback=True, resolver=resolve)
    url = server.redirect_url(server.url("/gen/rgb.jpg", host="internal.test"), host="public.test")
    assert await _reason(url, policy) == "blocked_address"
    assert server.hits == {"/redirect": 1}


async def test_a_name_rebinding_to_a_private_address_between_hops_is_refused(server: ImageServer) -> None:
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    policy = FetchPolicy(allow_loopback=True, resolver=lambda host: next(answers))
    url = server.redirect_url("/gen/rgb.jpg", host="rebind.test")  # same host, a new connection per hop
    assert await _reason(url, policy) == "blocked_address"
    assert server.hits == {"/redirect": 1}


async def test_a_dripping_server_is_cut_by_the_deadline(server: ImageServer) -> None:
    # One byte a second never trips the 2 s read timeout; only the overall deadline can stop it.
    started = time.monotonic()
    assert await _reason(server.url("/drip?interval=1.0&size=1000"), OPEN, budget_s=1.5) == "timeout"
    assert 1.4 <= time.monotonic() - started < 3.0


async def test_a_silent_server_is_cut_by_the_read_timeout(server: ImageServer) -> None:
    policy = FetchPolicy(allow_loopback=True, read_timeout_s=0.3)
    started = time.monotonic()
    assert await _reason(server.url("/gen/rgb.jpg?delay=5"), policy, budget_s=10) == "timeout"
    assert time.monotonic() - started < 2.0


async def test_a_deadline_already_passed_opens_no_connection(server: ImageServer) -> None:
    assert await _reason(server.url("/gen/rgb.jpg"), OPEN, budget_s=-1) == "timeout"
    assert server.total_hits == 0


async def test_bodies_are_capped(server: ImageServer) -> None:
    small = FetchPolicy(allow_loopback=True, max_bytes=256 * 1024)
    started = time.monotonic()
    assert await _reason(server.url("/endless"), small) == "too_large"
    assert await _reason(server.url("/big?declared=1000000000"), OPEN) == "too_large"
    assert time.monotonic() - started < 3
    tiny = FetchPolicy(allow_loopback=True, max_bytes=len(fixture_bytes("rgb.jpg")) - 1)
    assert await _reason(server.url("/gen/rgb.jpg"), tiny) == "too_large"


async def test_connection_resets_and_refusals_are_reported(server: ImageServer) -> None:
    assert await _reason(server.url("/reset"), OPEN) == "network"
    assert await _reason(server.url("/reset_mid"), OPEN) == "network"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert await _reason(f"http://127.0.0.1:{free_port}/x.jpg", OPEN) == "connect"


async def test_fetch_all_reports_each_url_in_order_and_never_raises(server: ImageServer) -> None:
    urls = [
        server.url("/gen/rgb.jpg"),
        "http://169.254.169.254/",
        server.url("/gen/huge_header.png"),
        server.url("/gen/truncated.jpg"),
        server.url("/status/404"),
        "not a url",
        server.url("/gen/many_frames.gif"),
        server.url("/gen/exif_rotated.jpg"),
    ]
    outcomes = await fetch_all(urls, OPEN, time.monotonic() + 10)
    assert [o.index for o in outcomes] == list(range(len(urls)))
    assert [o.url for o in outcomes] == urls
    assert [o.reason for o in outcomes] == [
        None,
        "blocked_address",
        "too_many_pixels",
        "decode",
        "http_status",
        "scheme",
        None,
        None,
    ]
    assert all((o.image is None) == (o.reason is not None) for o in outcomes)
    assert outcomes[2].n_bytes == len(fixture_bytes("huge_header.png"))
    assert outcomes[1].n_bytes == 0


async def test_fetch_all_is_concurrent_and_respects_its_deadline(server: ImageServer) -> None:
    urls = [server.url(f"/gen/rgb.jpg?delay=0.5&n={i}") for i in range(6)] + [
        server.url("/gen/1x1.png?delay=5")
    ]
    started = time.monotonic()
    async with make_client(OPEN) as client:
        outcomes = await fetch_all(urls, OPEN, time.monotonic() + 1.5, client)
    assert time.monotonic() - started < 2.5  # six half-second fetches in parallel, the slow one abandoned
    assert [o.ok for o in outcomes] == [True] * 6 + [False]
    assert outcomes[-1].reason == "timeout"


async def test_only_a_guarded_client_with_the_same_rules_may_fetch(server: ImageServer) -> None:
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient() as plain, make_client(OPEN) as loopback_client:
        with pytest.raises(ValueError):
            await fetch_image_bytes(plain, server.url("/gen/rgb.jpg"), OPEN, deadline)
        with pytest.raises(ValueError):
            await fetch_image_bytes(loopback_client, server.url("/gen/rgb.jpg"), CLOSED, deadline)
    assert server.total_hits == 0
