"""The websocket relay on its own (affinity_mw.websocket), against real uvicorn servers on loopback.

An owner node serves tests/apps/ws_app.py; a relay node serves tests/apps/ws_relay_app.py, which relays every
websocket to the first reachable URL of its list (a dead address first, so every connection fails over once).
The client is the ``websockets`` package's own client, in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from affinity_mw.forward import BadResponse, ConnectFailed, SendFailed, UpstreamTimeout
from affinity_mw.websocket import OwnerRefused, RelayOptions, connect_owner
from tests.apps.ws_app import FLOOD_DATA
from tests.cluster import ServerNode, free_port, server_command

MIB = 1024 * 1024
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@dataclass
class Pair:
    relay: ServerNode
    owner: ServerNode

    def ws(self, path: str) -> str:
        return f"ws://{self.relay.host}:{self.relay.port}{path}"


def start_pair(tmp: Path, *, owners: str = "dead,owner", ping: float = 5.0) -> Pair:
    """A relay on 127.0.0.1 and an owner on 127.0.0.2; ``owners`` lists the relay's targets in order, where
    ``dead`` is 127.0.0.3, on which nothing listens."""
    port = free_port(HOSTS)
    urls = {"dead": f"http://127.0.0.3:{port}", "owner": f"http://127.0.0.2:{port}"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AFFINITY_", "WS_"))}
    base.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"})
    owner_env = dict(base, AFFINITY_SELF=urls["owner"])
    relay_env = dict(base, WS_OWNERS=",".join(urls[name] for name in owners.split(",")), WS_PING=str(ping))
    owner = ServerNode(1, "127.0.0.2", port, server_command("uvicorn", "tests.apps.ws_app:app", "127.0.0.2", port),
                       owner_env, tmp / "owner.log")  # fmt: skip
    relay = ServerNode(0, "127.0.0.1", port, server_command("uvicorn", "tests.apps.ws_relay_app:app", "127.0.0.1",
                       port), relay_env, tmp / "relay.log")  # fmt: skip
    pair = Pair(relay, owner)
    try:
        for node in (owner, relay):
            node.start()
        for node in (owner, relay):
            node.wait_ready()
    except BaseException:
        stop_pair(pair)
        raise
    return pair


def stop_pair(pair: Pair) -> None:
    for node in (pair.relay, pair.owner):
        node.stop(wait=False)
    for node in (pair.relay, pair.owner):
        node.wait_port_closed()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started = start_pair(tmp_path_factory.mktemp("ws-relay"))
    yield started
    stop_pair(started)


@pytest.fixture
def own_pair(tmp_path: Path) -> Iterator[Pair]:
    """A pair of its own, for tests that kill or stop the owner; pinging the owner every 0.5 s."""
    started = start_pair(tmp_path, owners="owner", ping=0.5)
    yield started
    if started.owner.proc is not None:
        os.killpg(started.owner.proc.pid, signal.SIGCONT)
    stop_pair(started)


def get_json(node: ServerNode, path: str) -> dict[str, object]:
    response = httpx.get(node.url + path, timeout=5, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def hello(ws: ClientConnection) -> dict[str, object]:
    return json.loads(ws.recv(timeout=5))  # type: ignore[no-any-return]


def closed_by(ws: ClientConnection, timeout: float) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=timeout)
    return info.value


def test_text_and_binary_messages_pass_intact_both_ways(pair: Pair) -> None:
    big_text = ("affinity ✓ " * (MIB // 12))[: MIB - 3] + "end"
    messages: list[str | bytes] = ["hello", "ünïcødé ✓ 🚀", "", b"\x00\xff\x00", b"", os.urandom(MIB), big_text]
    with connect(pair.ws("/ws/echo/intact"), max_size=4 * MIB) as ws:
        assert hello(ws) == {"node": pair.owner.url, "room": "intact"}
        for message in messages:
            ws.send(message)
            echoed = ws.recv(timeout=10)
            assert type(echoed) is type(message)
            assert echoed == message
        # The client's pings are answered on its own leg (by the relay's server): ASGI carries no pings.
        assert ws.ping().wait(5)
    assert get_json(pair.relay, "/probe/relay")["connect_failed"] >= 1  # the dead address was tried first


def test_owner_close_code_and_reason_reach_the_client(pair: Pair) -> None:
    for code, reason in [(4321, "room closed"), (1000, ""), (1008, "policy ✓")]:
        with connect(pair.ws("/ws/echo/owner-closes")) as ws:
            hello(ws)
            ws.send(f"close:{code}:{reason}")
            closed = closed_by(ws, 5)
            assert closed.rcvd is not None
            assert (closed.rcvd.code, closed.rcvd.reason) == (code, reason)


def test_client_close_code_and_reason_reach_the_owner(pair: Pair) -> None:
    for room, code, reason in [("c1", 4005, "client leaves"), ("c2", 1001, "")]:
        with connect(pair.ws(f"/ws/echo/{room}")) as ws:
            hello(ws)
            ws.close(code, reason)
        deadline = time.monotonic() + 5
        while room not in get_json(pair.owner, "/probe/closes") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get_json(pair.owner, "/probe/closes")[room] == [code, reason]


def test_a_client_that_vanishes_closes_the_owners_leg(pair: Pair) -> None:
    with contextlib.suppress(ConnectionClosed, OSError), connect(pair.ws("/ws/echo/vanish")) as ws:
        hello(ws)
        ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection just ends
    deadline = time.monotonic() + 5
    while "vanish" not in get_json(pair.owner, "/probe/closes") and time.monotonic() < deadline:
        time.sleep(0.05)
    code, _ = get_json(pair.owner, "/probe/closes")["vanish"]  # type: ignore[misc]
    assert code in (1000, 1001)  # a close frame the owner can read, never a leg left open


def test_subprotocol_headers_and_cookie_pass_through_the_handshake(pair: Pair) -> None:
    with connect(
        pair.ws("/ws/handshake?x=1"),
        subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
        additional_headers={"Cookie": "sid=abc", "X-Custom": "yes", "Origin": "http://app.example"},
        user_agent_header="test-agent/1",
    ) as ws:
        assert ws.subprotocol == "chat.v2"  # the owner's choice, passed back
        assert ws.response is not None
        assert ws.response.headers.get_all("Set-Cookie") == ["seen=1; Path=/"]
        seen = json.loads(ws.recv(timeout=5))
    assert seen["subprotocols"] == ["chat.v1", "chat.v2"]
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    assert headers["host"] == [f"127.0.0.1:{pair.relay.port}"]  # the client's Host, once
    assert headers["cookie"] == ["sid=abc"]
    assert headers["x-custom"] == ["yes"]
    assert headers["origin"] == ["http://app.example"]
    assert headers["user-agent"] == ["test-agent/1"]  # nothing injected
    assert "sec-websocket-extensions" not in headers  # nothing compressed between nodes


def test_an_owner_refusal_is_the_clients_refusal(pair: Pair) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(pair.ws("/ws/refuse"))
    response = info.value.response
    assert response.status_code == 404
    assert response.body == b"no such room\n"
    assert response.headers["x-why"] == "test"
    with pytest.raises(InvalidStatus) as info:
        connect(pair.ws("/ws/refuse-plain"))
    assert info.value.response.status_code == 403


def test_a_slow_reader_holds_the_owner_back(pair: Pair) -> None:
    """The owner offers 512 messages of 1 MiB; while the client reads nothing, the relay must not take them all
    into memory: the owner's sends stall once the bounded buffers (the relay's queue of 4 messages, and the
    sockets' buffers, which the kernel sizes) are full, far short of the 512."""
    with connect(pair.ws("/ws/flood"), max_size=2 * MIB, max_queue=1, compression=None) as ws:
        readings = [-1]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the owner's count stops moving
            time.sleep(1)
            sent = get_json(pair.owner, "/probe/flood")["sent"]
            assert isinstance(sent, int)
            if sent == readings[-1]:
                break
            readings.append(sent)
        assert sent == readings[-1], f"the owner never stalled: {readings}"
        assert sent < 128, f"the owner sent {sent} MiB to a client that read none"
        for _ in range(sent + 8):  # reading resumes the flow
            assert ws.recv(timeout=10) == FLOOD_DATA
        assert get_json(pair.owner, "/probe/flood")["sent"] > sent


def test_an_owner_that_dies_closes_the_client_with_1012(own_pair: Pair) -> None:
    with connect(own_pair.ws("/ws/echo/doomed")) as ws:
        hello(ws)
        started = time.monotonic()
        own_pair.owner.stop(signal.SIGKILL)
        closed = closed_by(ws, 10)
        elapsed = time.monotonic() - started
    assert closed.rcvd is not None and closed.rcvd.code == 1012
    assert elapsed < 3, f"closed {elapsed:.1f}s after the owner died"


def test_an_owner_that_stops_answering_is_noticed_by_its_pings(own_pair: Pair) -> None:
    """SIGSTOP: the owner's sockets stay open but nothing answers (a host that vanished); the relay's pings
    (every 0.5 s here, 0.5 s to answer) notice and close the client with 1012."""
    assert own_pair.owner.proc is not None
    with connect(own_pair.ws("/ws/echo/frozen")) as ws:
        hello(ws)
        os.killpg(own_pair.owner.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        closed = closed_by(ws, 15)
        elapsed = time.monotonic() - started
    assert closed.rcvd is not None and closed.rcvd.code == 1012
    assert elapsed < 5, f"closed {elapsed:.1f}s after the owner froze"


def test_no_reachable_owner_refuses_the_client(tmp_path: Path) -> None:
    dead = start_pair(tmp_path, owners="dead")
    try:
        with pytest.raises(InvalidStatus) as info:
            connect(dead.ws("/ws/echo/nowhere"))
        assert info.value.response.status_code == 502
    finally:
        stop_pair(dead)


# --- connect_owner's error kinds, against raw sockets on loopback ---


async def _serve(handler: object) -> tuple[asyncio.base_events.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_connect_owner_error_kinds() -> None:
    async def scenario() -> None:
        options = RelayOptions(connect_timeout=1.0, open_timeout=0.5, ping_interval=None)
        port = free_port(["127.0.0.1"])
        with pytest.raises(ConnectFailed):  # nothing listens: nothing reached the peer, fail over
            await connect_owner(f"http://127.0.0.1:{port}", "/ws", [], (), options)

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(5)
            writer.close()

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"not http at all\r\n\r\n")
            await writer.drain()
            writer.close()

        async def teapot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 5\r\nX-Pot: 1\r\n\r\nshort")
            await writer.drain()
            writer.close()

        for handler, kind in [(hang_up, SendFailed), (silent, UpstreamTimeout), (garbage, BadResponse)]:
            server, url = await _serve(handler)
            try:
                with pytest.raises(kind):
                    await connect_owner(url, "/ws", [], (), options)
            finally:
                server.close()
        server, url = await _serve(teapot)
        try:
            refused = await connect_owner(url, "/ws", [(b"host", b"app.example")], (), options)
        finally:
            server.close()
        assert refused == OwnerRefused(418, [(b"x-pot", b"1")], b"short")

    _run(scenario())
