"""ASGI middleware: serve a request here when this node owns its key, else stream it to the owner and back.

Pure ASGI (not ``BaseHTTPMiddleware``), in the shape of Starlette's own middlewares: all set-up happens once in
``__init__``, ``__call__`` passes every scope it does not route straight through, and nothing per request is
stored on ``self``. This module only emits outcomes: the request view is :mod:`affinity_mw._scope`, admission
and the forward are the shared ones (``AffinityCore.admit``, ``forward_async``; see ``docs/design.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._asgi_emit import LimitedBody, send_answer, unframed, wait_disconnect, with_headers
from ._forwarding import forward_async
from ._plan import ABORT, SERVE_LOCAL, Answer, Relay
from ._scope import RequestBody, ScopeRequest, expose
from ._slots import AsyncPeerSlots
from ._wsroute import WebSocketRouting
from .config import ConfigurationError
from .core import AffinityCore
from .forward import AsyncTransport, BodyLimit, ForwardError
from .router import LOCAL, Decision
from .routes import app_exclusions
from .transports import HttpxTransport, async_transport

__all__ = ["AffinityMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("affinity_mw")


class AffinityMiddleware:
    """Route each HTTP request and websocket to the node that owns its affinity key.

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
        try:
            self.core = core = AffinityCore(membership=membership, **options)
        except ConfigurationError as exc:
            if not _server_running():
                raise
            # A running server is building us: Starlette builds its middleware in its first call, the lifespan's,
            # where uvicorn's default --lifespan auto takes an exception for "no lifespan support" and serves on.
            self.__class__, self.error = _FailedStartup, exc
            return
        options = core.transport_options()
        if transport is None:
            transport = async_transport(core.settings.transport, **options)
        elif hasattr(transport, "build_request"):  # an httpx.AsyncClient
            transport = HttpxTransport(transport, **options)
        self.transport: AsyncTransport = transport
        self.slots = AsyncPeerSlots(core.settings.pool_size, core.settings.pool_timeout)
        self._key_header = core.router.header_key
        self._loads = core.router.balancer.loads if core.router.balancer is not None else None
        core.mark_unrouted(app_exclusions(app))
        self._websockets = WebSocketRouting(core, app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # the same admission; then served here or relayed (_wsroute.py)
                return await self._websockets(scope, receive, send, self._key_header)
            if scope["type"] == "lifespan":
                receive = self._watch_lifespan(receive, scope.get("app"))
            await self.app(scope, receive, send)
            return
        loads = self._loads
        if loads is not None:
            loads.inflight += 1  # bounded loads' floor: requests this node is serving or forwarding now
        try:
            request = ScopeRequest(scope, receive, self._key_header)
            decision = self.core.admit(request)
            if isinstance(decision, Answer):
                await send_answer(send, decision)
            elif decision.action == LOCAL:
                await self._serve_local(request.scope, receive, send, decision)
            else:
                forwarding = self.core.forwarding
                assert forwarding is not None  # a forward decision needs a peer, and a peer needs the secret
                outcome = await forward_async(forwarding, decision, request, self.transport, self.slots)
                if type(outcome) is Relay:
                    await self._relay(outcome, receive, send, request.reader)
                elif type(outcome) is Answer:
                    await send_answer(send, outcome)
                elif outcome is SERVE_LOCAL:
                    await self._serve_local(request.scope, receive, send, decision)
                else:  # ABORT: the client left mid-upload; nobody to answer
                    assert outcome is ABORT
        finally:
            if loads is not None:
                loads.inflight -= 1

    def _serve_local(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> Awaitable[None]:
        """The app's own coroutine for a request served here (the caller awaits it): no coroutine of ours in
        between unless a response header or a body limit needs one."""
        expose(scope, decision)
        extra = self.core.serve_here(decision, scope["scheme"])
        if extra:
            send = with_headers(send, extra)
        if not (self.core.max_body and unframed(scope)):
            return self.app(scope, receive, send)
        return self._serve_limited(scope, receive, send)

    async def _serve_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A chunked body can grow past max_body while the app reads it: the app's receive then reports a
        # disconnect and the client gets 413 (if the app has not started its response; otherwise it is aborted).
        limited = LimitedBody(receive, send, BodyLimit(self.core.max_body))
        try:
            await self.app(scope, limited.receive, limited.send)
        except Exception:
            if not limited.answered:
                raise
            logger.debug("affinity-mw: the app failed after its request body went over max_body", exc_info=True)

    async def _relay(self, relay: Relay, receive: Receive, send: Send, body: RequestBody | None) -> None:
        """Stream the peer's response to the client; only a complete, in-sync connection goes back to the pool.

        A body that ends short of its Content-Length, or a peer that dies mid-body, raises so the server aborts
        the client connection: a truncated body must never look like a complete one.
        """
        remaining = relay.length
        reusable = finished = False
        watcher: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": relay.status, "headers": relay.headers})
            chunk, chunks = relay.first, relay.chunks
            while True:
                if chunk and remaining is not None and remaining - len(chunk) <= 0:
                    remaining = 0
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    finished = True
                elif chunk:
                    if remaining is not None:
                        remaining -= len(chunk)
                    if watcher is None and (body is None or body.done):
                        # Servers drop sends to a client that has gone away; watch for the disconnect so a
                        # long download stops pulling from the peer (started lazily: most bodies are one chunk).
                        watcher = asyncio.ensure_future(wait_disconnect(receive))
                    elif watcher is not None and watcher.done():
                        return  # the client went away mid-download: stop pulling; the connection is discarded
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
            if not finished:
                if remaining:
                    raise ForwardError("peer closed the response before its Content-Length was sent")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            reusable = True
        finally:
            if watcher is not None:
                watcher.cancel()
            try:
                await relay.response.aclose(reusable=reusable)
            finally:
                relay.slot.release()

    def _watch_lifespan(self, receive: Receive, app: Any = None) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":  # async ownership callbacks run on the server's loop
                self.core.ownership.bind_loop(asyncio.get_running_loop())
                if app is not None:  # FastAPI's add_middleware: routes marked unrouted are the scope app's
                    self.core.mark_unrouted(app_exclusions(app))
            elif message["type"] == "lifespan.shutdown":
                self.core.start_draining()
                await self.transport.aclose()
            return message

        return wrapped


class _FailedStartup(AffinityMiddleware):
    """An AffinityMiddleware whose settings are invalid: it fails the lifespan start-up with the message, which
    ASGI servers treat as a start-up failure and exit on, and raises it for any request (``--lifespan off``)."""

    error: ConfigurationError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            raise self.error
        if (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": str(self.error)})


def _server_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
