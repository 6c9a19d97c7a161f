"""The address rules and the socket-layer guard, independent of the fetch logic above them."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.fetch import make_client
from service.fetch_policy import FetchPolicy
from service.netguard import (
    AddressGuard,
    BlockedAddressError,
    GuardedTransport,
    NameResolutionError,
    address_refusal,
    numeric_host,
)
from tests.service.imageserver import ImageServer, fixture_bytes, self_signed_tls, start_image_server
from tests.tooling import missing_tool


@pytest.fixture(scope="module")
def module_server() -> Iterator[ImageServer]:
    with start_image_server() as server:
        yield server


@pytest.fixture
def server(module_server: ImageServer) -> ImageServer:
    module_server.reset_hits()
    return module_server


ip = ipaddress.ip_address

BLOCKED = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",  # loopback
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456::1",  # private
    "169.254.169.254",
    "169.254.0.1",
    "fe80::1",  # link-local, cloud metadata
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",  # multicast
    "240.0.0.1",
    "255.255.255.255",  # reserved, broadcast
    "100.64.0.1",
    "100.127.255.254",  # carrier-grade NAT
    "0.0.0.0",
    "::",  # unspecified
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "2001:db8::1",  # documentation
    "198.18.0.1",  # benchmarking
    "::ffff:127.0.0.1",
    "::ffff:8.8.8.8",  # IPv4-mapped IPv6, always refused
    "2002:7f00:1::1",
    "2002:a00:1::1",  # 6to4 embedding 127.0.0.1 / 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 embedding 169.254.169.254
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert address_refusal(ip(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_global_unicast_addresses_pass(address: str) -> None:
    assert address_refusal(ip(address)) is None


def test_allow_loopback_opens_loopback_only() -> None:
    assert address_refusal(ip("127.0.0.1"), allow_loopback=True) is None
    assert address_refusal(ip("::1"), allow_loopback=True) is None
    for other in ("169.254.169.254", "10.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1"):
        assert address_refusal(ip(other), allow_loopback=True) is not None, other


@given(
    st.sampled_from(
        [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "100.64.0.0/10",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "0.0.0.0/8",
        ]
    ),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_every_address_of_a_non_global_ipv4_range_is_refused(network: str, bits: int) -> None:
    net = ipaddress.IPv4Network(network)
    address = net[bits % net.num_addresses]
    assert address_refusal(address) is not None
    # ...and so is the same address written as IPv4-mapped IPv6.
    assert address_refusal(ipaddress.IPv6Address(f"::ffff:{address}"), allow_loopback=True) is not None


@pytest.mark.parametrize(
    "host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "127.0.0.1"]
)
def test_legacy_numeric_forms_normalise_to_loopback(host: str) -> None:
    assert numeric_host(host) == ip("127.0.0.1")


def test_names_are_not_numeric() -> None:
    assert numeric_host("example.com") is None
    assert numeric_host("localhost") is None
    assert numeric_host("::ffff:127.0.0.1") == ip("::ffff:127.0.0.1")


async def test_guard_uses_the_resolver_and_refuses_any_private_answer() -> None:
    answers = {
        "public.test": ["8.8.8.8"],
        "mixed.test": ["8.8.8.8", "10.0.0.1"],
        "meta.test": ["169.254.169.254"],
    }
    guard = AddressGuard(resolver=lambda host: answers[host])
    assert await guard.resolve("public.test", timeout=1.0) == [ip("8.8.8.8")]
    for host in ("mixed.test", "meta.test"):
        with pytest.raises(BlockedAddressError):
            await guard.resolve(host, timeout=1.0)


async def test_guard_never_asks_the_resolver_about_literals() -> None:
    def resolver(host: str) -> list[str]:
        raise AssertionError(f"resolver called for {host}")

    guard = AddressGuard(resolver=resolver)
    with pytest.raises(BlockedAddressError):
        await guard.resolve("0x7f.1", timeout=1.0)
    assert await guard.resolve("8.8.8.8", timeout=1.0) == [ip("8.8.8.8")]


async def test_resolution_failures_and_timeouts_are_reported_as_such() -> None:
    def failing(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def slow(host: str) -> list[str]:
        time.sleep(2.0)
        return ["8.8.8.8"]

    with pytest.raises(NameResolutionError):
        await AddressGuard(resolver=failing).resolve("nowhere.test", timeout=1.0)
    with pytest.raises(NameResolutionError):
        await AddressGuard(resolver=lambda host: []).resolve("empty.test", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NameResolutionError, match="timed out"):
        await AddressGuard(resolver=slow).resolve("slow.test", timeout=0.1)
    assert time.monotonic() - started < 1.5


async def test_the_transport_itself_refuses_without_the_fetch_layer(server: ImageServer) -> None:
    # A plain client.get() skips every check in service.fetch: the socket layer must still refuse.
    server.reset_hits()
    async with make_client(FetchPolicy(resolver=lambda host: ["127.0.0.1"])) as client:
        for url in (server.url("/gen/rgb.jpg"), server.url("/gen/rgb.jpg", host="sneaky.test")):
            with pytest.raises(BlockedAddressError):
                await client.get(url)
    assert server.total_hits == 0


async def test_the_transport_connects_to_the_address_it_checked(server: ImageServer) -> None:
    # The name is resolved once per connection, and that answer is the one dialled (no rebinding window).
    calls: list[str] = []

    def resolver(host: str) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    server.reset_hits()
    async with make_client(FetchPolicy(allow_loopback=True, resolver=resolver)) as client:
        response = await client.get(server.url("/gen/rgb.jpg", host="images.test"))
    assert response.status_code == 200
    assert calls == ["images.test"]
    assert server.hits["/gen/rgb.jpg"] == 1


async def test_the_client_ignores_proxy_environment(
    server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy from the environment would bypass the guard; nothing listens on port 1, so using it would fail.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    async with make_client(FetchPolicy(allow_loopback=True)) as client:
        response = await client.get(server.url("/gen/rgb.jpg"))
    assert response.status_code == 200


async def test_https_keeps_the_host_name_for_sni_and_certificate_checks(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        missing_tool("needs the openssl command to make a certificate")
    # The socket goes to the checked IP, yet TLS still verifies the certificate against the URL's host.
    server_context, ca_file = self_signed_tls("images.test", tmp_path)
    guard = AddressGuard(allow_loopback=True, resolver=lambda host: ["127.0.0.1"])
    transport = GuardedTransport(guard, httpx.Limits(), verify=ssl.create_default_context(cafile=ca_file))
    with start_image_server(tls=server_context) as tls_server:
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            response = await client.get(tls_server.url("/gen/rgb.jpg", host="images.test"))
            assert response.status_code == 200
            assert response.content == fixture_bytes("rgb.jpg")
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|hostname"):
                await client.get(tls_server.url("/gen/rgb.jpg", host="impostor.test"))
        assert tls_server.hits["/gen/rgb.jpg"] == 1
