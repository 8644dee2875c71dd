"""The websockets open on this node (served here or relayed), so the middleware can close them from outside their
app: when the node drains, and when their keys move to another node. No third-party import: the core holds one
registry whatever the adapter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["MOVED_REASON", "OpenWebSockets", "Session"]

MOVED_REASON = "affinity-mw: this key moved; reconnect"
"""The close reason (with 1012) of a websocket whose key moved to another node."""

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Session:
    """One websocket open on this node, served here or relayed: the ``receive`` and ``send`` the app (or the
    relay) uses, so the middleware can close it from outside (draining, a key that moved).

    :meth:`close` sends the client a close frame with the code and reason, and the app's pending or next
    ``receive`` returns ``websocket.disconnect`` with the same code (so the app runs its own clean-up, as for a
    client that left); the app's sends after that raise :class:`OSError`, as a server's do once its client is
    gone. ``key`` is the routing key, ``peer`` the node a relayed websocket goes to (``None`` when served here).
    """

    __slots__ = ("_closer", "_pending", "_receive", "_send", "closing", "key", "loop", "peer")

    def __init__(self, receive: Receive, send: Send, key: str | None, peer: str | None) -> None:
        self._receive = receive
        self._send = send
        self.key = key
        self.peer = peer
        self.loop = asyncio.get_running_loop()
        self.closing: tuple[int, str] | None = None
        self._pending: asyncio.Future[Message] | None = None
        self._closer: asyncio.Future[None] | None = None

    async def receive(self) -> Message:
        if self.closing is not None:
            return {"type": "websocket.disconnect", "code": self.closing[0], "reason": self.closing[1]}
        # A task per receive, so close() can interrupt a receive that waits for a client who sends nothing.
        pending = self._pending = asyncio.ensure_future(self._receive())
        try:
            return await pending
        except asyncio.CancelledError:
            if self.closing is None or not pending.cancelled():
                raise
            return {"type": "websocket.disconnect", "code": self.closing[0], "reason": self.closing[1]}
        finally:
            self._pending = None

    async def send(self, message: Message) -> None:
        if self.closing is not None:
            raise OSError("affinity-mw closed this websocket")
        await self._send(message)

    def close(self, code: int, reason: str = "") -> None:
        """Close the client (call on the session's loop; :meth:`OpenWebSockets.close_where` does it from
        anywhere)."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if self._pending is not None:
            self._pending.cancel()
        self._closer = asyncio.ensure_future(self._send_close(code, reason))

    async def _send_close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # the client may have gone already: nothing left to close
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class OpenWebSockets:
    """The websockets open on this node, for closing them when it drains or when their keys move."""

    def __init__(self) -> None:
        self._sessions: set[Session] = set()

    def open(self, receive: Receive, send: Send, key: str | None, peer: str | None = None) -> Session:
        session = Session(receive, send, key, peer)
        self._sessions.add(session)
        return session

    def done(self, session: Session) -> None:
        self._sessions.discard(session)

    def __len__(self) -> int:
        return len(self._sessions)

    def close_where(
        self,
        predicate: Callable[[Session], bool],
        code: int,
        reason: str = "",
        after: float = 0.0,
        still: Callable[[], bool] | None = None,
    ) -> int:
        """Close, ``after`` seconds from now, every open websocket for which ``predicate`` holds, unless ``still()``
        is false by then (a drain undone); callable from any thread. Returns how many were chosen."""
        chosen = [session for session in list(self._sessions) if predicate(session)]

        def close(session: Session) -> None:
            if still is None or still():
                session.close(code, reason)

        for session in chosen:
            with contextlib.suppress(RuntimeError):  # a loop that has closed has no websockets left open
                session.loop.call_soon_threadsafe(session.loop.call_later, after, close, session)
        return len(chosen)
