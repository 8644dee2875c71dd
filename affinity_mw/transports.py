"""The network clients that carry a forward, behind the small interfaces in :mod:`affinity_mw.forward`.

Defaults chosen by measurement on a 2-core box (DESIGN.md section 8): aiohttp for ASGI (0.45 x the bare app's
throughput, against 0.033 x for one shared ``httpx.AsyncClient``) and urllib3 for WSGI (0.46 x, against 0.34 x
for ``httpx.Client``). httpx stays available for users who bring their own client.

Every transport is configured as a proxy, not a browser: no cookie jar (one user's ``Set-Cookie`` must never ride
on another user's request), no injected ``Accept``/``Accept-Encoding``/``User-Agent``, no decompression, no
proxies from the environment, no redirects followed, no retries of its own (the failover rules are
:class:`~affinity_mw.forward.ForwardPlan`'s).
"""

from __future__ import annotations

import asyncio
import http.cookiejar
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .forward import (
    IDEMPOTENT,
    ConnectFailed,
    Headers,
    SendFailed,
    SyncUpstreamResponse,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    response_headers,
)

__all__ = ["AiohttpTransport", "HttpxSyncTransport", "HttpxTransport", "Urllib3Transport"]

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

        req = httpx.Request(
            request.method, request.url_base + request.target, headers=_httpx_headers(request), content=request.body
        )
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
    ``decode_content=False`` keeps compressed bodies compressed; ``retries=False`` leaves failover to us.
    """

    def __init__(
        self,
        *,
        pool_size: int = 100,
        keepalive: float = 3.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import urllib3

        self.read_timeout = read_timeout
        self._pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )
        self._skip = urllib3.util.SKIP_HEADER

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse:
        import urllib3

        headers = urllib3.HTTPHeaderDict()
        seen = set()
        for name, value in request.headers:
            key = name.decode("latin-1")
            headers.add(key, value.decode("latin-1"))
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
        elif request.method not in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"):
            headers["content-length"] = "0"
        # A pooled connection the peer closed while idle fails on first use. Like aiohttp (and RFC 9112 9.3.1),
        # an idempotent request without a body is retried once on a fresh connection to the same peer: it stays
        # on the key's owner, and nothing the peer executed can be executed twice.
        retry_stale = request.body is None and request.method in IDEMPOTENT
        while True:
            try:
                resp = self._pool.urlopen(
                    request.method,
                    request.url_base + request.target,
                    body=request.body,
                    headers=headers,
                    chunked=chunked,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=False,
                    assert_same_host=False,
                )
            except urllib3.exceptions.ConnectTimeoutError as exc:  # NewConnectionError is a subclass
                raise ConnectFailed(str(exc)) from exc
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise UpstreamTimeout(f"no response headers within {self.read_timeout}s") from exc
            except urllib3.exceptions.ProtocolError as exc:
                if retry_stale:
                    retry_stale = False
                    continue
                raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
            return _Urllib3Response(resp)

    def close(self) -> None:
        self._pool.clear()


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
        keepalive: float = 3.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 30.0,
    ) -> None:
        import httpx

        self._owns_client = client is None
        if client is None:
            client = httpx.Client(
                trust_env=False,
                follow_redirects=False,
                timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
                limits=httpx.Limits(
                    max_connections=None, max_keepalive_connections=pool_size, keepalive_expiry=keepalive
                ),
            )
        client.cookies = httpx.Cookies(http.cookiejar.CookieJar(policy=_BlockAllCookies()))
        self.client = client

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse:
        import httpx

        req = httpx.Request(
            request.method, request.url_base + request.target, headers=_httpx_headers(request), content=request.body
        )
        try:
            resp = self.client.send(req, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ConnectFailed(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except httpx.TransportError as exc:
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
    elif request.method not in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"):
        headers.append((b"content-length", b"0"))
    return headers
