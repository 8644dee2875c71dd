"""The lean asyncio HTTP/1.1 client (``affinity_mw.h1``) against scripted servers on loopback: framing, reuse,
and every way a peer can fail, mapped onto the transport contract the failover rules rely on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from affinity_mw.forward import (
    BadResponse,
    ClientGone,
    ConnectFailed,
    SendFailed,
    Unforwardable,
    UpstreamRequest,
    UpstreamTimeout,
)
from affinity_mw.h1 import AsyncioTransport
from affinity_mw.transports import PerLoop

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(reader, writer)
        writer.close()


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[Server, str]]:
    state = Server(handler)
    server = await asyncio.start_server(state._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one request head (and a Content-Length or chunked body); return it whole."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        return head + await reader.readexactly(length)
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            line = await reader.readuntil(b"\r\n")
            body += line
            size = int(line.strip(), 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return head + body
    return head


def keep_alive(*responses: bytes) -> Handler:
    """Answer each request on a connection with the next response, keeping the connection open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
        await reader.read()  # until the client closes

    return handler


async def fetch(t: AsyncioTransport, base: str, method: str = "GET", **kw: object) -> tuple[int, bytes, object]:
    r = await t.send(UpstreamRequest(method, base, "/p", [(b"host", b"app")], **kw))  # type: ignore[arg-type]
    body = b"".join([c async for c in r.aiter_raw()])
    await r.aclose(reusable=True)
    return r.status, body, r


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_keep_alive_connection_is_reused() -> None:
    async def main() -> None:
        async with serve(keep_alive(OK, OK, OK)) as (server, base):
            t = AsyncioTransport()
            for _ in range(3):
                assert (await fetch(t, base))[:2] == (200, b"ok")
            assert server.connections == 1
            await t.aclose()

    run(main())


def test_chunked_response_with_extensions_and_trailers_then_reuse() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\ntrailer-x: 1\r\n\r\n"
    )

    async def main() -> None:
        async with serve(keep_alive(chunked, OK)) as (server, base):
            t = AsyncioTransport()
            status, body, r = await fetch(t, base)
            assert (status, body) == (200, b"hello world")
            assert b"transfer-encoding" not in dict(r.headers)  # type: ignore[attr-defined]
            assert (await fetch(t, base))[:2] == (200, b"ok")
            assert server.connections == 1
            await t.aclose()

    run(main())


def test_body_until_close_is_complete_and_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()

    async def main() -> None:
        async with serve(handler) as (server, base):
            t = AsyncioTransport()
            assert (await fetch(t, base))[:2] == (200, b"all of it")
            assert (await fetch(t, base))[:2] == (200, b"all of it")
            assert server.connections == 2
            await t.aclose()

    run(main())


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "mid-chunk", "between-chunks"],
)
def test_peer_dying_mid_body_raises_never_ends_cleanly(response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()

    async def main() -> None:
        async with serve(handler) as (_, base):
            t = AsyncioTransport()
            r = await t.send(UpstreamRequest("GET", base, "/p", [(b"host", b"app")]))
            with pytest.raises(SendFailed):
                async for _ in r.aiter_raw():
                    pass
            await r.aclose(reusable=False)
            await t.aclose()

    run(main())


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"SPDY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 2_0 OK\r\n\r\n",
        b"HTTP/1.1 +99 OK\r\n\r\n",
        b"HTTP/1.1x 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx y: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: a\nset-cookie: evil=1\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: a\rb\r\ncontent-length: 0\r\n\r\n",
    ],
    ids=[
        "status",
        "protocol",
        "no-colon",
        "obs-fold",
        "two-lengths",
        "signed-length",
        "te-and-cl",
        "101",
        "huge",
        "underscore-status",
        "plus-status",
        "version",
        "space-in-name",
        "bare-lf-in-value",
        "bare-cr-in-value",
    ],
)
def test_unrelayable_response_is_bad_response(response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with serve(handler) as (_, base):
            t = AsyncioTransport()
            with pytest.raises(BadResponse):
                await fetch(t, base)
            await t.aclose()

    run(main())


def test_bad_chunk_size_is_bad_response() -> None:
    async def main() -> None:
        for size in (b"0x5", b"1_0", b"+5", b" ", b"5 ;ext", b"123456789012345678901"):
            bad = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n"
            async with serve(keep_alive(bad)) as (_, base):
                t = AsyncioTransport()
                r = await t.send(UpstreamRequest("GET", base, "/p", [(b"host", b"app")]))
                with pytest.raises(BadResponse):
                    async for _ in r.aiter_raw():
                        pass
                await r.aclose(reusable=False)
                await t.aclose()

    run(main())


def test_silent_peer_times_out_and_connect_refused_is_connect_failed() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        async with serve(silent) as (_, base):
            t = AsyncioTransport(read_timeout=5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeout):
                await t.send(UpstreamRequest("GET", base, "/p", [(b"host", b"app")], read_timeout=0.3))
            assert 0.25 < loop.time() - started < 2
            await t.aclose()
        with pytest.raises(ConnectFailed):
            await AsyncioTransport().send(UpstreamRequest("GET", base, "/p", []))

    run(main())


def test_peer_reset_before_answering_is_send_failed() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    async def main() -> None:
        async with serve(reset) as (_, base):
            t = AsyncioTransport()
            with pytest.raises(SendFailed):
                await fetch(t, base)
            await t.aclose()

    run(main())


def test_request_framing_host_and_empty_chunks() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"ab", b"", b"cde"):
            yield chunk

    async def main() -> None:
        async with serve(record) as (_, base):
            t = AsyncioTransport()
            r = await t.send(UpstreamRequest("POST", base, "/up?x=1", [(b"x-a", b"1")], body(), None))
            await r.aclose(reusable=False)
            r = await t.send(UpstreamRequest("PUT", base, "/up", [(b"host", b"h")], [b"abc", b"de"], 5))
            await r.aclose(reusable=False)
            await t.aclose()

    run(main())
    host = base_host = seen[0].split(b"host: ")[1].split(b"\r\n")[0]
    assert base_host.startswith(b"127.0.0.1:") and host
    assert seen[0].startswith(b"POST /up?x=1 HTTP/1.1\r\n")
    assert seen[0].endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")  # the empty chunk did not end the body
    assert b"content-length: 5\r\n" in seen[1] and seen[1].endswith(b"\r\n\r\nabcde")


def test_early_answer_during_upload_is_relayed_and_connection_dropped() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")
        await writer.drain()
        writer.transport.abort()

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(2000):
            yield b"x" * 65536
            await asyncio.sleep(0)

    async def main() -> None:
        async with serve(early) as (server, base):
            t = AsyncioTransport()
            r = await t.send(UpstreamRequest("POST", base, "/p", [], endless(), 2000 * 65536))
            assert r.status == 413
            assert b"".join([c async for c in r.aiter_raw()]) == b"big"
            await r.aclose(reusable=True)
            assert (await fetch(t, base))[0] == 413  # a fresh connection: the first one was not pooled
            assert server.connections == 2
            await t.aclose()

    run(main())


def test_client_gone_mid_upload_is_client_gone() -> None:
    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def leaving() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientGone("client disconnected")

    async def main() -> None:
        async with serve(slow_reader) as (_, base):
            t = AsyncioTransport()
            with pytest.raises(ClientGone):
                await t.send(UpstreamRequest("POST", base, "/p", [], leaving(), 100))
            await t.aclose()

    run(main())


def test_interim_100_is_skipped_and_head_has_no_body() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
    empty_head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    async def main() -> None:
        async with serve(keep_alive(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, empty_head, OK, head)) as (server, base):
            t = AsyncioTransport()
            assert (await fetch(t, base))[:2] == (200, b"ok")
            assert (await fetch(t, base, "HEAD"))[:2] == (200, b"")
            assert (await fetch(t, base))[:2] == (200, b"ok")  # one connection so far: nothing was announced
            assert server.connections == 1
            assert (await fetch(t, base, "HEAD"))[:2] == (200, b"")
            # A HEAD answer that declared a body is never pooled: a peer could still write that body.
            assert (await fetch(t, base))[:2] == (200, b"ok")
            assert server.connections == 2
            await t.aclose()

    run(main())


def test_idle_connection_closed_by_peer_or_expired_is_not_reused() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        # returns: the connection is closed while the client holds it idle

    async def main() -> None:
        async with serve(one_then_close) as (server, base):
            t = AsyncioTransport()
            assert (await fetch(t, base))[:2] == (200, b"ok")
            await asyncio.sleep(0.2)
            assert (await fetch(t, base))[:2] == (200, b"ok")  # no error: the closed connection was noticed
            assert server.connections == 2
            await t.aclose()
        async with serve(keep_alive(OK, OK)) as (server, base):
            t = AsyncioTransport(keepalive=0.1)
            assert (await fetch(t, base))[:2] == (200, b"ok")
            await asyncio.sleep(0.2)
            assert (await fetch(t, base))[:2] == (200, b"ok")
            assert server.connections == 2  # expired before the peer's keep-alive could race us
            await t.aclose()

    run(main())


def test_stale_pooled_connection_is_retried_once_for_idempotent_requests_only() -> None:
    async def stale(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request, then closes the connection when the next one arrives (a keep-alive race).
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

    async def main() -> None:
        async with serve(stale) as (server, base):
            t = AsyncioTransport()
            assert (await fetch(t, base))[:2] == (200, b"ok")
            assert (await fetch(t, base))[:2] == (200, b"ok")  # the stale one was met, then a fresh one used
            assert server.connections == 2
            with pytest.raises(SendFailed):  # never re-sent by the transport: a POST is ForwardPlan's to decide
                await fetch(t, base, "POST", body=[b"x"], content_length=1)
            assert server.connections == 2
            await t.aclose()

    run(main())


def test_head_waits_for_the_first_body_bytes() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))

    async def stalled() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()  # a client that sent headers and never its body
        yield b"never"

    async def main() -> None:
        async with serve(record) as (server, base):
            t = AsyncioTransport()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(t.send(UpstreamRequest("POST", base, "/p", [], stalled(), None)), 0.3)
            await asyncio.sleep(0.1)
            await t.aclose()
            assert server.connections == 1

    run(main())
    assert received == [b""]  # connected (so a dead peer fails over before the body is read), nothing written


def test_slow_downstream_reader_is_not_peer_silence() -> None:
    big = b"x" * (2 * 1024 * 1024)

    async def main() -> None:
        response = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(big), big)
        async with serve(keep_alive(response)) as (_, base):
            t = AsyncioTransport(read_timeout=0.3)
            r = await t.send(UpstreamRequest("GET", base, "/p", [(b"host", b"app")]))
            got = 0
            async for chunk in r.aiter_raw():
                got += len(chunk)
                await asyncio.sleep(0.05)  # a client reading slowly: reading from the peer is paused meanwhile
            assert got == len(big)
            await r.aclose(reusable=True)
            await t.aclose()

    run(main())


def test_client_pausing_its_upload_is_not_peer_silence() -> None:
    async def gappy() -> AsyncIterator[bytes]:
        yield b"ab"
        await asyncio.sleep(0.6)  # longer than the peer may stay silent
        yield b"cd"

    async def main() -> None:
        async with serve(keep_alive(OK)) as (_, base):
            t = AsyncioTransport(read_timeout=0.3)
            r = await t.send(UpstreamRequest("POST", base, "/p", [], gappy(), 4, read_timeout=0.3))
            assert r.status == 200
            await r.aclose(reusable=False)
            await t.aclose()

    run(main())


def test_late_first_body_bytes_never_meet_a_connection_closed_meanwhile() -> None:
    async def short_keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await asyncio.wait_for(read_request(reader), 0.2)  # the peer's keep-alive: 0.2 s
            except asyncio.TimeoutError:
                return
            writer.write(OK)
            await writer.drain()

    async def late() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.4)
        yield b"body"

    async def main() -> None:
        async with serve(short_keep_alive) as (server, base):
            t = AsyncioTransport(keepalive=5)  # misconfigured on purpose: above the peer's keep-alive
            assert (await fetch(t, base))[:2] == (200, b"ok")
            r = await t.send(UpstreamRequest("POST", base, "/p", [], late(), 4))
            assert r.status == 200
            await r.aclose(reusable=True)
            assert server.connections == 2
            await t.aclose()

    run(main())


def test_a_pooled_connections_timer_never_times_the_wait_for_a_client() -> None:
    """A connection's silence timer outlives its exchange (one timer per connection); a request that takes the
    connection from the pool and then waits for its client's first body bytes must not be aborted by it."""

    async def late() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.6)  # longer than the silence allowed
        yield b"hi"

    async def main() -> None:
        async with serve(keep_alive(OK, OK)) as (server, base):
            t = AsyncioTransport(keepalive=5, read_timeout=0.3)
            assert (await fetch(t, base))[:2] == (200, b"ok")
            assert (await fetch(t, base, "POST", body=late(), content_length=2))[:2] == (200, b"ok")
            assert server.connections == 1  # the pooled connection was kept, not aborted and replaced
            await t.aclose()

    run(main())


def test_a_shorter_timeout_on_a_reused_connection_is_not_stretched_by_its_timer() -> None:
    async def main() -> None:
        async with serve(keep_alive(OK)) as (server, base):  # answers once, then stays silent
            t = AsyncioTransport(keepalive=5, read_timeout=30)
            assert (await fetch(t, base))[:2] == (200, b"ok")  # arms the connection's timer for 30 s
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeout):
                await t.send(UpstreamRequest("GET", base, "/p", [(b"host", b"app")], read_timeout=0.3))
            assert 0.25 < loop.time() - started < 2 and server.connections == 1
            await t.aclose()

    run(main())


def test_body_not_matching_its_content_length_is_never_sent_as_complete() -> None:
    async def main() -> None:
        async with serve(keep_alive(OK, OK, OK)) as (_, base):
            t = AsyncioTransport()
            for chunks in (
                [b"abcd", b"GET /admin HTTP/1.1\r\nhost: a\r\n\r\n"],
                [b"abcdef"],
                [b"ab", b"cdef"],
                [b"ab"],
            ):
                with pytest.raises(SendFailed):
                    r = await t.send(UpstreamRequest("POST", base, "/p", [], chunks, 4))
                    async for _ in r.aiter_raw():
                        pass
                    await r.aclose(reusable=True)
            await t.aclose()

    run(main())


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/ HTTP/1.1\r\nhost: evil\r\n\r\nGET /x", []),
        ("/a b", []),
        ("/p", [(b"x-a", b"1\r\nx-affinity-hop: forged")]),
        ("/p", [(b"x-a", b"1\nx-b: 2")]),
        ("/p", [(b"x-a", b"1\x00")]),
        ("/p", [(b"x-a\r\nx-b", b"1")]),
    ],
)
def test_control_characters_are_never_written(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    async def main() -> None:
        async with serve(keep_alive(OK)) as (server, base):
            t = AsyncioTransport()
            with pytest.raises(Unforwardable):
                await t.send(UpstreamRequest("GET", base, target, headers))
            assert server.connections == 0
            await t.aclose()

    run(main())


def test_a_failing_body_iterator_fails_fast_and_post_without_body_has_length_zero() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        with contextlib.suppress(Exception):
            await reader.read()

    async def broken() -> AsyncIterator[bytes]:
        yield b"ab"
        raise ValueError("a bug in the body iterator")

    async def main() -> None:
        async with serve(record) as (_, base):
            t = AsyncioTransport(read_timeout=10)
            started = asyncio.get_running_loop().time()
            with pytest.raises(SendFailed):
                await t.send(UpstreamRequest("POST", base, "/p", [], broken(), 10))
            assert asyncio.get_running_loop().time() - started < 2
            with pytest.raises(UpstreamTimeout):
                await t.send(UpstreamRequest("POST", base, "/p", [], None, 0, read_timeout=0.2))
            await t.aclose()

    run(main())
    assert b"content-length: 0\r\n" in seen[1]


def test_a_peer_trickling_its_head_cannot_stretch_the_header_timeout() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for _ in range(40):  # 103 Early Hints, one every 0.1 s: always talking, never answering
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    async def main() -> None:
        async with serve(trickle) as (_, base):
            t = AsyncioTransport(read_timeout=10)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeout):
                await t.send(UpstreamRequest("GET", base, "/p", [(b"host", b"app")], read_timeout=0.5))
            assert loop.time() - started < 1.5
            await t.aclose()

    run(main())


def test_one_client_per_event_loop() -> None:
    made: list[asyncio.AbstractEventLoop] = []
    broken: set[int] = set()
    per_loop: PerLoop[int] = PerLoop(lambda loop: made.append(loop) or len(made), lambda n: n not in broken)

    async def twice() -> tuple[int, int]:
        return per_loop.get(), per_loop.get()

    assert asyncio.run(twice()) == (1, 1)  # one per loop, reused within it
    assert asyncio.run(twice()) == (2, 2)  # a new loop (perhaps with the old one's id) gets its own

    async def unusable_then_pop() -> tuple[int, int | None, int | None]:
        first = per_loop.get()
        broken.add(first)
        second = per_loop.get()
        return second, per_loop.pop(), per_loop.pop()

    assert asyncio.run(unusable_then_pop()) == (4, 4, None)
