"""ASGI middleware: serve a request here when this node owns its key, else stream it to the owner and back.

Pure ASGI (not ``BaseHTTPMiddleware``), in the shape of Starlette's own middlewares: all set-up happens once in
``__init__``, ``__call__`` passes every scope it does not route straight through, and nothing per request is
stored on ``self``. The routing itself is :class:`~affinity_mw.router.Router`'s; this module only carries the
decision out over ASGI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from .core import DRAINING, NO_KEY_REJECTED, SERVED_BY_HEADER, AffinityCore
from .forward import (
    BAD_FRAMING,
    BAD_TARGET,
    BODY_TOO_LARGE,
    POOL_EXHAUSTED,
    AsyncTransport,
    BadFraming,
    BodyLimit,
    BodyTooLarge,
    ClientGone,
    ForwardError,
    PoolExhausted,
    bodiless,
    body_framing,
    restore_forwarded,
)
from .hop import HOP_HEADER, INTERNAL_SPELLINGS
from .request import RequestView
from .router import FORWARD, LOCAL, Decision
from .routes import starlette_exclusions
from .transports import HttpxTransport, async_transport

__all__ = ["AffinityMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("affinity_mw")


class AffinityMiddleware:
    """Route each HTTP request to the node that owns its affinity key.

    With no keyword options everything is read from ``AFFINITY_*`` environment variables; keyword options (the
    names in ``docs/configuration.md``) win over the environment::

        app = AffinityMiddleware(app, peers=["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
                                 self_url="http://10.0.0.1:8000", secret="...", key="header:X-Tenant")

    ``key`` is a spec string or any callable ``(RequestView) -> str | None``. ``transport`` takes an
    :class:`~affinity_mw.forward.AsyncTransport` or an ``httpx.AsyncClient``; by default the built-in HTTP/1.1
    client (:mod:`affinity_mw.h1`) keeps a pool per event loop, opened lazily and closed at lifespan shutdown
    (``AFFINITY_TRANSPORT=aiohttp`` or ``httpx`` choose those clients instead). ``membership`` replaces the
    static peer list with any object that has ``ring`` and ``self_id``.

    The decision for each request is in ``scope["state"]["affinity"]`` (Starlette: ``request.state.affinity``).
    On the owner, a forwarded request looks as it did to the first node: the client address and scheme are
    restored from the signed hop marker and the ``X-Forwarded-*`` headers the forwarder added are removed.
    """

    def __init__(self, app: ASGIApp, *, transport: Any = None, membership: Any = None, **options: Any) -> None:
        self.app = app
        self.core = core = AffinityCore(membership=membership, **options)
        self.router = core.router
        self.transport = self._make_transport(transport)
        self.slots = _PeerSlots(core.settings.pool_size, core.settings.pool_timeout)
        self.loads = core.router.balancer.loads if core.router.balancer is not None else None
        core.mark_unrouted(starlette_exclusions(app))

    def _make_transport(self, transport: Any) -> AsyncTransport:
        options = self.core.transport_options()
        if transport is None:
            return async_transport(self.core.settings.transport, **options)  # type: ignore[no-any-return]
        if hasattr(transport, "build_request"):  # an httpx.AsyncClient
            return HttpxTransport(transport, **options)
        return transport  # type: ignore[no-any-return]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                receive = self._watch_lifespan(receive, scope.get("app"))
            await self.app(scope, receive, send)
            return
        core = self.core
        prefixes = core.internal_prefixes
        if prefixes and scope["path"].startswith(prefixes) and await self._internal(scope, send):
            return
        loads = self.loads
        if loads is None:
            await self._http(scope, receive, send)
            return
        loads.inflight += 1
        try:
            await self._http(scope, receive, send)
        finally:
            loads.inflight -= 1

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        core = self.core

        hop_token: bytes | None = None
        internal = False
        header_bytes = 0
        router = self.router
        key_header = router.header_key
        key_value: bytes | None = None
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == key_header and key_value is None:
                key_value = value
            if name[:11] in INTERNAL_SPELLINGS:  # ASGI header names are lower-case
                internal = True
                if name == HOP_HEADER and hop_token is None:
                    hop_token = value
        marker = router.check_marker(hop_token) if hop_token is not None else None
        if internal:
            # Strip our headers, and on a hop show the request as the first node saw it: the key is then
            # extracted from the same request on both nodes (an `ip` key included).
            scope = dict(scope)
            scope["headers"] = restore_forwarded(scope["headers"], marker.added if marker else "")
            if marker is not None:
                if marker.client_host:
                    scope["client"] = (marker.client_host, marker.client_port)
                scope["scheme"] = marker.scheme
            header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > core.max_header_bytes or core.max_body:
            length = _header(scope["headers"], b"content-length") if core.max_body else None
            refusal = core.refusal(header_bytes, length)
            if refusal is not None:  # 431/413 before routing: the same answer whichever node owns the key
                await _plain(send, *refusal)
                return
        if key_header is not None and not internal:
            # The common case: the key header was picked up in the scan above.
            decision = router.decide_by_header(key_value, scope["method"], scope["path"])
        elif marker is not None and router.hop_header_key is not None:
            # The owner's side of a forward: restoring the request left the key header as the scan saw it.
            decision = router.hop_by_header(key_value, marker, scope["method"], scope["path"])
        else:
            client = scope.get("client")
            view = RequestView(
                scope["method"],
                scope["path"],
                scope["query_string"],
                scope["headers"],
                client[0] if client else None,
                scope["scheme"],
            )
            decision = router.decide(view, marker)
        if decision.action == LOCAL:
            await self._serve_local(scope, receive, send, decision)
        elif decision.action == FORWARD:
            await self._forward(scope, receive, send, decision)
        else:
            await _plain(send, *NO_KEY_REJECTED)

    async def _internal(self, scope: Scope, send: Send) -> bool:
        client = scope.get("client")
        view = RequestView(scope["method"], scope["path"], scope["query_string"], scope["headers"])
        answer = self.core.internal_response(
            scope["method"],
            scope["path"],
            client[0] if client else None,
            scope["query_string"].decode("latin-1"),
            view.header,
        )
        if answer is None:
            return False
        status, body, content_type = answer
        await _plain(send, status, body, content_type.encode("latin-1"))
        return True

    def _serve_local(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> Awaitable[None]:
        """The app's own coroutine for a request served here (the caller awaits it): no coroutine of ours in
        between unless a response header or a body limit needs one."""
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state["affinity"] = decision
        core = self.core
        if decision.served_by != core.self_id:  # cached local decisions are shared: no write in steady state
            decision.served_by = core.self_id
        if core.debug_headers or core.draining:
            extra = core.debug_headers_for(decision) if core.debug_headers else []
            if core.draining:
                extra.append(DRAINING)
            send = _with_headers(send, extra)
        if not (core.max_body and _unframed(scope)):
            return self.app(scope, receive, send)
        return self._serve_limited(scope, receive, send)

    async def _serve_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A chunked body can grow past max_body while the app reads it: the app's receive then reports a
        # disconnect and the client gets 413 (if the app has not started its response; otherwise it is aborted).
        limited = _LimitedBody(receive, send, BodyLimit(self.core.max_body))
        try:
            await self.app(scope, limited.receive, limited.send)
        except Exception:
            if not limited.answered:
                raise
            logger.debug("affinity-mw: the app failed after its request body went over max_body", exc_info=True)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        method: str = scope["method"]
        target = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        if not target.startswith(b"/"):
            # Only origin-form targets are forwarded: "http://x/..." or "@host/..." appended to a peer's base URL
            # would send the request (and a signed marker) wherever the client says.
            if method == "OPTIONS" and target == b"*":
                await self._serve_local(scope, receive, send, decision)
            else:
                await _plain(send, *BAD_TARGET)
            return
        if scope["query_string"]:
            target = target + b"?" + scope["query_string"]
        headers = scope["headers"]
        try:
            content_length = body_framing(headers)
        except BadFraming:
            await _plain(send, *BAD_FRAMING)
            return
        if content_length == 0 and scope.get("http_version") == "2":
            content_length = None  # HTTP/2 needs no length to carry a body: stream whatever comes
        body = (
            _RequestBody(receive, self.core.body_limit() if content_length is None else None)
            if content_length != 0
            else None
        )
        client = scope.get("client")
        with self.core.plan(decision, headers, tuple(client) if client else None, scope["scheme"]) as plan:
            attempts = plan.attempts(
                method, target.decode("latin-1"), content_length, body.stream if body is not None else None
            )
            for node, request in attempts:
                slot = self.slots.get(node.id)
                if not slot.take():
                    try:
                        await slot.wait(self.slots.timeout, node.id)
                    except PoolExhausted:
                        await _plain(send, *POOL_EXHAUSTED, extra=[(b"retry-after", b"1")])
                        return
                try:
                    try:
                        response = await self.transport.send(request)
                    except (ClientGone, ForwardError) as exc:
                        if body is not None and body.over:
                            await _plain(send, *BODY_TOO_LARGE)  # the chunked body went over max_body
                            return
                        if isinstance(exc, ClientGone) or (body is not None and body.gone):
                            return  # the client left mid-upload: nobody to answer, and not the peer's fault
                        verdict = plan.failed(node, exc, method, body is not None and body.started)
                        if verdict is None:
                            if plan.backoff:
                                await asyncio.sleep(plan.backoff)
                            continue
                        await _plain(send, *verdict)
                        return
                    response.headers = plan.answered(node, response.status, response.headers)
                    await self._relay(response, receive, send, decision, body, bodiless(method, response.status))
                    return
                finally:
                    slot.release()
        if self.router.serve_after_failover(decision, self.core.fallback_local):
            await self._serve_local(scope, receive, send, decision)
            return
        await _plain(send, *plan.exhausted())

    async def _relay(
        self,
        response: Any,
        receive: Receive,
        send: Send,
        decision: Decision,
        body: _RequestBody | None,
        bodiless: bool,
    ) -> None:
        """Stream the peer's response to the client; only a complete, in-sync connection goes back to the pool.

        A body that ends short of its Content-Length, or a peer that dies mid-body, raises so the server aborts
        the client connection: a truncated body must never look like a complete one.
        """
        headers = response.headers
        remaining: int | None = None
        if not bodiless:
            for name, value in headers:
                if name == b"content-length":
                    remaining = int(value)
        if self.core.debug_headers and not any(name == SERVED_BY_HEADER for name, _ in headers):
            headers = [*headers, *self.core.debug_headers_for(decision)]
        reusable = False
        watcher: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            finished = False
            async for chunk in response.aiter_raw():
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        finished = True
                        continue
                if watcher is None and (body is None or body.done):
                    # Servers drop sends to a client that has gone away; watch for the disconnect so a
                    # long download stops pulling from the peer (started lazily: most bodies are one chunk).
                    watcher = asyncio.ensure_future(_wait_disconnect(receive))
                elif watcher is not None and watcher.done():
                    return  # the client went away mid-download: stop pulling; the connection is discarded
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not finished:
                if remaining is not None and remaining > 0:
                    raise ForwardError("peer closed the response before its Content-Length was sent")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            reusable = True
        finally:
            if watcher is not None:
                watcher.cancel()
            await response.aclose(reusable=reusable)

    def _watch_lifespan(self, receive: Receive, app: Any = None) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and app is not None:
                # FastAPI's add_middleware: the app whose routes may be marked unrouted is the scope's, not ours.
                self.core.mark_unrouted(starlette_exclusions(app))
            elif message["type"] == "lifespan.shutdown":
                self.core.start_draining()
                await self.transport.aclose()
            return message

        return wrapped


class _RequestBody:
    """The client's request body as an async iterator, read from ``receive`` once; records whether reading began
    (after which the request cannot be re-sent to another peer)."""

    __slots__ = ("done", "gone", "limit", "receive", "started")

    def __init__(self, receive: Receive, limit: BodyLimit | None = None) -> None:
        self.receive = receive
        self.limit = limit
        self.started = False
        self.done = False
        self.gone = False

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


class _LimitedBody:
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
        self.started = False
        self.answered = False

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
                await _plain(self._send, *BODY_TOO_LARGE)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class _PeerSlots:
    """At most ``size`` forwards in flight to each peer, per event loop; a forward waits at most ``timeout``
    seconds for a slot, then gets :class:`PoolExhausted` (503 with Retry-After): slow clients cannot build an
    unbounded queue in front of a busy peer."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._slots: dict[tuple[int, str], _Slots] = {}

    def get(self, node_id: str) -> _Slots:
        key = (id(asyncio.get_running_loop()), node_id)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots.setdefault(key, _Slots(self.size))
        return slots

    async def acquire(self, node_id: str) -> _Slots:
        """A slot of ``node_id``'s, waiting for one if need be (the ASGI middleware inlines this)."""
        slots = self.get(node_id)
        if not slots.take():
            await slots.wait(self.timeout, node_id)
        return slots


class _Slots:
    """One peer's slots on one event loop. Taking a free slot is a plain decrement (no coroutine: this is on
    every forward). A release hands its slot straight to the oldest waiting forward, so a newcomer cannot take it
    from under one; a waiter that gives up (its wait timed out, or its task was cancelled) leaves the queue, and
    one cancelled just after it was handed a slot passes the slot on."""

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        if self.free and not self.waiters:
            self.free -= 1
            return True
        return False

    async def wait(self, timeout: float, node_id: str) -> None:
        # A timer that fails the waiter rather than asyncio.wait_for: whichever of a hand-over and the timeout
        # comes first wins, the same on every Python version (wait_for's answer to a tie differs between 3.11
        # and 3.12), and no task is made per wait.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter, node_id)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a slot just as this task was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def _expire(waiter: asyncio.Future[None], node_id: str) -> None:
    if not waiter.done():
        waiter.set_exception(PoolExhausted(node_id))


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _unframed(scope: Scope) -> bool:
    """A request body whose length nobody declared (chunked, or HTTP/2 without Content-Length)."""
    headers = scope["headers"]
    if _header(headers, b"transfer-encoding") is not None:
        return True
    return scope.get("http_version") == "2" and _header(headers, b"content-length") is None


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _plain(
    send: Send,
    status: int,
    text: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(text)).encode()), *(extra or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text, "more_body": False})
