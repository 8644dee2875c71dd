"""A lean HTTP/1.1 client for forwarding under asyncio: one ``asyncio.Protocol`` per pooled connection.

Why a client of our own: a forward needs far less than a general client does (no cookies, redirects, proxies,
decompression, URL parsing, retries, tracing), and under asyncio+h11 on 2 cores aiohttp's per-request machinery
cost more CPU than the hop itself (docs/benchmarks.md). This one writes the request head as one buffer, parses
the response head with ``bytes.split``, streams bodies with flow control in both directions, and keeps idle
connections per peer for ``keepalive`` seconds (below the peers' own keep-alive: docs/design.md).

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

from .forward import (
    IDEMPOTENT,
    BadResponse,
    ClientGone,
    ConnectFailed,
    ForwardError,
    Headers,
    SendFailed,
    Unforwardable,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    lowered_response_headers,
)
from .transports import PerLoop

__all__ = ["AsyncioTransport"]

_MAX_HEAD = 65536  # response head limit, as the servers in front of us accept (aiohttp transport: same)
_HIGH_WATER = 256 * 1024  # unread response bytes before reading from the peer is paused
_LOW_WATER = 64 * 1024
_CHUNK = 65536


class _Connection(asyncio.Protocol):
    """One TCP connection to a peer; its buffer, wakeups, flow control and silence timer."""

    __slots__ = (
        "_drain",
        "_last_data",
        "_timeout",
        "_timer",
        "_waiter",
        "armed",
        "buf",
        "busy",
        "eof",
        "error",
        "head_phase",
        "idle_since",
        "loop",
        "paused",
        "received",
        "timed_out",
        "transport",
        "waiting_client",
        "write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.head_phase = False
        self.busy = True
        self.armed = False
        self.received = False
        self.paused = False
        self.write_paused = False
        self.timed_out = False
        self.waiting_client = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_data = 0.0

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for on an idle connection: it is out of sync, never reuse it.
            self.eof = True
            assert self.transport is not None
            self.transport.abort()
            return
        self.buf += data
        self.received = True
        if not self.head_phase:
            # Until the response head is complete, the peer's bytes do not reset the clock: the per-try timeout
            # bounds the wait for response headers, and a peer trickling 1xx lines or head bytes must not stretch
            # it past the overall deadline (docs/reliability.md). Our own writes and waits still do.
            self._last_data = self.loop.time()
        if not self.paused and len(self.buf) > _HIGH_WATER:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._cancel_timer()
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("peer connection lost while sending"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- helpers for the request/response code
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self.eof:
            raise ConnectionResetError("peer connection closed while sending")
        if self.write_paused:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def consumed(self) -> None:
        if self.paused and len(self.buf) < _LOW_WATER and not self.eof:
            self.paused = False
            self._last_data = self.loop.time()  # the peer's silence counts again from now
            assert self.transport is not None
            self.transport.resume_reading()

    def arm(self, timeout: float) -> None:
        """Abort the connection if the peer stays silent for ``timeout`` seconds.

        One timer per connection, checked lazily: re-arming (headers, then body, then the next exchange on the
        same pooled connection) or activity only moves the deadline the timer re-reads when it fires, so the hot
        path schedules no callback at all once the connection has one. A timer that would first fire later than
        the new deadline is replaced, so a shorter timeout is never stretched.
        """
        self._timeout = timeout
        self._last_data = now = self.loop.time()
        self.armed = True
        timer = self._timer
        if timer is not None:
            if timer.when() <= now + timeout:
                return
            timer.cancel()
        self._timer = self.loop.call_at(now + timeout, self._check_silence)

    def activity(self) -> None:
        self._last_data = self.loop.time()

    def _check_silence(self) -> None:
        if not self.armed:
            # Idle in the pool, or taken for a request that is still waiting for its client's first body bytes:
            # nothing of the peer's to time until the next exchange arms it again.
            self._timer = None
            return
        now = self.loop.time()
        if self.paused or self.waiting_client:
            # Waiting on our side (a slow downstream reader, or the client's next upload chunk) is not the
            # peer's silence: a slow client must never turn into a 504 that sets a healthy peer aside.
            self._last_data = now
        idle = now - self._last_data
        if idle >= self._timeout:
            self._timer = None
            self.timed_out = True
            assert self.transport is not None
            self.transport.abort()
        else:
            self._timer = self.loop.call_at(self._last_data + self._timeout, self._check_silence)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self) -> None:
        # The silence timer stays: it finds the connection disarmed and lapses, or the next exchange re-arms it.
        self.armed = False
        self.busy = False
        self.idle_since = self.loop.time()

    def close(self) -> None:
        self._cancel_timer()
        self.eof = True
        if self.error is None:
            self.error = ConnectionAbortedError("closed locally")  # never mistaken for the peer's clean close
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return not self.eof and not self.buf and self.transport is not None and not self.transport.is_closing()


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
        self.idle: list[_Connection] = []


class _Response:
    """Response head plus a body stream; ``aclose(reusable=True)`` returns a fully read connection to the pool."""

    __slots__ = ("_conn", "_done", "_keep", "_length", "_peer", "_pool", "_sent", "headers", "status")

    def __init__(
        self,
        conn: _Connection,
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
            async for chunk in self._chunked():
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
                raise _broken(conn, "peer closed mid-body")
            await conn.wait_data()

    async def _chunked(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            line = await _read_line(conn)
            size_text = line.split(b";", 1)[0].rstrip(b" \t")
            if not 0 < len(size_text) <= 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise BadResponse(f"bad chunk size line {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                while await _read_line(conn):  # trailers are dropped (hop-by-hop unless declared)
                    pass
                return
            while size:
                buf = conn.buf
                if not buf:
                    if conn.eof:
                        raise _broken(conn, "peer closed mid-chunk")
                    await conn.wait_data()
                    continue
                take = min(size, len(buf), _CHUNK * 4)
                chunk = bytes(buf[:take])
                del buf[:take]
                conn.consumed()
                size -= take
                yield chunk
            if await _read_line(conn):
                raise BadResponse("chunk data not followed by CRLF")

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

    def take(self, peer: _Peer) -> _Connection | None:
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

    def put(self, peer: _Peer, conn: _Connection) -> None:
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

    async def _connect(self, pool: _Pool, peer: _Peer) -> _Connection:
        loop = pool.loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
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
        head = _request_head(request, peer)
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
            # A pooled connection the peer closed as we reused it (docs/design.md): an idempotent request without
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
        conn: _Connection,
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
            status, raw, version11 = await _read_head(conn, sent)
            while 100 <= status < 200:
                if status == 101:
                    raise BadResponse("the peer switched protocols; upgrades are not forwarded")
                status, raw, version11 = await _read_head(conn, sent)  # 100 Continue, 103: not relayed
            conn.head_phase = False
            conn.arm(self.read_timeout)  # from here on: the longest silence while the body streams
            length, keep = _response_framing(request.method, status, raw, version11)
        except BaseException:
            if sent is not None and not sent.done():
                sent.cancel()
            raise
        return _Response(conn, peer, pool, status, lowered_response_headers(raw), length, keep, sent)

    async def aclose(self) -> None:
        pool = self._pools.pop()
        if pool is not None:
            pool.close()


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _request_head(request: UpstreamRequest, peer: _Peer) -> bytes:
    """The request line and headers, framed from what will actually be sent, checked for CR/LF/NUL.

    The servers in front validate what they parse, but ASGI does not require it, and one CR/LF here would split
    the request on a pooled connection: the whole head is checked with three C-speed scans before any write.
    """
    target = request.target.encode("latin-1")
    parts = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    has_host = False
    for name, value in request.headers:
        if name == b"host":
            has_host = True
        parts += (name, b": ", value, b"\r\n")
    if not has_host:
        parts += (b"host: ", peer.host_header, b"\r\n")
    if request.body is not None:
        if request.content_length is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            parts += (b"content-length: ", b"%d" % request.content_length, b"\r\n")
    elif request.method in _BODY_METHODS:
        parts.append(b"content-length: 0\r\n")  # some servers (nginx) answer 411 to a POST without a length
    parts.append(b"\r\n")
    head = b"".join(parts)
    lines = (
        len(request.headers) + (1 if has_host else 2) + (request.body is not None or request.method in _BODY_METHODS)
    )
    if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1 or b"\0" in head or b" " in target:
        raise Unforwardable("a control character in the request target or a header value")
    return head


def _response_framing(
    method: str, status: int, raw: list[tuple[bytes, bytes]], version11: bool
) -> tuple[int | None, bool]:
    """How the response body is delimited (bytes to read, -1 chunked, None until close) and whether the connection
    may be reused afterwards (RFC 9112 6.3, 9.3)."""
    chunked = framed_by_te = False
    keep = version11
    lengths: set[bytes] = set()
    for lname, value in raw:  # names are lower-cased by _read_head
        if lname == b"content-length":
            lengths.add(value)
        elif lname == b"transfer-encoding":
            framed_by_te = True
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            if not chunked:
                keep = False  # any other final coding is delimited by the close
        elif lname == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
    if framed_by_te and lengths:
        raise BadResponse("both Transfer-Encoding and Content-Length in a response")
    if method == "HEAD" or status in (204, 304):
        return 0, keep
    if chunked:
        return -1, keep
    if framed_by_te:
        return None, keep
    if lengths:
        if len(lengths) > 1 or not all(v.isdigit() and len(v) < 19 for v in lengths):
            raise BadResponse("conflicting or malformed Content-Length")
        return int(next(iter(lengths))), keep
    return None, False


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark the body task's outcome as seen: a failed upload is reported through the response, not the log."""
    if not task.cancelled():
        task.exception()


def _broken(conn: _Connection, what: str) -> Exception:
    if conn.timed_out:
        return UpstreamTimeout(f"{what}: the peer was silent too long")
    return SendFailed(f"{what}: {conn.error!r}" if conn.error else what)


async def _read_line(conn: _Connection) -> bytes:
    while True:
        buf = conn.buf
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            conn.consumed()
            return line
        if len(buf) > _MAX_HEAD:
            raise BadResponse("line too long in a chunked body")
        if conn.eof:
            raise _broken(conn, "peer closed mid-body")
        await conn.wait_data()


async def _read_head(
    conn: _Connection, sent: asyncio.Future[None] | None
) -> tuple[int, list[tuple[bytes, bytes]], bool]:
    while True:
        buf = conn.buf
        end = buf.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
        if end >= 0:
            head = bytes(buf[:end])
            del buf[: end + 4]
            break
        if len(buf) > _MAX_HEAD:
            raise BadResponse("response head over 64 KiB")
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
    if b"\0" in head or head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        raise BadResponse("a bare CR, LF or a NUL in the response head")  # RFC 9110 5.5: never relayed
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    code = status_line[1] if len(status_line) > 1 else b""
    if status_line[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() or code[0] == 48:
        raise BadResponse(f"bad status line {lines[0][:60]!r}")
    status = int(code)
    raw: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or b" " in name or b"\t" in name:
            raise BadResponse(f"bad header line {line[:60]!r}")
        raw.append((name.lower(), value.strip(b" \t")))
    return status, raw, status_line[0] == b"HTTP/1.1"


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


async def _send_body(conn: _Connection, body: Any, length: int | None, remaining: int | None) -> None:
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
    conn: _Connection, transport: asyncio.Transport, chunk: bytes, chunked: bool, remaining: int | None
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
