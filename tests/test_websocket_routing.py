"""The websocket path's own decisions, in process (the relay and the cluster behaviour have their own tests
against real servers): a hop sent by a peer on another ring is turned back with 1012 under ws_on_move=close, a
failover hop on the same ring is served, and a draining node turns forwarded handshakes away."""

from __future__ import annotations

import asyncio
from typing import Any

from affinity_mw import AffinityMiddleware
from affinity_mw.hop import HOP_HEADER, HopSigner
from affinity_mw.membership import StaticMembership

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SECRET = "unit-secret-0123456789abcdef"
RING = StaticMembership(URLS, URLS[0]).ring


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000})


def key_owned_by(url: str) -> str:
    return next(k for k in (f"room-{i}" for i in range(1000)) if RING.owner_of(k).id == url)  # type: ignore[union-attr]


def handshake(mw: AffinityMiddleware, key: str, marker: bytes | None) -> list[dict[str, Any]]:
    headers = [(b"x-tenant", key.encode())]
    if marker is not None:
        headers.append((HOP_HEADER, marker))
    scope: dict[str, Any] = {
        "type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"", "headers": headers,
        "client": ("10.9.9.9", 1234), "scheme": "ws", "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(mw(scope, receive, send))
    return sent


def marker(key: str, checksum: str) -> bytes:
    return HopSigner(SECRET).sign(sender=URLS[1], key_hash=RING.key_hash(key), ring_checksum=checksum)


def middleware(**options: Any) -> AffinityMiddleware:
    return AffinityMiddleware(app, peers=URLS, self_url=URLS[0], secret=SECRET, key="header:X-Tenant", **options)


def test_a_hop_from_a_peer_on_another_ring_is_sent_to_reconnect() -> None:
    key = key_owned_by(URLS[2])  # a key this node does not own
    sent = handshake(middleware(), key, marker(key, "0123456789ab"))  # the sender's ring is not ours
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 1012
    kept = handshake(middleware(ws_on_move="keep"), key, marker(key, "0123456789ab"))
    assert kept[-1] == {"type": "websocket.close", "code": 1000}  # served by the app: keep serves where it lands


def test_a_failover_hop_on_the_same_ring_is_served() -> None:
    key = key_owned_by(URLS[2])
    sent = handshake(middleware(), key, marker(key, RING.checksum))
    assert sent[-1] == {"type": "websocket.close", "code": 1000}  # the app's own close


def test_a_draining_node_turns_forwarded_handshakes_away() -> None:
    key = key_owned_by(URLS[0])
    mw = middleware()
    mw.core.start_draining()
    sent = handshake(mw, key, marker(key, RING.checksum))
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 503
    assert (b"x-affinity-draining", b"1") in sent[0]["headers"]
