"""The network clients that carry a forward, behind the small interfaces in :mod:`affinity_mw.forward`.

Defaults chosen by measurement on a 2-core box (docs/benchmarks.md): for ASGI the built-in
client of :mod:`affinity_mw.h1` (2.5x less client CPU per forward than aiohttp, which measured 0.45 x the bare
app's throughput against 0.033 x for one shared ``httpx.AsyncClient``); urllib3 for WSGI (0.46 x, against 0.34 x
for ``httpx.Client``). aiohttp and httpx stay available (``AFFINITY_TRANSPORT``, or a client passed in).

Every transport is configured as a proxy, not a browser: no cookie jar (one user's ``Set-Cookie`` must never ride
on another user's request), no injected ``Accept``/``Accept-Encoding``/``User-Agent``, no decompression, no
proxies from the environment, no redirects followed, no retries of its own (the failover rules are
:class:`~affinity_mw.forward.ForwardPlan`'s).
"""

from __future__ import annotations

import asyncio
import contextvars
import http.cookiejar
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from .forward import (
    IDEMPOTENT,
    BadResponse,
    ClientGone,
    ConnectFailed,
    Headers,
    SendFailed,
    SyncUpstreamResponse,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    client_gone,
    response_headers,
)

__all__ = ["AiohttpTransport", "HttpxSyncTransport", "HttpxTransport", "PerLoop", "Urllib3Transport"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One client (session, pool) per running event loop, made on first use in that loop.

    A client is bound to the loop that made it, and test clients and some hosts run several loops one after
    another. Entries are keyed by the loop's id but checked by identity, since a closed loop's id can be reused by
    the next one; entries of closed loops are dropped whenever a new client is made.
    """

    def __init__(
        self, make: Callable[[asyncio.AbstractEventLoop], T], usable: Callable[[T], bool] | None = None
    ) -> None:
        self._make = make
        self._usable = usable
        self._entries: dict[int, tuple[asyncio.AbstractEventLoop, T]] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry[0] is loop and (self._usable is None or self._usable(entry[1])):
            return entry[1]
        for key, (other, _) in list(self._entries.items()):
            if other.is_closed():
                self._entries.pop(key, None)
        client = self._make(loop)
        self._entries[id(loop)] = (loop, client)
        return client

    def pop(self) -> T | None:
        """This loop's client, forgotten here (the caller closes it), or None."""
        loop = asyncio.get_running_loop()
        entry = self._entries.pop(id(loop), None)
        return entry[1] if entry is not None and entry[0] is loop else None


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


class _ConnState:
    """What one forward's connection attempts learned: was the pooled connection reused, must the next be fresh."""

    __slots__ = ("fresh", "reused")

    def __init__(self) -> None:
        self.reused = False
        self.fresh = False


_AIOHTTP_CONN: contextvars.ContextVar[_ConnState | None] = contextvars.ContextVar("affinity_conn", default=None)
_connector_class: Any = None


def _aiohttp_connector(**options: Any) -> Any:
    """A ``TCPConnector`` that tells the forward whether its connection came from the pool (``_ConnState``), and
    hands out only a fresh connection when asked: the one retry a stale pooled connection deserves (rule 5)."""
    global _connector_class
    if _connector_class is None:
        import aiohttp

        class Connector(aiohttp.TCPConnector):
            async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
                conn = await super().connect(req, traces, timeout)
                state = _AIOHTTP_CONN.get()
                if state is not None:
                    while state.fresh and getattr(conn.protocol, "_affinity_used", False):
                        conn.close()  # idle as long as the stale one: discard, never reuse for the retry
                        conn = await super().connect(req, traces, timeout)
                    proto: Any = conn.protocol
                    state.reused = getattr(proto, "_affinity_used", False)
                    proto._affinity_used = True
                return conn

        _connector_class = Connector
    return _connector_class(**options)


class AiohttpTransport:
    """The aiohttp ASGI transport: one ``aiohttp.ClientSession`` per worker and event loop, created lazily in the
    running loop (a session is bound to the loop that made it; test clients and some hosts run several).

    Tuned for proxying, not browsing: no cookie jar (one user's ``Set-Cookie`` must never ride on another user's
    request), no automatic ``Accept``/``Accept-Encoding``/``User-Agent``/``Content-Type`` (the peer must see the
    client's headers, not ours), no decompression, no proxies from the environment, no retries of its own
    (aiohttp retries idempotent requests once by default; the failover rules are ``ForwardPlan``'s), response
    headers up to 64 KiB like the servers in front of us accept, and a keep-alive shorter than the peers' so we
    never reuse a connection the peer is closing.
    """

    def __init__(
        self,
        *,
        pool_size: int = 100,
        keepalive: float = 1.5,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.pool_size = pool_size
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._sessions: PerLoop[Any] = PerLoop(self._new_session, lambda session: not session.closed)

    def _new_session(self, loop: asyncio.AbstractEventLoop) -> Any:
        import aiohttp

        connector = _aiohttp_connector(
            limit=0, limit_per_host=self.pool_size, keepalive_timeout=self.keepalive, ttl_dns_cache=10
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            max_line_size=65536,
            max_field_size=65536,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            ),
        )
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        return session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        import aiohttp
        from multidict import CIMultiDict
        from yarl import URL

        session = self._sessions.get()
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), _text(value)) for name, value in request.headers
        )
        data: Any = None
        if request.body is not None:
            data = request.body
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        read_timeout = self.read_timeout
        timeout: Any = None
        if request.read_timeout is not None and request.read_timeout < read_timeout:
            read_timeout = max(request.read_timeout, 0.001)
            timeout = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self.connect_timeout, sock_read=read_timeout
            )
        # A bodiless idempotent request that fails on a reused pooled connection (the peer closed it as we sent)
        # is retried once on a fresh connection to the same peer: nothing says the peer is unwell (rule 5).
        state = _ConnState()
        token = _AIOHTTP_CONN.set(state)
        try:
            while True:
                try:
                    resp = await session.request(
                        request.method,
                        # Safe to join: the adapters only forward origin-form targets ("/..."), so the host is ours.
                        URL(request.url_base + request.target, encoded=True),
                        headers=headers,
                        data=data,
                        allow_redirects=False,
                        compress=None,
                        chunked=None,
                        **({"timeout": timeout} if timeout is not None else {}),
                    )
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if (
                        state.reused
                        and not state.fresh
                        and data is None
                        and request.method in IDEMPOTENT
                        and not isinstance(exc, aiohttp.ClientConnectorError)
                    ):
                        state.fresh = True
                        continue
                    raise
        except ClientGone:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(str(exc)) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectFailed(f"connect timeout: {exc}") from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamTimeout(f"no response headers within {read_timeout}s") from exc
        except aiohttp.ClientResponseError as exc:
            raise BadResponse(f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            if client_gone(exc):
                raise ClientGone(str(exc)) from exc
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            _AIOHTTP_CONN.reset(token)
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        session = self._sessions.pop()
        if session is not None:
            await session.close()


# ------------------------------------------------------------------------------------------------------ httpx


class _BlockAllCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that neither stores nor returns any cookie: a proxy must not have memory of users."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def _text(value: bytes) -> str:
    """A header value as aiohttp wants it (str). aiohttp writes header values as UTF-8, so UTF-8 bytes are decoded
    as UTF-8 to reach the peer unchanged; other non-ASCII bytes (rare, obsolete in HTTP) cannot survive aiohttp
    and go as latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _httpx_options(pool_size: int, keepalive: float, connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    """Proxy-safe settings for the httpx clients we create ourselves (async and sync alike)."""
    import httpx

    return {
        "trust_env": False,
        "follow_redirects": False,
        "timeout": httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
        "limits": httpx.Limits(max_connections=None, max_keepalive_connections=pool_size, keepalive_expiry=keepalive),
    }


def _proxy_safe(client: Any) -> None:
    """Make a user's httpx client safe to forward with: no cookie memory, and a loud warning about proxies from
    the environment (``trust_env=True`` would send peer traffic through ``HTTP_PROXY``)."""
    import httpx

    client.cookies = httpx.Cookies(http.cookiejar.CookieJar(policy=_BlockAllCookies()))
    if getattr(client, "trust_env", False):
        warnings.warn(
            "affinity-mw: the httpx client forwarding to peers has trust_env=True, so HTTP_PROXY/HTTPS_PROXY and "
            "NO_PROXY decide where peer traffic goes; create it with trust_env=False.",
            stacklevel=3,
        )


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
        keepalive: float = 1.5,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import httpx

        self._owns_client = client is None
        if client is None:
            client = httpx.AsyncClient(**_httpx_options(pool_size, keepalive, connect_timeout, read_timeout))
        _proxy_safe(client)
        self.client = client

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        import httpx

        req = httpx.Request(
            request.method, request.url_base + request.target, headers=_httpx_headers(request), content=request.body
        )
        try:
            resp = await self.client.send(req, stream=True, follow_redirects=False, auth=None)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ConnectFailed(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except httpx.TransportError as exc:
            if client_gone(exc):
                raise ClientGone(str(exc)) from exc
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


# ----------------------------------------------------------------------------------------------------- urllib3


class _Urllib3Response:
    __slots__ = ("_resp", "headers", "reason", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.reason: str = resp.reason or ""
        self.headers = response_headers((k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items())

    def iter_raw(self) -> Iterator[bytes]:
        import urllib3

        resp = self._resp
        try:
            # read1 returns what has arrived instead of waiting for a full block, so slow streams stay streams.
            while chunk := resp.read1(65536, decode_content=False):
                yield chunk
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc

    def close(self, *, reusable: bool) -> None:
        if not reusable:
            self._resp.close()  # a half-read connection must never serve the next request
        self._resp.release_conn()


class Urllib3Transport:
    """The default WSGI transport: one thread-safe ``urllib3.PoolManager`` per worker process.

    ``SKIP_HEADER`` stops urllib3 from adding ``User-Agent`` and ``Accept-Encoding`` the client did not send;
    ``decode_content=False`` keeps compressed bodies compressed; ``retries=False`` leaves failover to us. urllib3
    has no idle expiry of its own: pooled connections idle longer than ``keepalive`` are closed before reuse, so
    we never send on a connection the peer is about to close (gunicorn closes idle ones after 2 s).
    """

    def __init__(
        self,
        *,
        pool_size: int = 100,
        keepalive: float = 1.5,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import urllib3

        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )
        # Per thread: the connection state of the forward this thread is sending (see _expiring).
        self._conn = threading.local()
        self._pool.pool_classes_by_scheme = {
            "http": _expiring(urllib3.HTTPConnectionPool, keepalive, self._conn),
            "https": _expiring(urllib3.HTTPSConnectionPool, keepalive, self._conn),
        }
        self._skip = urllib3.util.SKIP_HEADER

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse:
        import urllib3

        headers = urllib3.HTTPHeaderDict()
        seen = set()
        for name, value in request.headers:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
            seen.add(name)
        for name in (b"user-agent", b"accept-encoding"):
            if name not in seen:
                headers[name.decode()] = self._skip
        chunked = False
        if request.body is not None:
            if request.content_length is None:
                chunked = True
            else:
                headers["content-length"] = str(request.content_length)
        elif request.method not in BODYLESS_METHODS:
            headers["content-length"] = "0"
        read_timeout = self.read_timeout
        if request.read_timeout is not None and request.read_timeout < read_timeout:
            read_timeout = max(request.read_timeout, 0.001)
        # A bodiless idempotent request that fails on a reused pooled connection (the peer closed it as we sent)
        # is retried once on a fresh connection to the same peer: nothing says the peer is unwell (rule 5).
        state = self._conn.state = _ConnState()
        try:
            while True:
                try:
                    # The target goes to the peer's own pool as the request path: it can never choose another host.
                    resp = self._pool.connection_from_url(request.url_base).urlopen(
                        request.method,
                        request.target,
                        body=request.body,  # type: ignore[arg-type]  # a sync iterable: the WSGI adapter builds it
                        headers=headers,
                        chunked=chunked,
                        redirect=False,
                        retries=False,
                        preload_content=False,
                        decode_content=False,
                        assert_same_host=False,
                        timeout=urllib3.Timeout(connect=self.connect_timeout, read=read_timeout),
                    )
                    break
                except (urllib3.exceptions.ProtocolError, OSError):
                    if state.reused and not state.fresh and request.body is None and request.method in IDEMPOTENT:
                        state.fresh = True
                        continue
                    raise
        except ClientGone:
            raise
        except urllib3.exceptions.ConnectTimeoutError as exc:  # NewConnectionError is a subclass
            raise ConnectFailed(str(exc)) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise UpstreamTimeout(f"no response headers within {read_timeout}s") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if client_gone(exc):
                raise ClientGone(str(exc)) from exc
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._conn.state = None
        return _Urllib3Response(resp)

    def close(self) -> None:
        self._pool.clear()


def _expiring(base: Any, keepalive: float, local: threading.local) -> Any:
    """A urllib3 pool class that closes connections idle for more than ``keepalive`` seconds before reusing them
    (a closed urllib3 connection reconnects on its next request). It records in the sending thread's
    ``_ConnState`` whether the connection handed out is a reused one, and closes it when a fresh one is asked for."""

    class ExpiringPool(base):  # type: ignore[misc]
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)
            idle_since = getattr(conn, "_affinity_idle_since", None)
            state = getattr(local, "state", None)
            if idle_since is not None and (
                time.monotonic() - idle_since > keepalive or (state is not None and state.fresh)
            ):
                conn.close()
            if state is not None:
                state.reused = getattr(conn, "sock", None) is not None
            return conn

        def _put_conn(self, conn: Any) -> None:
            if conn is not None:
                conn._affinity_idle_since = time.monotonic()
            super()._put_conn(conn)

    return ExpiringPool


class _HttpxSyncResponse:
    __slots__ = ("_resp", "headers", "reason", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status_code
        self.reason: str = resp.reason_phrase
        self.headers = response_headers(resp.headers.raw)

    def iter_raw(self) -> Iterator[bytes]:
        import httpx

        try:
            yield from self._resp.iter_raw()
        except httpx.TransportError as exc:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc

    def close(self, *, reusable: bool) -> None:
        self._resp.close()


class HttpxSyncTransport:
    """Forward WSGI requests through an ``httpx.Client``: yours, or one made with proxy-safe settings.

    As with :class:`HttpxTransport`, the client's cookie jar is replaced by one that stores nothing and requests
    are built directly, so client-wide cookies and headers never reach a forwarded request.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        pool_size: int = 100,
        keepalive: float = 1.5,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import httpx

        self._owns_client = client is None
        if client is None:
            client = httpx.Client(**_httpx_options(pool_size, keepalive, connect_timeout, read_timeout))
        _proxy_safe(client)
        self.client = client

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse:
        import httpx

        req = httpx.Request(
            request.method, request.url_base + request.target, headers=_httpx_headers(request), content=request.body
        )
        try:
            resp = self.client.send(req, stream=True, follow_redirects=False, auth=None)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ConnectFailed(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except httpx.TransportError as exc:
            if client_gone(exc):
                raise ClientGone(str(exc)) from exc
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        return _HttpxSyncResponse(resp)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _httpx_headers(request: UpstreamRequest) -> Headers:
    """httpx frames an iterable body as chunked unless told its length; a body-less POST still needs length 0."""
    headers = list(request.headers)
    if request.body is not None:
        if request.content_length is not None:
            headers.append((b"content-length", str(request.content_length).encode()))
    elif request.method not in BODYLESS_METHODS:
        headers.append((b"content-length", b"0"))
    return headers


# Methods whose requests carry no body by convention: a forward of one without a body sends no Content-Length.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


def async_transport(name: str, **options: Any) -> Any:
    """The ASGI transport ``AFFINITY_TRANSPORT`` names, built with the core's pool and timeout options."""
    if name == "httpx":
        return HttpxTransport(**options)
    if name == "asyncio":
        from .h1 import AsyncioTransport

        return AsyncioTransport(**options)
    return AiohttpTransport(**options)
