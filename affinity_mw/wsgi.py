"""WSGI middleware: the same routing as the ASGI one, carried out over WSGI with a synchronous pooled client.

Works under gunicorn's ``sync`` and ``gthread`` workers and Werkzeug's development server. One transport (a
thread-safe urllib3 ``PoolManager`` by default) serves every thread of a worker process. The request body streams
from ``wsgi.input`` (fixed length or chunked); the response is a streaming iterable whose ``close()`` hands the
peer connection back to the pool, or discards it if the client went away mid-body. This module only emits
outcomes: the request view is :mod:`affinity_mw._environ`, admission and the forward are the shared ones.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ._environ import EnvironRequest, environ_headers, environ_key
from ._forwarding import forward_sync
from ._plan import SERVE_LOCAL, Answer, Relay
from ._slots import SyncPeerSlots
from ._wsgi_emit import limited_app, phrase, send_answer
from .core import AffinityCore
from .forward import ForwardError, SyncTransport
from .router import LOCAL, Decision
from .routes import app_exclusions
from .transports import HttpxSyncTransport, Urllib3Transport

__all__ = ["DECISION_KEY", "AffinityWSGIMiddleware", "environ_headers"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

DECISION_KEY = "affinity_mw.decision"
# WSGI has no way to abort before a response starts: a client that left mid-upload gets this, which nobody reads
# but the access log shows.
_CLIENT_GONE = Answer(400, b"The client closed the connection before sending the whole body.\n")


class AffinityWSGIMiddleware:
    """Route each WSGI request to the node that owns its affinity key.

    Options are the same as :class:`~affinity_mw.AffinityMiddleware`'s (keyword arguments over ``AFFINITY_*``
    variables). ``transport`` takes a :class:`~affinity_mw.forward.SyncTransport` or an ``httpx.Client``; by
    default one urllib3 pool per worker process.

    The decision is in ``environ["affinity_mw.decision"]``. On the owner, a forwarded request looks as it did to
    the first node: ``REMOTE_ADDR`` and ``wsgi.url_scheme`` are restored from the signed hop marker and the
    ``X-Forwarded-*`` values the forwarder added are removed. WSGI servers fold ``X_Affinity_Hop`` and
    ``X-Affinity-Hop`` into the same ``HTTP_X_AFFINITY_HOP`` key; either way only a validly signed marker counts.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        transport: Any = None,
        membership: Any = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.core = core = AffinityCore(membership=membership, environ=environ, **options)
        if transport is None:
            if core.settings.transport == "httpx":
                transport = HttpxSyncTransport(**core.transport_options())
            else:
                transport = Urllib3Transport(**core.transport_options())
        elif hasattr(transport, "build_request"):  # an httpx.Client
            transport = HttpxSyncTransport(transport, **core.transport_options())
        self.transport: SyncTransport = transport
        self.slots = SyncPeerSlots(core.settings.pool_size, core.settings.pool_timeout)
        # Where WSGI keeps a plain header key ("HTTP_X_TENANT"), so the common case reads it with one lookup.
        self._key_env = environ_key(core.router.header_key) if core.router.header_key is not None else None
        self._loads = core.router.balancer.loads if core.router.balancer is not None else None
        self._loads_lock = threading.Lock()
        core.mark_unrouted(app_exclusions(app))

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        loads = self._loads
        if loads is None:
            return self._handle(environ, start_response)
        # Bounded loads' floor: requests this worker is serving or forwarding now (until the app or the peer
        # has answered; a streamed body is not counted). Worker threads share the count: under a lock.
        with self._loads_lock:
            loads.inflight += 1
        try:
            return self._handle(environ, start_response)
        finally:
            with self._loads_lock:
                loads.inflight -= 1

    def _handle(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        request = EnvironRequest(environ, self._key_env)
        decision = self.core.admit(request)
        if isinstance(decision, Answer):
            return send_answer(start_response, decision)
        if decision.action == LOCAL:
            return self._serve_local(request.environ, start_response, decision)
        forwarding = self.core.forwarding
        assert forwarding is not None  # a forward decision needs a peer, and a peer needs the secret
        outcome = forward_sync(forwarding, decision, request, self.transport, self.slots)
        if type(outcome) is Relay:
            return self._relay(outcome, start_response)
        if type(outcome) is Answer:
            return send_answer(start_response, outcome)
        if outcome is SERVE_LOCAL:
            return self._serve_local(request.environ, start_response, decision)
        return send_answer(start_response, _CLIENT_GONE)  # ABORT

    def _serve_local(self, environ: Environ, start_response: StartResponse, decision: Decision) -> Iterable[bytes]:
        environ[DECISION_KEY] = decision
        app = self.app
        if self.core.max_body and "HTTP_TRANSFER_ENCODING" in environ:
            app = functools.partial(limited_app, app, self.core.max_body)
        raw = self.core.serve_here(decision, environ.get("wsgi.url_scheme", "http"))
        if raw:
            extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]

            def start_with_headers(status: str, response_headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                return start_response(status, [*response_headers, *extra], *exc_info)

            return app(environ, start_with_headers)
        return app(environ, start_response)

    def _relay(self, relay: Relay, start_response: StartResponse) -> Iterable[bytes]:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in relay.headers]
        try:
            start_response(f"{relay.status} {relay.response.reason or phrase(relay.status)}", headers)
        except BaseException:
            relay.close(reusable=False)
            raise
        return _Relay(relay.response, relay.length, relay.slot, relay.first, relay.chunks)


class _Relay:
    """The peer's body as a WSGI iterable. The server calls ``close()`` whether the body was sent in full or the
    client went away; only a fully relayed response returns its connection to the pool, and the peer slot is
    released either way."""

    __slots__ = ("_chunks", "_first", "_length", "_response", "_reusable", "_slot")

    def __init__(self, response: Any, length: int | None, slot: Any, first: bytes = b"", chunks: Any = None) -> None:
        self._response = response
        self._length = length
        self._reusable = False
        self._slot = slot
        self._first = first
        self._chunks: Iterator[bytes] = response.iter_raw() if chunks is None else chunks

    def __iter__(self) -> Iterator[bytes]:
        sent = len(self._first)
        if sent:
            yield self._first
        for chunk in self._chunks:
            sent += len(chunk)
            yield chunk
        if self._length is not None and sent < self._length:
            # Raising makes the server abort the connection: a truncated body must not look complete.
            raise ForwardError("peer closed the response before its Content-Length was sent")
        self._reusable = True

    def close(self) -> None:
        slot, self._slot = self._slot, None
        try:
            self._response.close(reusable=self._reusable)
        finally:
            if slot is not None:
                slot.release()
