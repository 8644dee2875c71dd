"""The proxy: header rules shared by every adapter, and the asynchronous transports that carry a forward.

Header handling is a security boundary, so it lives in one place for ASGI and WSGI alike:

* Hop-by-hop headers (RFC 9110 section 7.6.1: ``Connection`` and every header it names, ``Keep-Alive``,
  ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-Authorization``) are
  dropped in both directions *before* the forwarder adds its own, so ``Connection: x-affinity-hop`` cannot
  delete the marker.
* The client's ``Content-Length``/``Transfer-Encoding`` are never copied: the forward is framed from the body
  the server actually parsed (a length the server enforced, or chunked).
* Internal ``X-Affinity-*`` headers from the client, and names that fold onto them (``X_Affinity_Hop``), are
  dropped: only the forwarder's own signed marker goes upstream.
* The upstream's ``Date`` and ``Server`` are replaced by the answering server's own, as nginx does by default;
  every other response header, repeated ``Set-Cookie`` included, passes byte for byte, and bodies are never
  decoded (``Content-Encoding`` stays the owner's).

The network client sits behind :class:`AsyncTransport`. aiohttp is the default because it measured 14x faster
than a shared httpx client here (DESIGN.md section 8); :class:`HttpxTransport` keeps httpx available.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .hop import HOP_HEADER, INTERNAL_PREFIX, HopSigner
from .ring import Node

if TYPE_CHECKING:
    from .router import Decision

__all__ = [
    "AiohttpTransport",
    "AsyncTransport",
    "ConnectFailed",
    "ForwardError",
    "ForwardPlan",
    "HttpxTransport",
    "SendFailed",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTimeout",
    "request_headers",
    "response_headers",
]

Headers = list[tuple[bytes, bytes]]
logger = logging.getLogger("affinity_mw")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
_NOT_COPIED_UP = HOP_BY_HOP | {b"content-length", b"expect"}
_NOT_COPIED_DOWN = HOP_BY_HOP | {b"date", b"server"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ForwardError(Exception):
    """A forward failed; the subclass says whether anything reached the peer."""


class ConnectFailed(ForwardError):
    """No connection could be made: nothing was sent, so any method may go to the next successor."""


class SendFailed(ForwardError):
    """The connection broke after the request (or part of it) was sent and before response headers arrived."""


class UpstreamTimeout(ForwardError):
    """The peer did not answer in time (504)."""


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def is_internal(name: bytes) -> bool:
    """True for our internal header names, including spellings that WSGI or lax servers fold onto them."""
    return name.replace(b"_", b"-").lower().startswith(INTERNAL_PREFIX)


def request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client_host: str | None,
    scheme: str,
) -> tuple[Headers, str]:
    """Headers for the upstream request, and the X-Forwarded-* headers added ("f", "p", "h") for the marker.

    ``X-Forwarded-For`` gets the client's address appended; ``X-Forwarded-Proto``/``-Host`` are set only when the
    client request has none, because an edge proxy's values are more truthful than ours. The owner's adapter
    removes exactly what was added here (the marker says what), so the owner's app sees the request as this node
    saw it.
    """
    drop = _NOT_COPIED_UP | _connection_tokens(headers)
    out: Headers = []
    xff: bytes | None = None
    host: bytes | None = None
    has_proto = has_xhost = False
    for name, value in headers:
        lname = name.lower()
        if lname in drop or is_internal(lname):
            continue
        if lname == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if lname == b"host" and host is None:
            host = value
        elif lname == b"x-forwarded-proto":
            has_proto = True
        elif lname == b"x-forwarded-host":
            has_xhost = True
        out.append((lname, value))
    added = ""
    if client_host:
        client = client_host.encode("latin-1")
        out.append((b"x-forwarded-for", client if xff is None else xff + b", " + client))
        added += "f"
    elif xff is not None:
        out.append((b"x-forwarded-for", xff))
    if not has_proto:
        out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
        added += "p"
    if not has_xhost and host is not None:
        out.append((b"x-forwarded-host", host))
        added += "h"
    return out, added


def restore_forwarded(headers: Sequence[tuple[bytes, bytes]], added: str) -> Headers:
    """Undo what :func:`request_headers` added, and drop internal headers, for the owner's app."""
    out: Headers = []
    for name, value in headers:
        if is_internal(name):
            continue
        if name == b"x-forwarded-proto" and "p" in added:
            continue
        if name == b"x-forwarded-host" and "h" in added:
            continue
        if name == b"x-forwarded-for" and "f" in added:
            head, sep, _ = value.rpartition(b",")
            if not sep:
                continue
            value = head.rstrip()
        out.append((name, value))
    return out


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream response's headers to pass downstream, lower-cased as ASGI wants, repeats and order kept."""
    items = [(name.lower(), value) for name, value in raw]
    drop = _NOT_COPIED_DOWN | _connection_tokens(items)
    return [(name, value) for name, value in items if name not in drop]


def body_framing(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request body's length as the server parsed it: ``0`` for none, ``None`` for chunked.

    The server has already validated the framing and enforces it while delivering the body, so this length is
    what will actually be sent, not merely what the client claimed.
    """
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


def bodiless(method: str, status: int) -> bool:
    """Responses that carry no body whatever their headers say (RFC 9110 6.4.1): HEAD, 1xx, 204, 304."""
    return method == "HEAD" or status < 200 or status in (204, 304)


CANNOT_REACH = (502, b"No owner of this key could be reached.\n")


class ForwardPlan:
    """One forward, without I/O: the request each attempt sends and what each failure means.

    The ASGI and WSGI adapters differ only in how they send bytes; the failover rules (DESIGN.md section 6) live
    here once. A connection refused before anything was sent moves to the next candidate for any method. A
    connection that broke after sending gets one retry on the next candidate, and only for an idempotent method
    whose body has not been streamed (a POST is never sent twice). A timeout is final (504).
    """

    __slots__ = ("added", "client", "decision", "headers", "retried", "scheme", "sender", "signer")

    def __init__(
        self,
        decision: Decision,
        signer: HopSigner,
        sender: str,
        headers: Sequence[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        scheme: str,
    ) -> None:
        self.decision = decision
        self.signer = signer
        self.sender = sender
        self.client = client
        self.scheme = scheme
        self.headers, self.added = request_headers(headers, client_host=client[0] if client else None, scheme=scheme)
        self.retried = False

    def attempts(self) -> Iterator[tuple[Node, Headers]]:
        """Each candidate in failover order, with the upstream headers and a fresh marker for that attempt."""
        decision = self.decision
        assert decision.key_hash is not None  # a forward decision always has a key
        for node in decision.candidates:
            decision.attempts += 1
            marker = self.signer.sign(
                sender=self.sender,
                key_hash=decision.key_hash,
                ring_checksum=decision.ring.checksum,
                attempt=decision.attempts,
                client=self.client,
                scheme=self.scheme,
                added=self.added,
            )
            yield node, [*self.headers, (HOP_HEADER, marker)]

    def failed(self, node: Node, exc: ForwardError, method: str, body_started: bool) -> tuple[int, bytes] | None:
        """``None`` to go on to the next candidate, else the status and text to answer the client with."""
        if isinstance(exc, UpstreamTimeout):
            logger.warning("affinity-mw: %s did not answer in time (%s)", node.id, exc)
            return 504, b"The key's owner did not answer in time.\n"
        if isinstance(exc, ConnectFailed):
            warn_rate_limited(node.id, "affinity-mw: cannot connect to %s (%s); trying the next owner", exc)
            if body_started:
                return 502, b"The key's owner failed while receiving the request body.\n"
            return None
        if method in IDEMPOTENT and not body_started and not self.retried:
            logger.warning("affinity-mw: %s failed before answering (%s); retrying once", node.id, exc)
            self.retried = True
            return None
        logger.warning("affinity-mw: %s failed before answering (%s)", node.id, exc)
        return 502, b"The key's owner failed before answering.\n"


_last_warned: dict[str, float] = {}


def warn_rate_limited(peer: str, message: str, exc: BaseException) -> None:
    """One warning per peer per 10 s: a dead peer must not turn every forwarded request into a log line."""
    now = time.monotonic()
    if now - _last_warned.get(peer, -1e9) >= 10.0:
        _last_warned[peer] = now
        logger.warning(message, peer, exc)


class UpstreamRequest:
    """One attempt's request. ``body`` is ``None`` (no body), or an async iterable plus ``content_length``
    (``None`` means chunked)."""

    __slots__ = ("body", "content_length", "headers", "method", "target", "url_base")

    def __init__(
        self,
        method: str,
        url_base: str,
        target: str,
        headers: Headers,
        body: AsyncIterable[bytes] | None = None,
        content_length: int | None = 0,
    ) -> None:
        self.method = method
        self.url_base = url_base
        self.target = target
        self.headers = headers
        self.body = body
        self.content_length = content_length


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self, *, reusable: bool) -> None: ...


class AsyncTransport(Protocol):
    """What the ASGI middleware needs from a client: send one request, get headers back, stream the body."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------------------------------- aiohttp


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers = response_headers(resp.raw_headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc

    async def aclose(self, *, reusable: bool) -> None:
        # release() hands a fully read connection back to the pool; close() discards one we stopped reading
        # early, so a half-read body can never be mistaken for the next response. Both are synchronous, so a
        # cancelled client cannot interrupt them and leak a pool slot.
        if reusable:
            self._resp.release()
        else:
            self._resp.close()


class AiohttpTransport:
    """The default ASGI transport: one ``aiohttp.ClientSession`` per worker, created lazily in the running loop.

    Tuned for proxying, not browsing: no cookie jar (one user's ``Set-Cookie`` must never ride on another user's
    request), no automatic ``Accept``/``Accept-Encoding``/``User-Agent``/``Content-Type`` (the peer must see the
    client's headers, not ours), no decompression, no proxies from the environment, a bounded pool per peer and
    a keep-alive shorter than the peers' server keep-alive so we never reuse a connection the peer is closing.
    """

    def __init__(
        self,
        *,
        pool_size: int = 100,
        keepalive: float = 3.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.pool_size = pool_size
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: Any = None

    def _open(self) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.pool_size,
            keepalive_timeout=self.keepalive,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            ),
        )
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        import aiohttp
        from multidict import CIMultiDict
        from yarl import URL

        session = self._session or self._open()
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        )
        data: Any = None
        if request.body is not None:
            data = request.body
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        try:
            resp = await session.request(
                request.method,
                URL(request.url_base + request.target, encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(str(exc)) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectFailed(f"connect timeout: {exc}") from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamTimeout(f"no response headers within {self.read_timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


# ------------------------------------------------------------------------------------------------------ httpx


class _BlockAllCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that neither stores nor returns any cookie: a proxy must not have memory of users."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class _HttpxResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status_code
        self.headers = response_headers(resp.headers.raw)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc

    async def aclose(self, *, reusable: bool) -> None:
        # Shielded: a client disconnect cancels us, and an unfinished aclose() would leak the pool slot.
        await asyncio.shield(self._resp.aclose())


class HttpxTransport:
    """Forward through an ``httpx.AsyncClient``: yours, or one made with proxy-safe settings.

    A client you pass keeps its own pool and timeouts, but its cookie jar is replaced by one that stores nothing,
    and requests are built directly (not with ``client.build_request``), so client-wide cookies and headers never
    reach a forwarded request. Create it with ``trust_env=False``: otherwise ``HTTP_PROXY`` would route peer
    traffic through a proxy.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        pool_size: int = 100,
        keepalive: float = 3.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import httpx

        self._owns_client = client is None
        if client is None:
            client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
                limits=httpx.Limits(
                    max_connections=None, max_keepalive_connections=pool_size, keepalive_expiry=keepalive
                ),
            )
        client.cookies = httpx.Cookies(http.cookiejar.CookieJar(policy=_BlockAllCookies()))
        self.client = client

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        import httpx

        headers = list(request.headers)
        content: Any = None
        if request.body is not None:
            content = request.body
            if request.content_length is not None:
                headers.append((b"content-length", str(request.content_length).encode()))
        elif request.method not in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"):
            headers.append((b"content-length", b"0"))
        req = httpx.Request(request.method, request.url_base + request.target, headers=headers, content=content)
        try:
            resp = await self.client.send(req, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ConnectFailed(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except httpx.TransportError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
