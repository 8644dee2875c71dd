"""An ASGI HTTP scope as a request: what admission and the forward read of it, and its body read from ``receive``
once. The ASGI adapter emits what they decide (:mod:`affinity_mw.asgi`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from .forward import BodyLimit, ClientGone, ForwardError, restore_forwarded
from .hop import HOP_HEADER, INTERNAL_SPELLINGS, HopMarker
from .request import RequestView

__all__ = ["RequestBody", "ScopeRequest", "expose", "first_header"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class ScopeRequest:
    """The request as admission and the forward read it, over an HTTP or websocket scope: one scan of the headers
    when built (their size, our internal headers, the hop marker, the key header's first value)."""

    __slots__ = (
        "header_bytes", "headers", "hop_token", "internal", "key_header", "key_value", "method", "path", "reader",
        "receive", "scope",
    )  # fmt: skip

    def __init__(self, scope: Scope, receive: Receive, key_header: bytes | None) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope.get("method", "GET")  # a websocket scope has none: its handshake is a GET
        self.path: str = scope["path"]
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.key_header = key_header
        self.reader: RequestBody | None = None
        hop_token = key_value = None
        internal = False
        size = 0
        for name, value in self.headers:
            size += len(name) + len(value)
            if name == key_header and key_value is None:
                key_value = value
            if name[:11] in INTERNAL_SPELLINGS:  # ASGI header names are lower-case
                internal = True
                if name == HOP_HEADER and hop_token is None:
                    hop_token = value
        self.header_bytes = size
        self.internal = internal
        self.hop_token: bytes | None = hop_token
        self.key_value: bytes | None = key_value

    def restore(self, marker: HopMarker | None) -> None:
        scope = self.scope = dict(self.scope)
        scope["headers"] = self.headers = headers = restore_forwarded(self.headers, marker.added if marker else "")
        if marker is not None:
            if marker.client_host:
                scope["client"] = (marker.client_host, marker.client_port)
            scope["scheme"] = marker.scheme
        self.header_bytes = sum(len(name) + len(value) for name, value in headers)
        self.key_value = first_header(headers, self.key_header) if self.key_header is not None else None

    @property
    def client_host(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    @property
    def client(self) -> tuple[str, int] | None:
        client = self.scope.get("client")
        return tuple(client) if client else None

    @property
    def scheme(self) -> str:
        return self.scope["scheme"]  # type: ignore[no-any-return]

    @property
    def query(self) -> str:
        return self.scope["query_string"].decode("latin-1")  # type: ignore[no-any-return]

    @property
    def unframed(self) -> bool:
        return self.scope.get("http_version") == "2"

    def content_length(self) -> bytes | None:
        return first_header(self.scope["headers"], b"content-length")

    def header(self, name: str) -> str | None:
        return self.view().header(name)

    def view(self) -> RequestView:
        scope = self.scope
        client = scope.get("client")
        return RequestView(
            self.method, self.path, scope["query_string"], scope["headers"], client[0] if client else None,
            scope["scheme"],
        )  # fmt: skip

    def target(self) -> str:
        scope = self.scope
        target = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        if scope["query_string"]:
            target = target + b"?" + scope["query_string"]
        return target.decode("latin-1")

    def body(self, content_length: int | None, limit: BodyLimit | None) -> RequestBody:
        self.reader = RequestBody(self.receive, limit)
        return self.reader


class RequestBody:
    """The client's request body as an async iterator, read from ``receive`` once; records whether reading began
    (after which the request cannot be re-sent to another peer), ended, or the client left."""

    __slots__ = ("done", "gone", "limit", "receive", "started")

    def __init__(self, receive: Receive, limit: BodyLimit | None = None) -> None:
        self.receive = receive
        self.limit = limit
        self.started = self.done = self.gone = False

    @property
    def over(self) -> bool:
        """The body went over max_body while it was forwarded."""
        return self.limit is not None and self.limit.over

    async def stream(self) -> AsyncIterator[bytes]:
        if self.started:
            raise ForwardError("the request body was already sent once")
        self.started = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone("client disconnected while sending the request body")
            chunk = message.get("body", b"")
            if chunk:
                if self.limit is not None:
                    self.limit.add(len(chunk))
                yield chunk
            if not message.get("more_body", False):
                self.done = True
                return


def expose(scope: Scope, decision: Any) -> None:
    """Put the decision where the app reads it: ``scope["state"]["affinity"]`` (Starlette's ``request.state``)."""
    state = scope.get("state")
    if state is None:
        scope["state"] = state = {}
    state["affinity"] = decision


def first_header(headers: Any, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
