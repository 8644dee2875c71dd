"""The benchmark's wrapped app forwarding through a client that ``affinity_mw`` does not ship.

``BENCH_TRANSPORT`` chooses it; everything else comes from ``AFFINITY_*`` as for ``bench.app:wrapped``:

* ``httpx-aiohttp``: an ``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport``, passed to the middleware
  as ``transport=`` so it is wrapped in :class:`~affinity_mw.transports.HttpxTransport` like any httpx client.
* ``pyreqwest``: :class:`PyreqwestTransport`, a small :class:`~affinity_mw.forward.AsyncTransport` over
  pyreqwest's async client (Rust reqwest + hyper).

Neither package is a dependency of ``affinity_mw``: ``bash bench/setup.sh --extra`` installs both, and
``bench/http_bench.py --extra-transports`` runs them. What each can and cannot be made to do as a proxy's client
(checked by ``tests/test_extra_transports.py``):

httpx-aiohttp (0.2): proxy-safe with this set-up. Its transport builds a default ``aiohttp.ClientSession``,
which keeps cookies, adds ``Accept``/``Accept-Encoding``/``User-Agent`` and retries a request once on a fresh
connection, so it is given a session made like ``AiohttpTransport``'s (``DummyCookieJar``, those headers skipped,
``trust_env=False``, ``_retry_connection`` off). It already passes ``auto_decompress=False``,
``allow_redirects=False`` and the raw header list. Two things are corrected in :class:`_ProxySafeAiohttpTransport`:
it maps every ``aiohttp.ClientConnectionError`` (a peer that closed or reset the connection *after* the request was
written included) to ``httpx.ConnectTimeout``, which ``HttpxTransport`` must read as "nothing sent", so a
bodiless POST could be replayed on the next node: only connector errors stay "connect" errors here, the rest
become ``httpx.RemoteProtocolError`` (``SendFailed``); and it hands aiohttp an ``httpx.Headers``, whose
``items()`` joins repeated request headers with ", ": the raw list is handed over instead.

pyreqwest (0.15, reqwest 0.13): not proxy-safe. Decompression (gzip/brotli/zstd/deflate), redirects, proxies,
the cookie store and title-casing of header names can all be turned off, and bodies stream both ways, but
reqwest adds ``Accept: */*`` and ``User-Agent: python-pyreqwest/1.0.0`` to every request that has none, after any
middleware, and no builder option removes them (``user_agent("")`` sends an empty one); response header values
that are not visible ASCII cannot be read at all (``ValueError: failed to convert header to a str``, answered
502 here); header values are ``str`` (UTF-8 passes, other non-ASCII bytes change); and reqwest's default retry of
requests the peer provably never processed cannot be switched off from Python. pyreqwest also raises its
``ConnectError`` when a peer closes the connection after the request was written, so the adapter reads hyper's
cause ("client error (Connect)") to tell "nothing sent" from "sent, then broke". The benchmark's request (wrk
sends neither header) reaches the owner with those two headers added; its response is unaffected.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from affinity_mw.forward import (
    BadResponse,
    ClientGone,
    ConnectFailed,
    SendFailed,
    Unforwardable,
    UpstreamRequest,
    UpstreamTimeout,
    client_gone,
    response_headers,
)
from affinity_mw.transports import PerLoop

TRANSPORTS = ("httpx-aiohttp", "pyreqwest")
# Methods that carry no body by convention, as in affinity_mw.transports: no Content-Length: 0 for them.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


def _text(value: bytes) -> str:
    """A header value as a str-only client wants it: UTF-8 bytes reach the peer unchanged, others as latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


# ----------------------------------------------------------------------------------------------- httpx-aiohttp


def _aiohttp_session(pool_size: int, keepalive: float) -> Any:
    """A ClientSession made like affinity_mw's AiohttpTransport's: no cookies, no headers of its own, no proxies
    from the environment, no decompression, no retry of its own."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=pool_size, keepalive_timeout=keepalive),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        max_line_size=65536,
        max_field_size=65536,
    )
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


def _proxy_safe_aiohttp_transport_class() -> Any:
    import aiohttp
    import httpx
    import httpx_aiohttp
    from multidict import CIMultiDict

    class _ProxySafeAiohttpTransport(httpx_aiohttp.AiohttpTransport):  # type: ignore[misc]
        """httpx_aiohttp.AiohttpTransport with repeated request headers kept and "sent, then broke" told apart
        from "could not connect" (see the module's docstring)."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            # aiohttp takes a MultiDict as it is; an httpx.Headers would be read through items(), which merges.
            request.headers = CIMultiDict(  # type: ignore[assignment]
                (name.decode("latin-1"), _text(value)) for name, value in request.headers.raw
            )
            try:
                return await super().handle_async_request(request)  # type: ignore[no-any-return]
            except httpx.ConnectTimeout as exc:
                cause = exc.__cause__
                if cause is None or isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
                    raise
                raise httpx.RemoteProtocolError(f"{type(cause).__name__}: {cause}") from cause
            except aiohttp.ClientResponseError as exc:  # a malformed response: not in httpx_aiohttp's map
                raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc

    return _ProxySafeAiohttpTransport


def httpx_aiohttp_client(
    *, pool_size: int = 100, keepalive: float = 1.5, connect_timeout: float = 1.0, read_timeout: float = 30.0
) -> Any:
    """An ``httpx.AsyncClient`` over aiohttp, with the settings affinity_mw gives the httpx clients it makes.

    The aiohttp session is created on first use, in the running loop (a session belongs to its loop)."""
    import httpx

    from affinity_mw.transports import httpx_options

    transport = _proxy_safe_aiohttp_transport_class()(client=lambda: _aiohttp_session(pool_size, keepalive))
    return httpx.AsyncClient(transport=transport, **httpx_options(pool_size, keepalive, connect_timeout, read_timeout))


# --------------------------------------------------------------------------------------------------- pyreqwest


class _PyreqwestResponse:
    __slots__ = ("_request", "_resp", "headers", "status")

    def __init__(self, request: Any, resp: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self._request = request
        self._resp = resp
        self.status: int = resp.status
        self.headers = headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        from pyreqwest.exceptions import PyreqwestError

        reader = self._resp.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield bytes(chunk)
        except PyreqwestError as exc:
            raise SendFailed(f"peer connection broke mid-body: {exc!r}") from exc

    async def aclose(self, *, reusable: bool) -> None:
        # Dropping a stream that was not read to the end makes hyper discard its connection, never reuse it.
        await asyncio.shield(self._request.__aexit__(None, None, None))


class PyreqwestTransport:
    """Forward through pyreqwest's async client, configured as a proxy as far as it can be (module docstring).

    One client per event loop, made lazily. The per-try wait for response headers (``request.read_timeout``)
    bounds only the header phase; the client's own read timeout bounds each read of the body."""

    def __init__(
        self, *, pool_size: int = 100, keepalive: float = 1.5, connect_timeout: float = 1.0, read_timeout: float = 30.0
    ) -> None:
        self.pool_size = pool_size
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._clients: PerLoop[Any] = PerLoop(self._new_client)

    def _new_client(self, loop: asyncio.AbstractEventLoop) -> Any:
        from pyreqwest.client import ClientBuilder

        seconds = datetime.timedelta
        client = (
            ClientBuilder()
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .follow_redirects(False)
            .referer(False)
            .no_proxy()
            .default_cookie_store(False)
            .http1_only()
            .http1_lower_case_headers()
            .max_connections(None)
            .pool_max_idle_per_host(self.pool_size)
            .pool_idle_timeout(seconds(seconds=self.keepalive))
            .connect_timeout(seconds(seconds=self.connect_timeout))
            .read_timeout(seconds(seconds=self.read_timeout))
            .build()
        )
        return client

    async def send(self, request: UpstreamRequest) -> _PyreqwestResponse:
        from pyreqwest.exceptions import (
            BuilderError,
            ConnectError,
            ConnectTimeoutError,
            DecodeError,
            PyreqwestError,
            RequestTimeoutError,
        )

        headers = [(name.decode("latin-1"), _text(value)) for name, value in request.headers]
        builder = self._clients.get().request(request.method, request.url_base + request.target)
        if request.body is not None:
            if request.content_length is not None:
                headers.append(("content-length", str(request.content_length)))
            builder = builder.body_stream(request.body)
        elif request.method not in _BODYLESS:
            headers.append(("content-length", "0"))
        wait = self.read_timeout
        if request.read_timeout is not None and request.read_timeout < wait:
            wait = max(request.read_timeout, 0.001)
        try:
            outgoing = builder.headers(headers).build_streamed()
            async with asyncio.timeout(wait):  # the wait for response headers only
                resp = await outgoing.__aenter__()
        except ClientGone:
            raise
        except BuilderError as exc:
            raise Unforwardable(str(exc)) from exc
        except ConnectTimeoutError as exc:
            raise ConnectFailed(f"{exc}: {_causes(exc)}") from exc
        except ConnectError as exc:
            # pyreqwest raises ConnectError for any hyper "client error", including "(SendRequest) connection
            # closed before message completed", after the request went out: only "(Connect)" means nothing was sent.
            if "client error (Connect)" in _causes(exc):
                raise ConnectFailed(f"{exc}: {_causes(exc)}") from exc
            raise SendFailed(f"{type(exc).__name__}: {exc}: {_causes(exc)}") from exc
        except (RequestTimeoutError, TimeoutError) as exc:
            raise UpstreamTimeout(f"no response headers within {wait}s") from exc
        except DecodeError as exc:
            raise BadResponse(f"{exc}: {_causes(exc)}") from exc
        except PyreqwestError as exc:
            if client_gone(exc):
                raise ClientGone(str(exc)) from exc
            raise SendFailed(f"{type(exc).__name__}: {exc}: {_causes(exc)}") from exc
        try:
            raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in resp.headers.items()]
        except (ValueError, UnicodeEncodeError) as exc:  # a value that is not visible ASCII cannot be read
            await asyncio.shield(outgoing.__aexit__(None, None, None))
            raise BadResponse(f"response header pyreqwest cannot read: {exc}") from exc
        return _PyreqwestResponse(outgoing, resp, response_headers(raw))

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            await client.close()


def _causes(exc: Any) -> str:
    details = getattr(exc, "details", None) or {}
    return "; ".join(c.get("message", "") for c in details.get("causes") or [])


# --------------------------------------------------------------------------------------------------------- app


def make_transport(name: str, **options: Any) -> Any:
    """The ``transport=`` for AffinityMiddleware: an httpx client (wrapped in HttpxTransport there) or an
    AsyncTransport."""
    if name == "httpx-aiohttp":
        return httpx_aiohttp_client(**options)
    if name == "pyreqwest":
        return PyreqwestTransport(**options)
    raise ValueError(f"BENCH_TRANSPORT must be one of {', '.join(TRANSPORTS)}, not {name!r}")


def __getattr__(name: str) -> object:
    # Built on first access, as bench.app's: the ASGI server imports ``bench.extra_transports:wrapped``.
    if name == "wrapped":
        from affinity_mw import AffinityMiddleware
        from affinity_mw.config import Settings
        from bench.app import make_app

        s = Settings.load()
        options = {
            "pool_size": s.pool_size,
            "keepalive": s.keepalive,
            "connect_timeout": s.connect_timeout,
            "read_timeout": s.read_timeout,
        }
        app = AffinityMiddleware(make_app(), transport=make_transport(os.environ.get("BENCH_TRANSPORT", ""), **options))
        globals()["wrapped"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
