"""The benchmark-only transports of bench/extra_transports.py behave as a proxy's client must.

Skipped unless httpx-aiohttp and pyreqwest are installed (``bash bench/setup.sh --extra``); neither is a
dependency of affinity_mw. Each check talks to a small asyncio HTTP/1.1 server on 127.0.0.1 that records the
request heads it received.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affinity_mw.forward import ConnectFailed, SendFailed, UpstreamRequest
from affinity_mw.transports import HttpxTransport

GZ = gzip.compress(b'{"tenant": "t", "ok": true, "items": [1, 2, 3]}')


class Peer:
    """A peer that answers by path: /gz (gzip body, two Set-Cookie), /redir (302 to /gz), /close (reads the
    request, then closes without answering), anything else 200 "ok"."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Peer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ", 2)[1]
                if path == b"/gz":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                        b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\nContent-Length: %d\r\n\r\n"
                        % len(GZ)
                        + GZ
                    )
                elif path == b"/redir":
                    writer.write(b"HTTP/1.1 302 Found\r\nLocation: /gz\r\nContent-Length: 0\r\n\r\n")
                elif path == b"/close":
                    break
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def head_lines(self, index: int) -> list[bytes]:
        return [line.lower() for line in self.heads[index].split(b"\r\n")[1:] if line]


def _httpx_aiohttp() -> Any:
    pytest.importorskip("httpx_aiohttp")
    from bench.extra_transports import httpx_aiohttp_client

    return HttpxTransport(httpx_aiohttp_client(connect_timeout=1.0, read_timeout=5.0))


def _pyreqwest() -> Any:
    pytest.importorskip("pyreqwest")
    from bench.extra_transports import PyreqwestTransport

    return PyreqwestTransport(connect_timeout=1.0, read_timeout=5.0)


@pytest.fixture(params=["httpx-aiohttp", "pyreqwest"])
def make(request: pytest.FixtureRequest) -> Callable[[], Any]:
    return {"httpx-aiohttp": _httpx_aiohttp, "pyreqwest": _pyreqwest}[request.param]


def run(make: Callable[[], Any], scenario: Callable[[Any, Peer], Any]) -> Any:
    transport = make()

    async def main() -> Any:
        async with Peer() as peer:
            try:
                return await scenario(transport, peer), peer
            finally:
                await transport.aclose()
                close = getattr(getattr(transport, "client", None), "aclose", None)
                if close is not None:  # HttpxTransport does not close a client it was given
                    await close()

    return asyncio.run(main())


async def fetch(transport: Any, url: str, target: str, method: str = "GET") -> tuple[int, list[Any], bytes]:
    headers = [(b"host", url.removeprefix("http://").encode()), (b"x-tenant", b"t")]
    resp = await transport.send(UpstreamRequest(method, url, target, headers, None, 0, 5.0))
    body = b"".join([chunk async for chunk in resp.aiter_raw()])
    await resp.aclose(reusable=True)
    return resp.status, resp.headers, body


def test_gzip_body_is_relayed_raw_with_its_encoding_and_repeated_set_cookie(make: Callable[[], Any]) -> None:
    async def scenario(transport: Any, peer: Peer) -> Any:
        return await fetch(transport, peer.url, "/gz")

    (status, headers, body), _ = run(make, scenario)
    assert status == 200
    assert body == GZ  # not decompressed
    assert (b"content-encoding", b"gzip") in headers
    assert [v for n, v in headers if n == b"set-cookie"] == [b"a=1; Path=/", b"b=2; Path=/"]


def test_no_cookie_is_carried_to_the_next_request(make: Callable[[], Any]) -> None:
    async def scenario(transport: Any, peer: Peer) -> Any:
        await fetch(transport, peer.url, "/gz")
        await fetch(transport, peer.url, "/gz")
        await fetch(transport, peer.url, "/other")

    _, peer = run(make, scenario)
    assert len(peer.heads) == 3
    for i in (1, 2):
        assert not any(line.startswith(b"cookie:") for line in peer.head_lines(i)), peer.heads[i]


def test_redirect_is_relayed_not_followed(make: Callable[[], Any]) -> None:
    async def scenario(transport: Any, peer: Peer) -> Any:
        return await fetch(transport, peer.url, "/redir")

    (status, headers, _), peer = run(make, scenario)
    assert status == 302
    assert (b"location", b"/gz") in headers
    assert len(peer.heads) == 1


def test_refused_connection_is_connect_failed(make: Callable[[], Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: a connect is refused

    async def scenario(transport: Any, peer: Peer) -> Any:
        with pytest.raises(ConnectFailed):
            await fetch(transport, f"http://127.0.0.1:{port}", "/t")

    run(make, scenario)


def test_peer_closing_after_the_request_is_send_failed_not_connect_failed(make: Callable[[], Any]) -> None:
    """The request reached the peer: reporting "nothing sent" would let a POST be replayed on the next node."""

    async def scenario(transport: Any, peer: Peer) -> Any:
        with pytest.raises(SendFailed):
            await fetch(transport, peer.url, "/close", method="POST")

    _, peer = run(make, scenario)
    assert len(peer.heads) == 1


def test_repeated_request_headers_are_kept(make: Callable[[], Any]) -> None:
    async def scenario(transport: Any, peer: Peer) -> Any:
        headers = [(b"host", b"h"), (b"x-rep", b"1"), (b"x-rep", b"2")]
        resp = await transport.send(UpstreamRequest("GET", peer.url, "/t", headers, None, 0, 5.0))
        _ = [chunk async for chunk in resp.aiter_raw()]
        await resp.aclose(reusable=True)

    _, peer = run(make, scenario)
    assert [line for line in peer.head_lines(0) if line.startswith(b"x-rep:")] == [b"x-rep: 1", b"x-rep: 2"]


def test_httpx_aiohttp_adds_no_headers_of_its_own() -> None:
    async def scenario(transport: Any, peer: Peer) -> Any:
        await fetch(transport, peer.url, "/t")

    _, peer = run(_httpx_aiohttp, scenario)
    names = {line.split(b":", 1)[0] for line in peer.head_lines(0)}
    assert names == {b"host", b"x-tenant"}


def test_pyreqwest_adds_accept_and_user_agent() -> None:
    """The limitation that makes pyreqwest not proxy-safe: reqwest adds these to every request lacking them, and
    pyreqwest offers no way to stop it. This fails (and the docs' verdict should change) once it can be."""

    async def scenario(transport: Any, peer: Peer) -> Any:
        await fetch(transport, peer.url, "/t")

    _, peer = run(_pyreqwest, scenario)
    names = {line.split(b":", 1)[0] for line in peer.head_lines(0)}
    assert names == {b"host", b"x-tenant", b"accept", b"user-agent"}
