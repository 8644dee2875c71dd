"""Forwarding through httpx (``AFFINITY_TRANSPORT=httpx``, or a client passed in): async and sync alike.

httpx is not the default hot path (its pool costs more CPU per request than the hop itself, docs/benchmarks.md);
it stays for users who pass their own client, and for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..forward import (
    ClientGone,
    ConnectFailed,
    ForwardError,
    Headers,
    SendFailed,
    SyncUpstreamResponse,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    client_gone,
    response_headers,
)
from ..h1.wire import check_request_fields, stray_body
from ._common import BODYLESS_METHODS

__all__ = ["HttpxSyncTransport", "HttpxTransport", "httpx_options"]


@contextlib.contextmanager
def _mapped(*, body: bool = False) -> Iterator[None]:
    """httpx's exceptions as the forward's (:mod:`affinity_mw.forward`), in one place (httpx's own
    ``map_httpcore_exceptions`` is the model). Once the body streams, every failure is a broken connection."""
    import httpx

    try:
        yield
    except (ClientGone, ForwardError):
        raise
    except httpx.TransportError as exc:
        if body:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            raise ConnectFailed(str(exc)) from exc
        if isinstance(exc, httpx.TimeoutException):
            raise UpstreamTimeout(str(exc)) from exc
        if client_gone(exc):
            raise ClientGone(str(exc)) from exc
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc


class _BlockAllCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that neither stores nor returns any cookie: a proxy must not have memory of users."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def httpx_options(pool_size: int, keepalive: float, connect_timeout: float, read_timeout: float) -> dict[str, Any]:
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


def _request(request: UpstreamRequest) -> Any:
    """The httpx request, built directly (never with ``client.build_request``: no client-wide cookies or headers).
    httpx frames an iterable body as chunked unless told its length; a body-less POST still needs length 0."""
    import httpx

    check_request_fields(request.headers)
    headers: Headers = list(request.headers)
    if request.body is not None:
        if request.content_length is not None:
            headers.append((b"content-length", str(request.content_length).encode()))
    elif request.method not in BODYLESS_METHODS:
        headers.append((b"content-length", b"0"))
    return httpx.Request(request.method, request.url_base + request.target, headers=headers, content=request.body)


def _poisoned_stream(method: str, resp: Any) -> Any:
    """The connection's network stream when the response declares a body it may not carry (a 304 with a length):
    httpcore would pool the connection, and the body the peer writes late would be the next user's response.
    Closed before the (empty) body is read, the connection is dropped as dead when the pool next looks at it."""
    if stray_body(method, resp.status_code, resp.headers.raw):
        return resp.extensions.get("network_stream")
    return None


class _HttpxResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status_code
        self.headers = response_headers(resp.headers.raw)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with _mapped(body=True):
            async for chunk in self._resp.aiter_raw():
                yield chunk

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
            client = httpx.AsyncClient(**httpx_options(pool_size, keepalive, connect_timeout, read_timeout))
        _proxy_safe(client)
        self.client = client

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        req = _request(request)
        with _mapped():
            resp = await self.client.send(req, stream=True, follow_redirects=False, auth=None)
        stream = _poisoned_stream(request.method, resp)
        if stream is not None:
            await stream.aclose()
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


class _HttpxSyncResponse:
    __slots__ = ("_resp", "headers", "reason", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status_code
        self.reason: str = resp.reason_phrase
        self.headers = response_headers(resp.headers.raw)

    def iter_raw(self) -> Iterator[bytes]:
        with _mapped(body=True):
            yield from self._resp.iter_raw()

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
            client = httpx.Client(**httpx_options(pool_size, keepalive, connect_timeout, read_timeout))
        _proxy_safe(client)
        self.client = client

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse:
        req = _request(request)
        with _mapped():
            resp = self.client.send(req, stream=True, follow_redirects=False, auth=None)
        stream = _poisoned_stream(request.method, resp)
        if stream is not None:
            stream.close()
        return _HttpxSyncResponse(resp)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
