"""The built-in client's connections and pool: one ``asyncio.Protocol`` per pooled connection.

Why a client of our own: a forward needs far less than a general client does (no cookies, redirects, proxies,
decompression, URL parsing, retries, tracing), and under asyncio+h11 on 2 cores aiohttp's per-request machinery
cost more CPU than the hop itself (docs/benchmarks.md). This one writes the request head as one buffer, reads
responses by the rules of :mod:`.wire`, streams bodies with flow control in both directions, and keeps idle
connections per peer for ``keepalive`` seconds (below the peers' own keep-alive, so a connection the peer is
closing is never reused). A connection goes back to the pool only when its exchange ended exactly on a message
boundary: the whole request sent, the whole response read, nothing unread and nothing more announced.

It follows the transport contract of :mod:`affinity_mw.forward`: :class:`ConnectFailed` when nothing was sent,
:class:`SendFailed` when the connection broke before response headers (or mid-body), :class:`UpstreamTimeout`
when the peer is silent for ``read_timeout`` (for headers: the request's own, deadline-bounded timeout),
:class:`BadResponse` for a response that cannot be relayed, and no retries of its own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from ..forward import (
    IDEMPOTENT,
    BadResponse,
    ClientGone,
    ConnectFailed,
    ForwardError,
    Headers,
    SendFailed,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    lowered_response_headers,
)
from ..loops import PerLoop
from .connection import Connection
from .wire import broken, chunked_body, parse_head, request_head, response_framing, stray_body, take_head

__all__ = ["AsyncioTransport"]


class _Peer:
    """Where to connect for one ``url_base``, and its idle connections (most recently used last)."""

    __slots__ = ("host", "host_header", "idle", "port", "ssl")

    def __init__(self, url_base: str) -> None:
        parts = urlsplit(url_base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"cannot forward to {url_base!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host.encode("idna").decode("ascii")
        self.host_header = (host if parts.port is None else f"{host}:{parts.port}").encode("ascii")
        self.idle: list[Connection] = []


class _Response:
    """Response head plus a body stream; ``aclose(reusable=True)`` returns a fully read connection to the pool."""

    __slots__ = ("_conn", "_done", "_keep", "_length", "_peer", "_pool", "_sent", "headers", "status")

    def __init__(
        self,
        conn: Connection,
        peer: _Peer,
        pool: _Pool,
        status: int,
        headers: Headers,
        length: int | None,
        keep: bool,
        sent: asyncio.Future[None] | None,
    ) -> None:
        self._conn = conn
        self._peer = peer
        self._pool = pool
        self.status = status
        self.headers = headers
        # length: bytes still to read; -1 = chunked; None = until the peer closes.
        self._length = length
        self._done = length == 0
        self._keep = keep
        self._sent = sent

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._done:
            return
        if self._length == -1:
            async for chunk in chunked_body(self._conn):
                yield chunk
            self._done = True
            return
        # Fixed length, or until the peer closes: read here rather than through a second generator, since
        # almost every forwarded response is this case and most are one chunk.
        conn = self._conn
        remaining = self._length
        while True:
            buf = conn.buf
            if buf:
                if remaining is None or len(buf) <= remaining:
                    chunk = bytes(buf)
                    buf.clear()
                else:
                    chunk = bytes(buf[:remaining])
                    del buf[:remaining]
                conn.consumed()
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining == 0:
                        self._done = True  # before the yield: the consumer may stop at the last byte
                yield chunk
                if remaining == 0:
                    return
                continue
            if conn.eof:
                if remaining is None and not conn.timed_out and conn.error is None:
                    self._done = True
                    return  # a body delimited by the connection's clean close: complete
                raise broken(conn, "peer closed mid-body")
            await conn.wait_data()

    async def aclose(self, *, reusable: bool) -> None:
        conn = self._conn
        sent = self._sent
        body_sent = sent is None or (sent.done() and not sent.cancelled() and sent.exception() is None)
        if reusable and self._done and self._keep and body_sent and conn.usable:
            self._pool.put(self._peer, conn)
        else:
            if sent is not None and not sent.done():
                sent.cancel()
            conn.close()


class _Pool:
    """Idle connections per peer, for one event loop (a connection belongs to the loop that made it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keepalive: float) -> None:
        self.loop = loop
        self.keepalive = keepalive
        self.peers: dict[str, _Peer] = {}

    def peer(self, url_base: str) -> _Peer:
        peer = self.peers.get(url_base)
        if peer is None:
            peer = self.peers[url_base] = _Peer(url_base)
        return peer

    def take(self, peer: _Peer) -> Connection | None:
        idle = peer.idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < self.keepalive:
                conn.busy = True
                conn.received = False
                return conn
            conn.close()
        return None

    def put(self, peer: _Peer, conn: Connection) -> None:
        conn.release()
        idle = peer.idle
        now = conn.idle_since
        # Expire from the oldest end: connections idle past keepalive may already be closing on the peer.
        while idle and now - idle[0].idle_since >= self.keepalive:
            idle.pop(0).close()
        idle.append(conn)

    def close(self) -> None:
        for peer in self.peers.values():
            for conn in peer.idle:
                conn.close()
            peer.idle.clear()


class AsyncioTransport:
    """The lean ASGI transport (``AFFINITY_TRANSPORT=asyncio``): HTTP/1.1 over pooled asyncio connections.

    Tuned like the aiohttp one: no cookies, no headers of its own beyond ``Host`` (when the client sent none) and
    the body framing, no decompression, no retries; per-peer concurrency is bounded by the adapter's slots.
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
        self._pools: PerLoop[_Pool] = PerLoop(lambda loop: _Pool(loop, keepalive))

    async def _connect(self, pool: _Pool, peer: _Peer) -> Connection:
        loop = pool.loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(loop),
                    peer.host,
                    peer.port,
                    ssl=peer.ssl,
                    server_hostname=peer.host if peer.ssl else None,
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {peer.host}:{peer.port}: {exc!r}") from exc
        return conn

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        pool = self._pools.get()
        try:
            peer = pool.peer(request.url_base)
        except (ValueError, UnicodeError) as exc:
            raise ConnectFailed(f"cannot forward to {request.url_base!r}: {exc}") from exc
        timeout = self.read_timeout
        if request.read_timeout is not None and request.read_timeout < timeout:
            timeout = max(request.read_timeout, 0.001)
        head = request_head(request, peer.host_header)
        body = request.body
        length = request.content_length
        chunks: Any = None
        more = False
        remaining: int | None = None
        conn = pool.take(peer)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(pool, peer)  # refused: nothing read from the client, any method may fail over
        try:
            if body is not None:
                # The head goes out with the body's first bytes, never before them: a request whose body never
                # comes (a stalled client, or framing the server in front refuses after the head) never reaches
                # the peer's app, and a small body costs one write.
                chunks, first, more = await _first_chunk(body, length)
                remaining = None if length is None else length - len(first)
                if length is None:
                    head += (b"%x\r\n%b\r\n" % (len(first), first) if first else b"") + (b"" if more else b"0\r\n\r\n")
                else:
                    head += first
                if not conn.usable:
                    # The peer closed the connection while the client was slow to send: nothing was written yet.
                    conn.close()
                    reused = False
                    conn = await self._connect(pool, peer)
            return await self._exchange(pool, peer, conn, request, head, chunks, more, remaining, timeout)
        except SendFailed:
            conn.close()
            # A pooled connection the peer closed as we reused it: an idempotent request without
            # a body that got no byte back is re-sent once on a fresh connection to the same peer. Anything else
            # is the failover rules' business (ForwardPlan), not the transport's.
            if not reused or conn.received or body is not None or request.method not in IDEMPOTENT:
                raise
        except BaseException:
            conn.close()
            raise
        conn = await self._connect(pool, peer)
        try:
            return await self._exchange(pool, peer, conn, request, head, chunks, more, remaining, timeout)
        except BaseException:
            conn.close()
            raise

    async def _exchange(
        self,
        pool: _Pool,
        peer: _Peer,
        conn: Connection,
        request: UpstreamRequest,
        head: bytes,
        chunks: Any,
        more: bool,
        remaining: int | None,
        timeout: float,
    ) -> _Response:
        assert conn.transport is not None
        conn.head_phase = True
        conn.arm(timeout)
        try:
            conn.transport.write(head)
        except (OSError, RuntimeError) as exc:
            raise SendFailed(f"writing the request failed: {exc!r}") from exc
        sent: asyncio.Future[None] | None = None
        try:
            if more:
                # The rest goes out while we wait for the answer: a peer may answer (413, 401) before reading it.
                sent = asyncio.ensure_future(_send_body(conn, chunks, request.content_length, remaining))
                sent.add_done_callback(_retrieve)
            status, raw, version = await _read_head(conn, sent)
            stray = False
            while status < 200:
                if status == 101:
                    raise BadResponse("the peer switched protocols; upgrades are not forwarded")
                # 100 Continue, 103: checked, not relayed; one that declares a body may send bytes nobody reads.
                response_framing(request.method, status, raw, version)
                stray = stray or stray_body(request.method, status, raw)
                status, raw, version = await _read_head(conn, sent)
            conn.head_phase = False
            conn.arm(self.read_timeout)  # from here on: the longest silence while the body streams
            length, keep = response_framing(request.method, status, raw, version)
            keep = keep and not stray
        except BaseException:
            if sent is not None and not sent.done():
                sent.cancel()
            raise
        return _Response(conn, peer, pool, status, lowered_response_headers(raw), length, keep, sent)

    async def aclose(self) -> None:
        pool = self._pools.pop()
        if pool is not None:
            pool.close()


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark the body task's outcome as seen: a failed upload is reported through the response, not the log."""
    if not task.cancelled():
        task.exception()


async def _read_head(
    conn: Connection, sent: asyncio.Future[None] | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    while True:
        head = take_head(conn.buf)
        if head is not None:
            return parse_head(head)
        if conn.eof:
            if sent is not None and sent.done() and not sent.cancelled():
                exc = sent.exception()
                if isinstance(exc, (ClientGone, ForwardError)):
                    raise exc
                if exc is not None:
                    raise SendFailed(f"sending the request body failed: {exc!r}") from exc
            if conn.timed_out:
                raise UpstreamTimeout("no response headers in time")
            raise SendFailed(f"peer closed before answering: {conn.error!r}" if conn.error else "peer closed")
        await conn.wait_data()


async def _first_chunk(body: Any, length: int | None) -> tuple[Any, bytes, bool]:
    """The body's iterator, its first non-empty chunk, and whether more may follow. When the first chunk is the
    whole Content-Length, the iterator is run to its end here, so no task is needed for the rest."""
    if hasattr(body, "__aiter__"):
        aiterator = body.__aiter__()
        first = b""
        async for chunk in aiterator:
            if chunk:
                first = chunk
                break
        if length is None or len(first) < length:
            return aiterator, first, bool(first)
        if len(first) > length:
            raise SendFailed("the request body is longer than its Content-Length")
        async for chunk in aiterator:
            if chunk:
                raise SendFailed("the request body is longer than its Content-Length")
        return aiterator, first, False
    iterator = iter(body)
    first = next((chunk for chunk in iterator if chunk), b"")
    if length is not None and len(first) >= length:
        if len(first) > length or any(iterator):
            raise SendFailed("the request body is longer than its Content-Length")
        return iterator, first, False
    return iterator, first, bool(first)


async def _send_body(conn: Connection, body: Any, length: int | None, remaining: int | None) -> None:
    """Stream the rest of the request body (after the first chunk went with the head). A client that goes away
    mid-upload aborts the connection (ClientGone); a body that is not exactly its Content-Length, or any other
    failure, closes it, so a half-sent request can never be mistaken for a complete one."""
    transport = conn.transport
    assert transport is not None
    chunked = length is None
    try:
        if hasattr(body, "__aiter__"):
            aiterator = body.__aiter__()
            while True:
                conn.waiting_client = True
                try:
                    chunk = await aiterator.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    conn.waiting_client = False
                remaining = await _write(conn, transport, chunk, chunked, remaining)
        else:
            for chunk in body:
                remaining = await _write(conn, transport, chunk, chunked, remaining)
        if chunked:
            transport.write(b"0\r\n\r\n")
        elif remaining:
            raise SendFailed(f"the request body ended {remaining} bytes short of its Content-Length")
    except ClientGone:
        conn.close()
        raise
    except (OSError, RuntimeError) as exc:
        # The peer stopped reading (it may have answered already, e.g. 413): the connection is not reusable.
        conn.close()
        raise SendFailed(f"sending the request body failed: {exc!r}") from exc
    except BaseException:
        conn.close()
        raise


async def _write(
    conn: Connection, transport: asyncio.Transport, chunk: bytes, chunked: bool, remaining: int | None
) -> int | None:
    if not chunk:
        return remaining  # an empty chunk would end a chunked body
    if chunked:
        transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    else:
        assert remaining is not None
        if len(chunk) > remaining:
            raise SendFailed("the request body is longer than its Content-Length")
        remaining -= len(chunk)
        transport.write(chunk)
    conn.activity()  # the peer's silence is timed from the end of the upload, not its start
    if conn.write_paused or conn.eof:
        await conn.drain()
    return remaining
