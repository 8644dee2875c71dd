"""Forwarding through aiohttp (``AFFINITY_TRANSPORT=aiohttp``): one ``ClientSession`` per worker and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..forward import (
    IDEMPOTENT,
    BadResponse,
    ClientGone,
    ConnectFailed,
    ForwardError,
    SendFailed,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    client_gone,
    response_headers,
)
from ..h1.wire import check_request_fields, stray_body
from ..loops import PerLoop
from ._common import ConnState

__all__ = ["AiohttpTransport"]


@contextlib.contextmanager
def _mapped(read_timeout: float, *, body: bool = False) -> Iterator[None]:
    """aiohttp's exceptions as the forward's (:mod:`affinity_mw.forward`), in one place: whether anything reached
    the peer decides what the failover rules may do. Once the body streams, every failure is a broken connection."""
    import aiohttp

    try:
        yield
    except (ClientGone, ForwardError):
        raise
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        if body:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise ConnectFailed(str(exc)) from exc
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise ConnectFailed(f"connect timeout: {exc}") from exc
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            raise UpstreamTimeout(f"no response headers within {read_timeout}s") from exc
        if client_gone(exc):
            raise ClientGone(str(exc)) from exc
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientResponseError as exc:
        raise BadResponse(f"{type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientError as exc:
        if client_gone(exc):
            raise ClientGone(str(exc)) from exc
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers = response_headers(resp.raw_headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with _mapped(0.0, body=True):
            async for chunk in self._resp.content.iter_any():
                yield chunk

    async def aclose(self, *, reusable: bool) -> None:
        # release() hands a fully read connection back to the pool; close() discards one we stopped reading
        # early, so a half-read body can never be mistaken for the next response. Both are synchronous, so a
        # cancelled client cannot interrupt them and leak a pool slot.
        if reusable:
            self._resp.release()
        else:
            self._resp.close()


_AIOHTTP_CONN: contextvars.ContextVar[ConnState | None] = contextvars.ContextVar("affinity_conn", default=None)
_connector_class: Any = None


def _aiohttp_connector(**options: Any) -> Any:
    """A ``TCPConnector`` that tells the forward whether its connection came from the pool (``ConnState``), and
    hands out only a fresh connection when asked: the one retry a stale pooled connection deserves."""
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
                    state.conn = proto
                    proto._affinity_used = True
                return conn

        _connector_class = Connector
    return _connector_class(**options)


def _text(value: bytes) -> str:
    """A header value as aiohttp wants it (str). aiohttp writes header values as UTF-8, so UTF-8 bytes are decoded
    as UTF-8 to reach the peer unchanged; other non-ASCII bytes (rare, obsolete in HTTP) cannot survive aiohttp
    and go as latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class AiohttpTransport:
    """The aiohttp ASGI transport: one ``aiohttp.ClientSession`` per worker and event loop, created lazily in the
    running loop (a session is bound to the loop that made it; test clients and some hosts run several).

    Tuned for proxying, not browsing: no cookie jar (one user's ``Set-Cookie`` must never ride on another user's
    request), no automatic ``Accept``/``Accept-Encoding``/``User-Agent``/``Content-Type`` (the peer must see the
    client's headers, not ours), no decompression, no proxies from the environment, no retries of its own
    (aiohttp retries idempotent requests once by default; the failover rules are ``ForwardPlan``'s), response
    headers up to 64 KiB like the servers in front of us accept, and a keep-alive shorter than the peers' so we
    never reuse a connection the peer is closing. A response that declares a body it may not carry (a 304 with a
    length) closes its connection: aiohttp would pool it, and the body the peer writes late would be the next
    user's response.
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

        check_request_fields(request.headers)
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
        # is retried once on a fresh connection to the same peer: nothing says the peer is unwell.
        state = ConnState()
        token = _AIOHTTP_CONN.set(state)
        try:
            with _mapped(read_timeout):
                while True:
                    try:
                        resp = await session.request(
                            request.method,
                            # Safe to join: the adapters only forward origin-form targets ("/..."), so the host is
                            # ours.
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
        finally:
            _AIOHTTP_CONN.reset(token)
        if stray_body(request.method, resp.status, resp.raw_headers) and state.conn is not None:
            # aiohttp has already put the connection back in its pool (the response had no body to read):
            # closed, it is skipped there as dead.
            state.conn.close()  # type: ignore[attr-defined]
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        session = self._sessions.pop()
        if session is not None:
            await session.close()
