"""Fetching user-supplied image URLs: SSRF-safe, bounded in bytes and time, never trusting the server.

Public API (all a caller needs):

- ``FetchPolicy`` / ``FetchError`` / ``FETCH_FAILURE_REASONS`` (re-exported from ``service.fetch_policy``).
- ``make_client(policy)``: the one ``httpx.AsyncClient`` to share for the process lifetime (close it on
  shutdown). Its transport dials only addresses the policy allows (see ``service.netguard``).
- ``await fetch_image_bytes(client, url, policy, deadline)``: the body, or ``FetchError``.
- ``await fetch_all(urls, policy, deadline, client)``: fetch and decode concurrently; one ``FetchOutcome``
  per URL, in order; never raises for a bad URL.

``deadline`` is an absolute ``time.monotonic()`` value covering the whole fetch, redirects included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image

from service.fetch_policy import FETCH_FAILURE_REASONS, FetchError, FetchFailure, FetchPolicy
from service.images import SNIFF_BYTES, decode_image, sniff_format
from service.netguard import (
    AddressGuard,
    BlockedAddressError,
    GuardedTransport,
    NameResolutionError,
    address_refusal,
    numeric_host,
)

__all__ = [
    "FETCH_FAILURE_REASONS",
    "FetchError",
    "FetchOutcome",
    "FetchPolicy",
    "ImageClient",
    "fetch_all",
    "fetch_image_bytes",
    "make_client",
]

logger = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class _RedirectReceived(Exception):
    """Raised by ImageClient's response hook so that a redirect reaches us before httpx interprets it."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.status = response.status_code
        self.location = response.headers.get("location")
        self.url = response.url


async def _stop_at_redirect(response: httpx.Response) -> None:
    # httpx parses Location itself even with follow_redirects=False and reports a malformed one as a
    # RemoteProtocolError; stopping here keeps every redirect decision (and its error reason) in this module.
    if response.status_code in _REDIRECT_STATUSES:
        raise _RedirectReceived(response)


class ImageClient(httpx.AsyncClient):
    """The client for user image URLs: guarded sockets, no env proxies, redirects left to this module.

    Its response hook turns every redirect into an internal exception that ``fetch_image_bytes`` handles,
    so use it only through this module's functions.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        limits = httpx.Limits(
            max_connections=policy.max_connections,
            max_keepalive_connections=policy.max_connections,
            keepalive_expiry=30.0,
        )
        guard = AddressGuard(allow_loopback=policy.allow_loopback, resolver=policy.resolver)
        super().__init__(
            transport=GuardedTransport(guard, limits),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=policy.connect_timeout_s,
                read=policy.read_timeout_s,
                write=policy.read_timeout_s,
                pool=policy.connect_timeout_s,
            ),
            headers={
                "User-Agent": policy.user_agent,
                "Accept": "image/*",
                # A compressed body would make the byte cap count compressed bytes; images gain nothing.
                "Accept-Encoding": "identity",
            },
            event_hooks={"response": [_stop_at_redirect]},
        )
        self.policy = policy


def make_client(policy: FetchPolicy) -> ImageClient:
    """The pooled client to share for the process lifetime; ``await client.aclose()`` on shutdown."""
    if policy.allow_loopback:
        logger.warning("image fetching may reach loopback addresses: meant for tests and benchmarks only")
    return ImageClient(policy)


async def fetch_image_bytes(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy, deadline: float
) -> bytes:
    """The body of ``url`` after at most ``policy.max_redirects`` checked redirects.

    Raises ``FetchError``; ``ValueError`` when ``client`` is not a ``make_client`` client with the same
    address rules as ``policy`` (a programming error: an unguarded client must never fetch user URLs).
    """
    _require_guarded(client, policy)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("timeout", "deadline passed before the fetch started")
    try:
        async with asyncio.timeout(remaining):
            return await _follow_redirects(client, url, policy)
    except TimeoutError as exc:
        raise FetchError("timeout", "overall deadline reached") from exc


@dataclass
class FetchOutcome:
    """What became of one URL of a request."""

    index: int  # position of the URL in the request
    url: str  # the URL as requested
    image: Image.Image | None  # RGB, EXIF-upright; None on failure
    reason: FetchFailure | None  # why it failed; None on success
    elapsed_ms: float  # fetch plus decode time
    n_bytes: int  # size of the body received (0 when none was)

    @property
    def ok(self) -> bool:
        return self.image is not None


async def fetch_all(
    urls: Sequence[str], policy: FetchPolicy, deadline: float, client: httpx.AsyncClient | None = None
) -> list[FetchOutcome]:
    """Fetch and decode ``urls`` concurrently; images still missing at ``deadline`` fail with ``timeout``.

    Decoding runs in worker threads, off the event loop. Without ``client`` a temporary one is made.
    """
    own_client = client is None
    active = make_client(policy) if client is None else client
    _require_guarded(active, policy)
    try:
        jobs = (_fetch_one(active, index, url, policy, deadline) for index, url in enumerate(urls))
        return list(await asyncio.gather(*jobs))
    finally:
        if own_client:
            await active.aclose()


async def _fetch_one(
    client: httpx.AsyncClient, index: int, url: str, policy: FetchPolicy, deadline: float
) -> FetchOutcome:
    start = time.monotonic()
    n_bytes = 0
    reason: FetchFailure | None = None
    image: Image.Image | None = None
    try:
        data = await fetch_image_bytes(client, url, policy, deadline)
        n_bytes = len(data)
        try:
            # The worker thread cannot be stopped; past the deadline its result is just not waited for.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                image = await asyncio.to_thread(decode_image, data, policy)
        except TimeoutError as exc:
            raise FetchError("timeout", "deadline reached while decoding") from exc
    except FetchError as exc:
        reason = exc.reason
        logger.info("image %d from %s refused: %s", index, _host_of(url), exc)
    except Exception:  # one bad URL must never fail the request
        reason = "internal"
        logger.exception("image %d from %s: unexpected failure", index, _host_of(url))
    elapsed_ms = (time.monotonic() - start) * 1000.0
    return FetchOutcome(index, url, image, reason, elapsed_ms, n_bytes)


def _require_guarded(client: httpx.AsyncClient, policy: FetchPolicy) -> None:
    if not isinstance(client, ImageClient):
        raise ValueError("image fetches need a client from service.fetch.make_client(policy)")
    rules = (client.policy.allow_loopback, client.policy.resolver)
    if rules != (policy.allow_loopback, policy.resolver):
        raise ValueError("the client was made for a policy with different address rules")


async def _follow_redirects(client: httpx.AsyncClient, url: str, policy: FetchPolicy) -> bytes:
    target = _checked_url(url, policy)
    for _hop in range(policy.max_redirects + 1):
        try:
            with _mapped_transport_errors():
                async with client.stream("GET", target) as response:
                    if not 200 <= response.status_code < 300:
                        raise FetchError("http_status", f"status {response.status_code}")
                    return await _read_capped_body(response, policy)
        except _RedirectReceived as redirect:
            # Every hop is checked again: here for literal addresses, in the transport for names.
            target = _next_hop(redirect, policy)
    raise FetchError("redirects", f"more than {policy.max_redirects} redirects")


def _next_hop(redirect: _RedirectReceived, policy: FetchPolicy) -> httpx.URL:
    if not redirect.location:
        raise FetchError("redirects", f"{redirect.status} without a Location")
    try:
        joined = str(redirect.url.join(redirect.location))
    except httpx.InvalidURL as exc:
        _refuse_literal_host(_split_host(redirect.location), policy)  # e.g. 012.0.0.1, which httpx rejects
        raise FetchError("redirects", f"unusable Location {redirect.location[:100]!r}") from exc
    return _checked_url(joined, policy)


async def _read_capped_body(response: httpx.Response, policy: FetchPolicy) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchError("too_large", f"Content-Length {declared} over {policy.max_bytes}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError("not_image", f"content-encoding {encoding!r}")
    body = bytearray()
    sniffed = False
    # Raw bytes: nothing is decompressed, so the cap counts exactly what the server sent.
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > policy.max_bytes:
            raise FetchError("too_large", f"body over {policy.max_bytes} bytes")
        if not sniffed and len(body) >= SNIFF_BYTES:
            _require_image_magic(body, policy)  # stop an HTML page after its first packet
            sniffed = True
    _require_image_magic(body, policy)
    return bytes(body)


def _require_image_magic(body: bytearray, policy: FetchPolicy) -> None:
    fmt = sniff_format(bytes(body[:SNIFF_BYTES]))
    if fmt is None or fmt not in policy.allowed_formats:
        raise FetchError("not_image", f"body starts with {bytes(body[:8])!r}")


def _checked_url(url: str, policy: FetchPolicy) -> httpx.URL:
    if len(url) > policy.max_url_length:
        raise FetchError("invalid_url", f"longer than {policy.max_url_length} characters")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise FetchError("invalid_url", str(exc)) from exc
    if scheme not in ("http", "https"):
        raise FetchError("scheme", f"scheme {scheme!r} is not http or https")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        # httpx rejects legacy numeric forms such as 0177.0.0.1 that the C library would still dial:
        # report those as the blocked addresses they denote.
        _refuse_literal_host(_split_host(url), policy)
        raise FetchError("invalid_url", str(exc)) from exc
    if not parsed.host:
        raise FetchError("invalid_url", "no host")
    if parsed.userinfo:
        raise FetchError("invalid_url", "credentials in the URL")
    # Fail fast on literal addresses; names (and literals again) are checked where sockets are opened.
    _refuse_literal_host(parsed.host, policy)
    return parsed


def _refuse_literal_host(host: str | None, policy: FetchPolicy) -> None:
    address = numeric_host(host) if host else None
    if address is not None:
        refusal = address_refusal(address, policy.allow_loopback)
        if refusal is not None:
            raise FetchError("blocked_address", f"{host!r} is a {refusal} ({address})")


def _split_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _host_of(url: str) -> str:
    """Only the host goes to the log: paths and queries of user URLs may carry tokens."""
    return _split_host(url) or "?"


@contextlib.contextmanager
def _mapped_transport_errors() -> Iterator[None]:
    try:
        yield
    except BlockedAddressError as exc:
        raise FetchError("blocked_address", str(exc)) from exc
    except NameResolutionError as exc:
        raise FetchError("dns", str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise FetchError("timeout", type(exc).__name__) from exc
    except httpx.ConnectError as exc:
        raise FetchError("connect", str(exc)) from exc
    except httpx.UnsupportedProtocol as exc:
        raise FetchError("scheme", str(exc)) from exc
    except httpx.InvalidURL as exc:
        raise FetchError("invalid_url", str(exc)) from exc
    except (httpx.HTTPError, httpx.StreamError) as exc:  # resets, protocol errors, truncated bodies
        raise FetchError("network", f"{type(exc).__name__}: {exc}") from exc
