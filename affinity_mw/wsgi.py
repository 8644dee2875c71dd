"""WSGI middleware: the same routing as the ASGI one, carried out over WSGI with a synchronous pooled client.

Works under gunicorn's ``sync`` and ``gthread`` workers and Werkzeug's development server. One transport (a
thread-safe urllib3 ``PoolManager`` by default) serves every thread of a worker process. The request body streams
from ``wsgi.input`` (fixed length or chunked); the response is a streaming iterable whose ``close()`` hands the
peer connection back to the pool, or discards it if the client went away mid-body.
"""

from __future__ import annotations

import functools
import http
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from .core import DRAINING, NO_KEY_REJECTED, SERVED_BY_HEADER, AffinityCore
from .forward import (
    BAD_FRAMING,
    BAD_TARGET,
    BODY_TOO_LARGE,
    POOL_EXHAUSTED,
    BadFraming,
    BodyLimit,
    ClientGone,
    ForwardError,
    Headers,
    SyncTransport,
    SyncUpstreamResponse,
    bodiless,
    body_framing,
)
from .hop import HopMarker
from .request import RequestView
from .router import FORWARD, LOCAL, Decision
from .transports import HttpxSyncTransport, Urllib3Transport

__all__ = ["DECISION_KEY", "AffinityWSGIMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

DECISION_KEY = "affinity_mw.decision"
_HOP_ENV = "HTTP_X_AFFINITY_HOP"
# Keys a WSGI server puts in every environ that are not headers (PEP 3333, gunicorn, Werkzeug): the scan for header
# keys skips them with one set difference in C instead of a Python-level test of each (the local path's largest
# cost). Any key not listed is still tested.
_NOT_HEADERS = frozenset(
    {
        "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
        "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE", "REMOTE_ADDR", "REMOTE_PORT",
        "RAW_URI", "REQUEST_URI", "wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors",
        "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.file_wrapper", "wsgi.input_terminated",
        "gunicorn.socket", "werkzeug.socket", "werkzeug.request", "werkzeug.server.shutdown",
    }
)  # fmt: skip
_INTERNAL_ENV = "HTTP_X_AFFINITY_"


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
        self.router = core.router
        if transport is None:
            if core.settings.transport == "httpx":
                transport = HttpxSyncTransport(**core.transport_options())
            else:
                transport = Urllib3Transport(**core.transport_options())
        elif hasattr(transport, "build_request"):  # an httpx.Client
            transport = HttpxSyncTransport(transport, **core.transport_options())
        self.transport: SyncTransport = transport
        self.slots = _PeerSlots(core.settings.pool_size, core.settings.pool_timeout)
        # Where WSGI keeps a plain header key ("HTTP_X_TENANT"), so the common case reads it with one lookup.
        self._key_env = _environ_key(self.router.header_key) if self.router.header_key is not None else None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        prefixes = self.core.internal_prefixes
        if prefixes and environ.get("PATH_INFO", "").startswith(prefixes):
            answer = self.core.internal_response(
                environ.get("REQUEST_METHOD", "GET"),
                environ["PATH_INFO"],
                environ.get("REMOTE_ADDR"),
                environ.get("QUERY_STRING", ""),
                lambda name: environ.get("HTTP_" + name.upper().replace("-", "_")),
            )
            if answer is not None:
                return _plain(start_response, *answer)
        hop = environ.get(_HOP_ENV)
        marker = self.router.check_marker(hop.encode("latin-1")) if hop is not None else None
        header_bytes, internal = _header_scan(environ)
        if marker is not None or internal:
            # Strip our headers, and on a hop show the request as the first node saw it: the key is then
            # extracted from the same request on both nodes (an `ip` key included).
            environ = _restore(environ, marker)
            header_bytes = _header_scan(environ)[0]
        core = self.core
        if header_bytes > core.max_header_bytes or core.max_body:
            refusal = core.refusal(header_bytes, environ.get("CONTENT_LENGTH") if core.max_body else None)
            if refusal is not None:  # 431/413 before routing: the same answer whichever node owns the key
                return _plain(start_response, *refusal)
        key_env = self._key_env
        if key_env is not None:
            # The common case: a plain header key, read where WSGI keeps it (on a hop, from the restored environ).
            method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
            if marker is None:
                decision = self.router.decide_by_header(environ.get(key_env), method, path)
            else:
                decision = self.router.hop_by_header(environ.get(key_env), marker, method, path)
            if decision.action == LOCAL:
                return self._serve_local(environ, start_response, decision)
            headers = environ_headers(environ)
        else:
            view = _EnvironView(environ)
            decision = self.router.decide(view, marker)
            if decision.action == LOCAL:
                return self._serve_local(environ, start_response, decision)
            headers = view.headers
        if decision.action == FORWARD:
            return self._forward(environ, start_response, decision, headers)
        return _plain(start_response, *NO_KEY_REJECTED)

    def _serve_local(self, environ: Environ, start_response: StartResponse, decision: Decision) -> Iterable[bytes]:
        environ[DECISION_KEY] = decision
        core = self.core
        if decision.served_by != core.self_id:  # cached local decisions are shared: no write in steady state
            decision.served_by = core.self_id
        app = self.app
        if core.max_body and "HTTP_TRANSFER_ENCODING" in environ:
            app = functools.partial(_limited_app, app, core.max_body)
        if core.debug_headers or core.draining:
            raw = core.debug_headers_for(decision) if core.debug_headers else []
            if core.draining:
                raw.append(DRAINING)
            extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]

            def start_with_headers(status: str, response_headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                return start_response(status, [*response_headers, *extra], *exc_info)

            return app(environ, start_with_headers)
        return app(environ, start_response)

    def _forward(
        self, environ: Environ, start_response: StartResponse, decision: Decision, headers: Headers
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if not target:
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            target = quote(path.encode("latin-1"), safe="/%:@!$&'()*+,;=~")
            if environ.get("QUERY_STRING"):
                target += "?" + environ["QUERY_STRING"]
        if not target.startswith("/"):
            # Only origin-form targets are forwarded: "http://x/..." or "@host/..." must never choose the host.
            if method == "OPTIONS" and target == "*":
                return self._serve_local(environ, start_response, decision)
            return _plain(start_response, *BAD_TARGET)
        try:
            content_length = body_framing(headers)
        except BadFraming:
            return _plain(start_response, *BAD_FRAMING)
        limit = self.core.body_limit() if content_length is None else None
        body = _RequestBody(environ["wsgi.input"], content_length, limit) if content_length != 0 else None
        remote = environ.get("REMOTE_ADDR")
        client = (remote, int(environ.get("REMOTE_PORT") or 0)) if remote else None
        with self.core.plan(decision, headers, client, environ.get("wsgi.url_scheme", "http")) as plan:
            for node, request in plan.attempts(method, target, content_length, body.stream if body else None):
                slot = self.slots.acquire(node.id)
                if slot is None:
                    return _plain(start_response, *POOL_EXHAUSTED, extra=[("Retry-After", "1")])
                try:
                    response = self.transport.send(request)
                except (ClientGone, ForwardError) as exc:
                    slot.release()
                    if body is not None and body.over:
                        return _plain(start_response, *BODY_TOO_LARGE)  # the chunked body went over max_body
                    if isinstance(exc, ClientGone):
                        return []  # the client left mid-upload: nobody to answer, not the peer's fault
                    verdict = plan.failed(node, exc, method, body is not None and body.started)
                    if verdict is None:
                        if plan.backoff:
                            time.sleep(plan.backoff)
                        continue
                    return _plain(start_response, *verdict)
                except BaseException:
                    slot.release()
                    raise
                response.headers = plan.answered(node, response.status, response.headers)
                return self._relay(response, start_response, decision, bodiless(method, response.status), slot)
        if self.router.serve_after_failover(decision, self.core.fallback_local):
            return self._serve_local(environ, start_response, decision)
        return _plain(start_response, *plan.exhausted())

    def _relay(
        self,
        response: SyncUpstreamResponse,
        start_response: StartResponse,
        decision: Decision,
        no_body: bool,
        slot: threading.BoundedSemaphore,
    ) -> Iterable[bytes]:
        headers = response.headers
        if self.core.debug_headers and not any(name == SERVED_BY_HEADER for name, _ in headers):
            headers = [*headers, *self.core.debug_headers_for(decision)]
        reason = response.reason or _phrase(response.status)
        try:
            start_response(
                f"{response.status} {reason}", [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            )
        except BaseException:
            response.close(reusable=False)
            slot.release()
            raise
        length = None
        if not no_body:
            for name, value in headers:
                if name == b"content-length":
                    length = int(value)
        return _Relay(response, length, slot)


class _Relay:
    """The peer's body as a WSGI iterable. The server calls ``close()`` whether the body was sent in full or the
    client went away; only a fully relayed response returns its connection to the pool, and the peer slot is
    released either way."""

    __slots__ = ("_length", "_response", "_reusable", "_slot")

    def __init__(self, response: SyncUpstreamResponse, length: int | None, slot: threading.BoundedSemaphore) -> None:
        self._response = response
        self._length = length
        self._reusable = False
        self._slot: threading.BoundedSemaphore | None = slot

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._response.iter_raw():
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


class _PeerSlots:
    """At most ``size`` forwards in flight to each peer from this worker process; a forward waits at most
    ``timeout`` seconds for a slot, then is answered 503 with Retry-After instead of queueing without bound."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def acquire(self, node_id: str) -> threading.BoundedSemaphore | None:
        semaphore = self._semaphores.get(node_id)
        if semaphore is None:
            with self._lock:
                semaphore = self._semaphores.setdefault(node_id, threading.BoundedSemaphore(self.size))
        return semaphore if semaphore.acquire(timeout=self.timeout) else None


class _EnvironView(RequestView):
    """A :class:`RequestView` over a WSGI environ that looks headers up where WSGI keeps them
    (``HTTP_X_TENANT``), building the full header list only if something asks for it."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Environ) -> None:
        super().__init__(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace"),
            environ.get("QUERY_STRING", "").encode("latin-1"),
            None,  # type: ignore[arg-type]
            environ.get("REMOTE_ADDR") or None,
            environ.get("wsgi.url_scheme", "http"),
        )
        self._environ = environ

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = environ_headers(self._environ)
        return self._headers  # type: ignore[return-value]

    def first(self, name: bytes) -> bytes | None:
        value = self._environ.get(_environ_key(name))
        return None if value is None else value.encode("latin-1")


_ENVIRON_KEYS: dict[bytes, str] = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def _environ_key(name: bytes) -> str:
    """The environ key of a request header (lower-case bytes): ``x-tenant`` is ``HTTP_X_TENANT``."""
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        key = _ENVIRON_KEYS[name] = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    return key


class _RequestBody:
    """The client's body read from ``wsgi.input`` once, in blocks; records whether reading began (after which
    the request cannot be re-sent elsewhere)."""

    __slots__ = ("length", "limit", "started", "stream_in")

    def __init__(self, stream_in: Any, length: int | None, limit: BodyLimit | None = None) -> None:
        self.stream_in = stream_in
        self.length = length
        self.limit = limit
        self.started = False

    @property
    def over(self) -> bool:
        """The body went over max_body while it was forwarded."""
        return self.limit is not None and self.limit.over

    def stream(self) -> Iterator[bytes]:
        if self.started:
            raise ForwardError("the request body was already sent once")
        self.started = True
        read = self.stream_in.read
        try:
            if self.length is None:  # chunked: the server decodes it and signals the end with b""
                limit = self.limit
                while chunk := read(65536):
                    if limit is not None:
                        limit.add(len(chunk))
                    yield chunk
                return
            remaining = self.length
            while remaining > 0:
                chunk = read(min(65536, remaining))
                if not chunk:
                    raise ClientGone("client closed the connection before sending the whole body")
                remaining -= len(chunk)
                yield chunk
        except OSError as exc:  # the server's input stream fails when the client disconnects mid-upload
            raise ClientGone(str(exc)) from exc


class _LimitedInput:
    """``wsgi.input`` for a chunked body under ``max_body``: reads raise
    :class:`~affinity_mw.forward.BodyTooLarge` once the body has gone over the limit."""

    __slots__ = ("_stream", "limit")

    def __init__(self, stream: Any, limit: BodyLimit) -> None:
        self._stream = stream
        self.limit = limit

    def read(self, *size: Any) -> bytes:
        data: bytes = self._stream.read(*size)
        self.limit.add(len(data))
        return data

    def readline(self, *size: Any) -> bytes:
        data: bytes = self._stream.readline(*size)
        self.limit.add(len(data))
        return data

    def readlines(self, *hint: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*hint)
        self.limit.add(sum(len(line) for line in lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def _limited_app(app: WSGIApp, limit: int, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Run the local app on a chunked body under ``max_body``.

    Once the body goes over the limit, reading ``wsgi.input`` raises ``BodyTooLarge``; if the app had not started
    its response, the client gets 413 whatever the app answers then (an exception, a 500, or even a 200 after
    catching it), since a body it could not read in full must never look handled. If it had started its response,
    the exception is the app's and the server's to deal with (typically an aborted connection).
    """
    body = _LimitedInput(environ["wsgi.input"], BodyLimit(limit))
    environ["wsgi.input"] = body
    started = False

    def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
        nonlocal started
        if body.limit.over and not started:
            return _discard  # replaced by the 413 below
        started = True
        return start_response(status, headers, *exc_info)

    try:
        result = app(environ, start)
    except Exception:
        if started or not body.limit.over:
            raise
        return _plain(start_response, *BODY_TOO_LARGE)
    if body.limit.over and not started:
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return _plain(start_response, *BODY_TOO_LARGE)
    return result


def _discard(data: bytes) -> None:
    pass


def _header_scan(environ: Environ) -> tuple[int, bool]:
    """The size of the request's header block (names plus values) as the client sent it, and whether it has any
    of our ``X-Affinity-*`` headers: one pass over the environ's header keys (a gunicorn environ has about 25
    keys, two or three of them headers for a plain GET)."""
    size = 0
    internal = False
    for key in environ.keys() - _NOT_HEADERS:
        if key[:5] == "HTTP_":
            size += len(key) + len(environ[key]) - 5
            if key[:16] == _INTERNAL_ENV:
                internal = True
    # Content-Type and Content-Length, which WSGI keeps without the HTTP_ prefix.
    if "CONTENT_TYPE" in environ:
        size += 12 + len(environ["CONTENT_TYPE"])
    if "CONTENT_LENGTH" in environ:
        size += 14 + len(environ["CONTENT_LENGTH"])
    return size, internal


def environ_headers(environ: Environ) -> Headers:
    """The request headers in ASGI's shape (lower-case byte names), rebuilt from a WSGI environ.

    WSGI has already joined repeated headers with commas and folded ``-`` into ``_``; ``CONTENT_TYPE`` and
    ``CONTENT_LENGTH`` are restored as headers, next to ``Transfer-Encoding`` (kept by gunicorn and Werkzeug as
    ``HTTP_TRANSFER_ENCODING``) so ``body_framing`` can refuse a request that carries both. ``wsgi.input_terminated``
    is no sign of a body: gunicorn sets it on every request.
    """
    headers: Headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1")))
    if environ.get("CONTENT_TYPE"):
        headers.append((b"content-type", environ["CONTENT_TYPE"].encode("latin-1")))
    if environ.get("CONTENT_LENGTH"):
        headers.append((b"content-length", environ["CONTENT_LENGTH"].encode("latin-1")))
    return headers


def _restore(environ: Environ, marker: HopMarker | None) -> Environ:
    """A copy of ``environ`` without our internal headers; on a hop, also as the first node saw it: the client
    address and scheme from the signed marker, without the X-Forwarded-* values the forwarder added."""
    environ = {k: v for k, v in environ.items() if not k.startswith(_INTERNAL_ENV)}
    if marker is None:
        return environ
    added = marker.added
    if "p" in added:
        environ.pop("HTTP_X_FORWARDED_PROTO", None)
    if "h" in added:
        environ.pop("HTTP_X_FORWARDED_HOST", None)
    if "f" in added and "HTTP_X_FORWARDED_FOR" in environ:
        head, sep, _ = environ["HTTP_X_FORWARDED_FOR"].rpartition(",")
        if sep:
            environ["HTTP_X_FORWARDED_FOR"] = head.rstrip()
        else:
            del environ["HTTP_X_FORWARDED_FOR"]
    if marker.client_host:
        environ["REMOTE_ADDR"] = marker.client_host
        environ["REMOTE_PORT"] = str(marker.client_port)
    environ["wsgi.url_scheme"] = marker.scheme
    return environ


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _plain(
    start_response: StartResponse,
    status: int,
    text: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(text))), *(extra or ())]
    start_response(f"{status} {_phrase(status)}", headers)
    return [text]
