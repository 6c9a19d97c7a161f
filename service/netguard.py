"""SSRF guard at the socket layer: every TCP connection of the image client goes to a checked address.

Why a network backend and not URL rewriting. Pinning by rewriting ``http://host/`` to ``http://<ip>/`` plus a
``Host`` header and the ``sni_hostname`` extension does work with httpx 0.28 / httpcore 1.0 (httpcore passes
``sni_hostname`` as ``server_hostname``, which also drives certificate checking), but httpcore pools
connections by origin, i.e. by IP: a TLS connection verified for host A would be reused for host B served
from the same CDN address without B's certificate ever being checked. Here instead the connection pool
keeps the real host name (so pooling, SNI and certificate verification stay exactly httpx's), and the one
place that opens sockets, ``GuardedNetworkBackend.connect_tcp``, resolves the name once, refuses the
connection unless *every* address is allowed, and dials the checked IP literal. Resolution and connection
use the same answer, so there is no DNS-rebinding window, and no URL parser differential can route a request
around the check because the check sees the host that is actually dialled.

Numeric hosts are normalised with ``getaddrinfo(AI_NUMERICHOST)`` (the C library's ``inet_aton``), so
``2130706433``, ``0177.0.0.1``, ``0x7f.1`` and ``127.1`` all become 127.0.0.1 before ``ipaddress`` judges
them; nothing here matches strings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from service.fetch_policy import Resolver

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes that carry an IPv4 address in their low 32 bits (RFC 6052 NAT64, well-known and local-use).
_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class BlockedAddressError(Exception):
    """The host is, or resolves to, an address that the policy does not allow."""


class NameResolutionError(Exception):
    """The host name did not resolve, or resolving it took longer than the connect timeout."""


def address_refusal(address: IPAddress, allow_loopback: bool = False) -> str | None:
    """Why connecting to ``address`` is refused, or None when it is a global unicast address.

    Loopback (127.0.0.0/8, ::1) passes only with ``allow_loopback``; IPv4-mapped IPv6 is always refused
    (some stacks dial the embedded IPv4), and so is any IPv6 form embedding a non-global IPv4.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None and address_refusal(embedded) is not None:
            return f"IPv6 address embedding the non-global {embedded}"
    if address.is_loopback:
        return None if allow_loopback else "loopback address"
    # Order matters only for the message: link-local covers 169.254.169.254 (cloud metadata).
    checks = (
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # is_global is False for 100.64.0.0/10 (carrier-grade NAT) although that range is not "private".
        ("non-global", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return f"{name} address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host denotes in any form the C library accepts, or None for a name."""
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(infos[0][4][0]) if infos else None


def system_resolver(host: str) -> list[str]:
    """All addresses of ``host`` from the system resolver (blocking; run it in a thread)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Resolves a host and returns its addresses only when all of them are allowed."""

    def __init__(self, allow_loopback: bool = False, resolver: Resolver | None = None) -> None:
        self.allow_loopback = allow_loopback
        self._resolver = resolver or system_resolver

    def check(self, address: IPAddress, host: str) -> None:
        refusal = address_refusal(address, self.allow_loopback)
        if refusal is not None:
            raise BlockedAddressError(f"{host!r} is a {refusal} ({address})")

    async def resolve(self, host: str, timeout: float | None) -> list[IPAddress]:
        """Checked addresses of ``host``; raises BlockedAddressError or NameResolutionError."""
        literal = numeric_host(host)
        if literal is not None:
            self.check(literal, host)
            return [literal]
        try:
            answers = await asyncio.wait_for(asyncio.to_thread(self._resolver, host), timeout)
            addresses = [ipaddress.ip_address(answer) for answer in answers]
        except TimeoutError as exc:
            raise NameResolutionError(f"resolving {host!r} timed out") from exc
        except (OSError, UnicodeError, ValueError) as exc:
            raise NameResolutionError(f"cannot resolve {host!r}: {exc}") from exc
        if not addresses:
            raise NameResolutionError(f"{host!r} has no addresses")
        # All, not any: a name mixing public and private answers is a rebinding set-up.
        for address in addresses:
            self.check(address, host)
        return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that only ever dials addresses the guard has checked."""

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard.resolve(host, timeout)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # resolve() never returns an empty list
        raise last_error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are never dialled")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (exception mapping, streaming) over a pool that uses the guarded backend.

    httpx 0.28 does not expose ``network_backend``, so the pool that ``AsyncHTTPTransport.__init__`` builds
    is replaced. The type check below makes an httpx upgrade that renames ``_pool`` fail loudly at start-up
    instead of silently sending requests through an unguarded pool.
    """

    def __init__(
        self, guard: AddressGuard, limits: httpx.Limits, verify: bool | ssl.SSLContext = True
    ) -> None:
        # verify: True (certifi's CAs) or a client context (tests). Loading the CAs costs ~70 ms: do it once.
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        if type(getattr(self, "_pool", None)) is not httpcore.AsyncConnectionPool:
            raise RuntimeError("unsupported httpx version: cannot install the SSRF guard")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedNetworkBackend(guard),
        )
