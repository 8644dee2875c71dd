"""The ASGI middleware's small pieces of I/O: a short answer, headers added to the app's response, the app's
request body under ``max_body``, and a watcher for a client that went away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._plan import Answer
from ._scope import first_header
from .forward import BODY_TOO_LARGE, BodyLimit, BodyTooLarge

__all__ = ["LimitedBody", "send_answer", "unframed", "wait_disconnect", "with_headers"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class LimitedBody:
    """The local app's ``receive`` and ``send`` for a body of unknown length under ``max_body``.

    When the body goes over the limit before the app has started its response, the middleware answers 413 itself
    and the app's ``receive`` reports ``http.disconnect`` (never a truncated body that looks complete); whatever
    the app sends afterwards is dropped. If the app had already started its response, ``receive`` raises
    :class:`BodyTooLarge` and the server aborts the connection.
    """

    __slots__ = ("_receive", "_send", "answered", "limit", "started")

    def __init__(self, receive: Receive, send: Send, limit: BodyLimit) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.started = self.answered = False

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            try:
                self.limit.add(len(message.get("body", b"")))
            except BodyTooLarge:
                if self.started:
                    raise
                self.answered = True
                await send_answer(self._send, Answer(*BODY_TOO_LARGE))
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers


def unframed(scope: Scope) -> bool:
    """A request body whose length nobody declared (chunked, or HTTP/2 without Content-Length)."""
    headers = scope["headers"]
    if first_header(headers, b"transfer-encoding") is not None:
        return True
    return scope.get("http_version") == "2" and first_header(headers, b"content-length") is None


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_answer(send: Send, answer: Answer) -> None:
    text = answer.text
    headers = [
        (b"content-type", answer.content_type.encode("latin-1")),
        (b"content-length", str(len(text)).encode()),
        *answer.headers,
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": text, "more_body": False})
