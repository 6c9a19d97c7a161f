"""Hostile image URLs through the HTTP API: refused by the schema (422) or answered text-only with the
reason, and never a connection to a private address.

The image server listens on 127.0.0.1; with loopback not allow-listed (the production default) its hit
counter must stay at zero whatever spelling of its address a request uses. Addresses that cannot be
listened on here (10/8, 169.254.169.254...) are shown to be refused before any connection by the reason
(``blocked_address``, never ``connect`` or ``timeout``) and by the time taken.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.fetch import FetchPolicy
from service.schemas import MAX_IMAGE_URLS
from tests.hardening.helpers import GROUNDABLE, assert_error, fake_dns, guarded_fetcher
from tests.service.apphelpers import app_settings, running_app
from tests.service.imageserver import ImageServer

CLOSED = app_settings(allow_loopback=False)  # production: loopback not allow-listed


async def _vision_answer(body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """POST a groundable post with ``body``'s URLs to a production-configured app; the JSON and seconds."""
    started = time.monotonic()
    async with running_app(CLOSED) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, **body})
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - started


def _assert_text_only(answer: dict[str, Any], reason: str, n_urls: int = 1) -> None:
    vision = answer["vision"]
    assert vision["units_activated"] > 0  # the gate did ask for the images
    assert vision["fallback"] == reason
    assert vision["image_errors"] == [{"index": i, "reason": reason} for i in range(n_urls)]
    assert vision["images_fetched"] == 0
    assert all(not e["vision"]["activated"] for e in answer["entities"])


# ---- refused by the schema ----------------------------------------------------------------------------

SCHEMA_REFUSED = {
    "scheme-file": "file:///etc/passwd",
    "scheme-ftp": "ftp://example.org/a.jpg",
    "scheme-data": "data:image/png;base64,iVBORw0KGgo=",
    "scheme-gopher": "gopher://127.0.0.1:70/_GET%20/",
    "scheme-javascript": "javascript:alert(1)",
    "scheme-relative": "//example.org/a.jpg",
    "credentials-in-url": "http://user:secret@example.org/a.jpg",
    "whitespace-in-url": "http://example.org/a b.jpg",
    "newline-header-injection": "http://example.org/a.jpg\r\nX-Evil: 1",
    "bad-port": "http://example.org:99999/a.jpg",
    "no-host": "http:///a.jpg",
    "url-over-2048-chars": "https://example.org/" + "a" * 2100,
}


@pytest.mark.parametrize("url", list(SCHEMA_REFUSED.values()), ids=list(SCHEMA_REFUSED))
async def test_unfetchable_urls_are_refused_by_the_schema(images: ImageServer, url: str) -> None:
    async with running_app(CLOSED) as (client, _):
        r = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": ["https://example.org/ok.jpg", url]}
        )
    assert_error(r, 422, "validation_error", "image_urls.1")
    assert images.total_hits == 0


async def test_a_thousand_image_urls_are_refused_before_any_work(images: ImageServer) -> None:
    urls = [images.url(f"/gen/rgb.jpg?i={i}") for i in range(1000)]
    async with running_app(app_settings()) as (client, _):  # even with loopback allowed
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": urls})
        at_cap = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": urls[:MAX_IMAGE_URLS]})
        huge = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [u + "x" * 2000 for u in urls]}
        )
    assert_error(r, 422, "validation_error", "image_urls")
    assert_error(huge, 413, "payload_too_large")
    assert at_cap.status_code == 200
    assert images.total_hits == MAX_IMAGE_URLS  # only the request at the cap fetched anything


# ---- loopback in every spelling, with loopback not allow-listed -------------------------------------------

LOOPBACK_HOSTS = {
    "dotted": "127.0.0.1",
    "dotted-other-127": "127.0.0.2",
    "short-form": "127.1",
    "decimal": "2130706433",
    "octal": "0177.0.0.1",
    "octal-padded": "0000177.0.0.01",
    "hex": "0x7f000001",
    "hex-dotted": "0x7f.0x0.0x0.0x1",
    "ipv4-mapped-ipv6": "[::ffff:127.0.0.1]",
    "ipv4-mapped-ipv6-hex": "[::ffff:7f00:1]",
    "ipv6-loopback": "[::1]",
    "unspecified-0.0.0.0": "0.0.0.0",
    "unspecified-zero": "0",
    "name-localhost": "localhost",
}


@pytest.mark.parametrize("host", list(LOOPBACK_HOSTS.values()), ids=list(LOOPBACK_HOSTS))
async def test_loopback_spellings_fall_back_without_a_connection(images: ImageServer, host: str) -> None:
    answer, seconds = await _vision_answer({"image_urls": [f"http://{host}:{images.port}/gen/rgb.jpg"]})
    _assert_text_only(answer, "fetch_failed:blocked_address")
    assert images.total_hits == 0
    assert seconds < 2.0


# Private, carrier-grade NAT, link-local, cloud metadata and IPv6 local ranges, in several spellings.
PRIVATE_HOSTS = {
    "metadata-dotted": "169.254.169.254",
    "metadata-decimal": "2852039166",
    "metadata-octal": "0251.0376.0251.0376",
    "metadata-hex": "0xa9fea9fe",
    "metadata-ipv4-mapped": "[::ffff:169.254.169.254]",
    "metadata-aws-ipv6": "[fd00:ec2::254]",
    "private-10-dotted": "10.0.0.1",
    "private-10-decimal": "167772161",
    "private-10-octal": "012.0.0.1",
    "private-10-hex": "0x0a000001",
    "private-10-ipv4-mapped-hex": "[::ffff:a00:1]",
    "private-172-16": "172.16.5.4",
    "private-192-168-dotted": "192.168.1.1",
    "private-192-168-decimal": "3232235777",
    "private-192-168-hex": "0xc0a80101",
    "cgnat-100-64": "100.64.0.1",
    "link-local-ipv4": "169.254.1.1",
    "link-local-ipv6": "[fe80::1]",
    "unique-local-ipv6": "[fd12:3456::1]",
    "6to4-embedding-10": "[2002:a00:1::]",
    "nat64-embedding-metadata": "[64:ff9b::a9fe:a9fe]",
    "multicast": "224.0.0.1",
    "broadcast": "255.255.255.255",
}


@pytest.mark.parametrize("host", list(PRIVATE_HOSTS.values()), ids=list(PRIVATE_HOSTS))
async def test_private_and_metadata_addresses_fall_back_before_connecting(host: str) -> None:
    answer, seconds = await _vision_answer({"image_urls": [f"http://{host}/latest/meta-data/"]})
    # "blocked_address", never "connect" or "timeout": the refusal came before any connection attempt.
    _assert_text_only(answer, "fetch_failed:blocked_address")
    assert seconds < 2.0


NAMES = {
    "loopback.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "intranet.test": ["10.0.0.7"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "rebind-mix.test": ["93.184.216.34", "127.0.0.1"],  # one public answer does not launder a private one
    "ipv6-local.test": ["::1"],
}


@pytest.mark.parametrize("name", list(NAMES))
async def test_names_resolving_to_private_addresses_fall_back(images: ImageServer, name: str) -> None:
    fetcher = guarded_fetcher(FetchPolicy(resolver=fake_dns(NAMES)))
    async with running_app(CLOSED, fetcher=fetcher) as (client, _):
        r = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [images.url("/gen/rgb.jpg", name)]}
        )
    _assert_text_only(r.json(), "fetch_failed:blocked_address")
    assert images.total_hits == 0


async def test_a_name_that_does_not_resolve_falls_back_with_dns(images: ImageServer) -> None:
    fetcher = guarded_fetcher(FetchPolicy(resolver=fake_dns(NAMES)))
    async with running_app(CLOSED, fetcher=fetcher) as (client, _):
        r = await client.post(
            "/mner", json={"text": GROUNDABLE, "image_urls": [images.url("/x.jpg", "nowhere.test")]}
        )
    _assert_text_only(r.json(), "fetch_failed:dns")


# ---- redirects ------------------------------------------------------------------------------------------

# "public.test" stands in for a public host: it resolves to the image server, with loopback allowed for
# that one purpose. Every redirect target below must be refused although loopback is allowed.
REDIRECT_TARGETS = {
    "to-metadata": "http://169.254.169.254/latest/meta-data/iam/",
    "to-private-name": "http://internal.test/admin",
    "to-ipv4-mapped-loopback": "http://[::ffff:127.0.0.1]:{port}/gen/rgb.jpg",
    "to-unspecified": "http://0:{port}/gen/rgb.jpg",
    "to-octal-private": "http://012.0.0.1/",
    "to-file-scheme": "file:///etc/passwd",
    "to-gopher-scheme": "gopher://127.0.0.1:{port}/",
}
REDIRECT_REASONS = {"to-file-scheme": "fetch_failed:scheme", "to-gopher-scheme": "fetch_failed:scheme"}


@pytest.mark.parametrize("case", list(REDIRECT_TARGETS))
async def test_public_url_redirecting_to_a_private_one_falls_back(images: ImageServer, case: str) -> None:
    dns = fake_dns({"public.test": ["127.0.0.1"], "internal.test": ["192.168.0.10"]})
    fetcher = guarded_fetcher(FetchPolicy(allow_loopback=True, resolver=dns))
    target = REDIRECT_TARGETS[case].format(port=images.port)
    url = images.redirect_url(target, host="public.test")
    async with running_app(CLOSED, fetcher=fetcher) as (client, _):
        r = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [url]})
    _assert_text_only(r.json(), REDIRECT_REASONS.get(case, "fetch_failed:blocked_address"))
    assert images.hits == {"/redirect": 1}  # the private target was never reached


async def test_redirect_loops_and_long_chains_fall_back(images: ImageServer) -> None:
    chain = images.url("/gen/rgb.jpg")
    for _ in range(5):
        chain = images.redirect_url(chain)
    async with running_app(app_settings(fetch_max_redirects=3)) as (client, _):
        loop = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [images.url("/loop")]})
        hits_of_loop = images.hits["/loop"]
        long = await client.post("/mner", json={"text": GROUNDABLE, "image_urls": [chain]})
    _assert_text_only(loop.json(), "fetch_failed:redirects")
    _assert_text_only(long.json(), "fetch_failed:redirects")
    assert hits_of_loop == 3 + 1
    assert images.hits["/gen/rgb.jpg"] == 0
