"""The websocket path of the ASGI middleware: a handshake goes through the same admission as an HTTP request, then
the websocket is served here or relayed to its key's owner (:mod:`affinity_mw.websocket` relays; the attempts,
their markers and what each failure means are the HTTP forward's :class:`~affinity_mw._plan.ForwardPlan`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from websockets.asyncio.client import ClientConnection

from ._plan import SERVE_LOCAL, Answer, Forwarding, ForwardPlan, _Signal, refuse_target
from ._scope import ScopeRequest, expose
from ._wssessions import MOVED_REASON
from .forward import DRAINING_HEADER, ForwardError, Headers
from .router import FORWARD, LOCAL, Decision
from .websocket import (
    Message,
    OwnerRefused,
    Receive,
    RelayOptions,
    Scope,
    Send,
    accept_headers,
    connect_owner,
    deny,
    relay,
)

if TYPE_CHECKING:
    from .core import AffinityCore

__all__ = ["WebSocketRouting", "forward_websocket"]


async def forward_websocket(
    forwarding: Forwarding, decision: Decision, request: ScopeRequest, options: RelayOptions
) -> tuple[ClientConnection, Headers] | Answer | _Signal:
    """Open the owner's leg for a forward decision, trying its candidates as an HTTP forward does: the plan signs
    each attempt's marker and says what a failure means (a connection refused goes to the next candidate; a
    handshake is a GET, so a connection that broke after sending it is retried once). Returns the open connection
    and the headers to accept the client with, an :class:`Answer` (an owner's refusal, 502, 504), or
    :data:`SERVE_LOCAL` when every candidate failed and the router says to serve here. An owner that refuses
    because it is draining sets it aside and goes on to the next candidate."""
    target = request.target()
    refused = refuse_target("GET", target)
    if refused is not None:
        return refused
    subprotocols = request.scope.get("subprotocols") or ()
    with ForwardPlan(forwarding, decision, request.headers, request.client, request.scheme) as plan:
        for node, upstream in plan.attempts("GET", target, 0, None):
            attempt = replace(options, open_timeout=min(options.open_timeout, upstream.read_timeout or 0))
            try:
                owner = await connect_owner(node.address, target, upstream.headers, subprotocols, attempt)
            except ForwardError as exc:
                verdict = plan.failed(node, exc, "GET", False)
                if verdict is not None:
                    return Answer(*verdict)
                if plan.backoff:
                    await asyncio.sleep(plan.backoff)
                continue
            if isinstance(owner, OwnerRefused):
                draining = owner.status == 503 and any(name == DRAINING_HEADER for name, _ in owner.headers)
                headers = plan.answered(node, owner.status, owner.headers)
                if draining:
                    continue
                content_type = next((v for n, v in headers if n == b"content-type"), b"text/plain; charset=utf-8")
                rest = tuple((n, v) for n, v in headers if n != b"content-type")
                return Answer(owner.status, owner.body, content_type.decode("latin-1"), rest)
            return owner, plan.with_debug_headers(plan.answered(node, 101, accept_headers(owner)))
    return plan.finish()


class WebSocketRouting:
    """The ASGI middleware's websocket path: the handshake goes through the same admission as an HTTP request,
    then the websocket is served here (the app's ``receive`` and ``send`` tracked, so a drain or a moved key can
    close it) or relayed to its key's owner.

    A draining node sends new keyed websockets elsewhere: one that reaches it directly is forwarded to the key's
    next node, one forwarded to it is refused with 503 and the draining signal, so the forwarder tries its next
    candidate. Open ones are closed with 1001 after ``ws_drain_grace`` (:meth:`AffinityCore.start_draining`).
    """

    def __init__(self, core: AffinityCore, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.core = core
        self.app = app
        settings = core.settings
        self.close_moved = settings.ws_on_move == "close"
        ping = settings.ws_ping or None
        self.options = RelayOptions(
            connect_timeout=settings.connect_timeout,
            open_timeout=settings.read_timeout,
            max_size=settings.ws_max_size,
            ping_interval=ping,
            ping_timeout=ping,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send, key_header: bytes | None) -> None:
        core = self.core
        request = ScopeRequest(scope, receive, key_header)
        decision = core.admit(request)
        if type(decision) is not Answer and core.draining:
            decision = self._elsewhere(decision)  # type: ignore[arg-type]
        if type(decision) is Answer:
            await receive()  # the client's websocket.connect, then the refusal
            await deny(request.scope, send, decision.status, decision.text, _answer_headers(decision))
            return
        assert isinstance(decision, Decision)
        if decision.action == LOCAL:
            if decision.skew and decision.owner is not None and decision.owner.id != core.self_id and self.close_moved:
                # Forwarded by a peer whose ring differs from ours, which names another owner: a membership change
                # is under way. Keep no websocket here that ws_on_move=close would close: the reconnect goes
                # where the key lives once the peers agree (a failover, on the same ring, is served).
                await receive()
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": 1012, "reason": MOVED_REASON})
                return
            await self._serve_local(request.scope, receive, send, decision)
            return
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return  # the client left before its handshake could be forwarded
        forwarding = core.forwarding
        assert forwarding is not None  # a forward decision needs a peer, and a peer needs the secret
        outcome = await forward_websocket(forwarding, decision, request, self.options)
        if type(outcome) is Answer:
            await deny(request.scope, send, outcome.status, outcome.text, _answer_headers(outcome))
        elif outcome is SERVE_LOCAL:
            await self._serve_local(request.scope, _replay(connect, receive), send, decision)
        else:
            connection, headers = outcome  # type: ignore[misc]
            session = core.websockets.open(receive, send, decision.key, decision.served_by)
            try:
                await relay(connection, session.receive, session.send, headers)
            finally:
                core.websockets.done(session)

    def _elsewhere(self, decision: Decision) -> Decision | Answer:
        """While draining: a keyed websocket that was forwarded here is refused (the forwarder tries its next
        candidate), one that came straight here goes to the key's next node."""
        if decision.action != LOCAL or decision.key_hash is None:
            return decision
        if decision.marker is not None:
            return _DRAINING_REFUSAL
        self_id = self.core.self_id
        limit = self.core.settings.max_attempts
        others = [node for node in decision.ring.successors(decision.key_hash) if node.id != self_id][:limit]
        if not others:
            return decision
        moved = Decision(FORWARD, "draining", decision.ring, decision.key, decision.key_hash, decision.owner)
        moved.candidates = tuple(others)
        return moved

    async def _serve_local(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        expose(scope, decision)
        extra = self.core.serve_here(decision, scope["scheme"])
        if extra:
            send = _with_accept_headers(send, extra)
        session = self.core.websockets.open(receive, send, decision.key)
        try:
            await self.app(scope, session.receive, session.send)
        finally:
            self.core.websockets.done(session)


_DRAINING_REFUSAL = Answer(
    503, b"This node is draining; try the key's next node.\n", headers=((DRAINING_HEADER, b"1"),)
)


def _answer_headers(answer: Answer) -> Headers:
    return [(b"content-type", answer.content_type.encode("latin-1")), *answer.headers]


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that gives ``first`` (the client's ``websocket.connect``, already read) once more first."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _with_accept_headers(send: Send, extra: Headers) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] in ("websocket.accept", "websocket.http.response.start"):
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers
