"""OpenWebSockets/Session: closing open websockets from outside their app (draining, moved keys), unit-tested
with an in-memory ASGI receive/send."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from affinity_mw.websocket import OpenWebSockets


class FakeServer:
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(dict(message))


def test_close_interrupts_a_waiting_receive_and_tells_the_client() -> None:
    async def scenario() -> None:
        registry = OpenWebSockets()
        server = FakeServer()
        session = registry.open(server.receive, server.send, "room-1")
        await server.incoming.put({"type": "websocket.receive", "text": "hi"})
        assert (await session.receive())["text"] == "hi"  # messages pass as they are
        await session.send({"type": "websocket.send", "text": "yo"})
        waiting = asyncio.ensure_future(session.receive())
        await asyncio.sleep(0.01)
        assert registry.close_where(lambda s: True, 1001, "draining", after=0.02) == 1
        message = await asyncio.wait_for(waiting, 2)
        assert message == {"type": "websocket.disconnect", "code": 1001, "reason": "draining"}
        await asyncio.sleep(0.01)
        assert server.sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "draining"}
        with pytest.raises(OSError):
            await session.send({"type": "websocket.send", "text": "late"})
        assert (await session.receive())["type"] == "websocket.disconnect"
        registry.done(session)
        assert len(registry) == 0

    asyncio.run(scenario())


def test_close_where_chooses_by_key_and_works_from_another_thread() -> None:
    async def scenario() -> None:
        registry = OpenWebSockets()
        servers = [FakeServer() for _ in range(3)]
        sessions = [registry.open(s.receive, s.send, key, peer) for s, key, peer in
                    zip(servers, ["a", "b", "c"], [None, "http://peer:1", None], strict=True)]  # fmt: skip
        waiting = [asyncio.ensure_future(s.receive()) for s in sessions]
        await asyncio.sleep(0.01)
        chosen: list[int] = []
        thread = threading.Thread(
            target=lambda: chosen.append(registry.close_where(lambda s: s.key in ("a", "b"), 1012, "moved"))
        )
        thread.start()
        thread.join()
        assert chosen == [2]
        done, pending = await asyncio.wait(waiting, timeout=1)
        assert {w for w in done} == {waiting[0], waiting[1]}
        assert [w.result()["code"] for w in (waiting[0], waiting[1])] == [1012, 1012]
        assert pending == {waiting[2]}
        await servers[2].incoming.put({"type": "websocket.receive", "bytes": b"\x00"})
        assert (await asyncio.wait_for(waiting[2], 1))["bytes"] == b"\x00"  # the third one was never touched

    asyncio.run(scenario())
