"""Django middleware: put ``affinity_mw.contrib.django.AffinityMiddleware`` first in ``MIDDLEWARE``.

First, so that a request another node owns is forwarded before any other middleware loads a session, checks
CSRF, authenticates or touches the database: the forwarding node does no local work for it. The middleware is
both sync and async capable, like Django's own, so it never forces a thread switch on either handler:

* under WSGI (gunicorn, ``runserver``) it forwards with a pooled urllib3 client (``httpx.Client`` on request)
  and streams the body from the server's input;
* under ASGI (uvicorn, daphne) it forwards with the built-in asyncio client (:mod:`affinity_mw.h1`) in the
  serving event loop and returns an async iterator, so Django streams the answer instead of buffering it. If a
  sync-only middleware below it makes Django run it synchronously under ASGI, the forward still runs on the
  event loop (``async_to_sync``).

Configuration: ``settings.AFFINITY = {"peers": [...], "key": "header:X-Region", ...}`` with the keyword option
names of :mod:`affinity_mw.config`; any ``AFFINITY_*`` environment variable that is set wins over the same
option in ``settings.AFFINITY``, so a deploy can override what the settings file ships. Settings are validated
once, when Django creates the middleware, and by the system checks (``affinity_mw.E001`` ...), which run at
``manage.py check`` when ``"affinity_mw.contrib.django.AffinityConfig"`` is in ``INSTALLED_APPS``.

The routing, header and failover rules are the shared ones (:class:`~affinity_mw.core.AffinityCore`,
:class:`~affinity_mw.forward.ForwardPlan`); this module only reads a Django request and moves bytes. See
``docs/integrations/django.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import ResponseHeaders
from django.utils.module_loading import import_string

from ..asgi import _PeerSlots as _AsyncPeerSlots
from ..asgi import _Slots
from ..config import OPTIONS, ConfigurationError, Settings
from ..core import DRAINING, NO_KEY_REJECTED, SERVED_BY_HEADER, AffinityCore
from ..forward import (
    BAD_FRAMING,
    BAD_TARGET,
    BODY_TOO_LARGE,
    POOL_EXHAUSTED,
    AsyncTransport,
    BadFraming,
    ClientGone,
    ForwardError,
    Headers,
    PoolExhausted,
    SyncTransport,
    UpstreamResponse,
    bodiless,
    body_framing,
)
from ..hop import HopMarker
from ..membership import StaticMembership
from ..request import RequestView
from ..router import FORWARD, LOCAL, Decision
from ..transports import HttpxSyncTransport, HttpxTransport, Urllib3Transport
from ..transports import async_transport as make_async_transport
from ..wsgi import _PeerSlots as _SyncPeerSlots
from ..wsgi import _Relay, _RequestBody, _restore, environ_headers
from .flask import _as_env

__all__ = ["AffinityConfig", "AffinityMiddleware", "RelayedResponse", "check_affinity", "load_core"]

logger = logging.getLogger("affinity_mw")

MIDDLEWARE_PATH = "affinity_mw.contrib.django.AffinityMiddleware"
_HOP_META = "HTTP_X_AFFINITY_HOP"
_INTERNAL_META = "HTTP_X_AFFINITY_"
_OPTION_ENV = {option.name: option.env for option in OPTIONS}
_CLIENT_GONE = (400, b"The client closed the connection before sending the whole body.\n")


class AffinityConfig(AppConfig):  # type: ignore[misc]
    """Add ``"affinity_mw.contrib.django.AffinityConfig"`` to ``INSTALLED_APPS`` so ``manage.py check`` runs the
    affinity-mw system checks (Django imports middleware only when it builds a request handler)."""

    name = "affinity_mw.contrib.django"
    label = "affinity_mw"
    verbose_name = "affinity-mw"


def _split_options(configured: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``settings.AFFINITY`` as keyword options and an environment, with every set ``AFFINITY_*`` variable winning.

    Plain values (strings, numbers, booleans, lists) are turned into their environment form so the same parser
    validates them whichever way they came; callables (``key``) and objects (``transport``, ``membership``) stay
    keyword options. Unknown names stay too, so :meth:`Settings.load` names them in its error.
    """
    env = dict(environ)
    options: dict[str, Any] = {}
    for name, value in configured.items():
        variable = _OPTION_ENV.get(name)
        if variable is None:  # membership, or an unknown name
            options[name] = value
        elif value is None or env.get(variable, "").strip():
            continue  # unset here, or the environment wins over settings.AFFINITY
        elif isinstance(value, (str, bool, int, float, list, tuple)):
            env[variable] = _as_env(value)
        else:  # a callable key, a transport object
            options[name] = value
    return options, env


def _configured() -> Mapping[str, Any]:
    configured = getattr(django_settings, "AFFINITY", None)
    if configured is None:
        return {}
    if not isinstance(configured, Mapping):
        raise ConfigurationError(
            f"settings.AFFINITY must be a dict of affinity-mw options, got {type(configured).__name__}."
        )
    return configured


def _resolve(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], Any, Any]:
    """Keyword options, environment, transport object and membership object for ``settings.AFFINITY``."""
    options, env = _split_options(_configured(), environ)
    membership = options.pop("membership", None)
    transport = options.pop("transport", None)  # only an object is left here: a name went to the environment
    return options, env, transport, membership


def load_core(environ: Mapping[str, str] | None = None) -> tuple[AffinityCore, Any]:
    """The :class:`AffinityCore` for ``settings.AFFINITY`` under the environment, and the transport object given
    as ``settings.AFFINITY["transport"]`` (``None`` when it is a name or absent)."""
    options, env, transport, membership = _resolve(os.environ if environ is None else environ)
    return AffinityCore(membership=membership, environ=env, **options), transport


class AffinityMiddleware:
    """Route each request to the node that owns its affinity key; serve it here only when this node owns it.

    The decision is ``request.affinity`` (a :class:`~affinity_mw.router.Decision`) for every request this node
    serves. On the owner, a forwarded request looks as it did to the first node: ``REMOTE_ADDR`` and the scheme
    are restored from the signed hop marker, the ``X-Forwarded-*`` values the forwarder added are removed, and
    no ``X-Affinity-*`` header reaches the view.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self.core, transport = load_core()
        self.router = self.core.router
        self.async_transport, self.sync_transport = self._transports(transport)
        settings = self.core.settings
        self.async_slots = _AsyncPeerSlots(settings.pool_size, settings.pool_timeout)
        self.sync_slots = _SyncPeerSlots(settings.pool_size, settings.pool_timeout)
        for message in _position_messages(require=False):
            logger.warning("affinity-mw: %s (%s) %s", message.msg, message.id, message.hint or "")

    def _transports(self, given: Any) -> tuple[AsyncTransport, SyncTransport | None]:
        """One transport per process for each way this instance can forward. Neither opens a connection here:
        the async client's pool is created lazily in the serving event loop."""
        options = self.core.transport_options()
        use_httpx = self.core.settings.transport == "httpx"
        async_transport: AsyncTransport = make_async_transport(self.core.settings.transport, **options)
        sync_transport: SyncTransport | None = None
        if not self.async_mode:
            sync_transport = HttpxSyncTransport(**options) if use_httpx else Urllib3Transport(**options)
        if given is not None:
            if inspect.iscoroutinefunction(getattr(given, "send", None)):
                async_transport = HttpxTransport(given, **options) if hasattr(given, "build_request") else given
            else:
                sync_transport = HttpxSyncTransport(given, **options) if hasattr(given, "build_request") else given
        return async_transport, sync_transport

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        answer = self._internal(request)
        if answer is not None:
            return answer
        decided = self._decide(request)
        if isinstance(decided, HttpResponse):
            return decided
        decision, headers = decided
        if decision.action == FORWARD:
            if isinstance(request, ASGIRequest):
                # Run synchronously under ASGI (a sync-only middleware sits below this one): forward on the event
                # loop anyway, so Django's ASGI handler gets an async iterator and streams it instead of
                # collecting a sync iterator into memory.
                response = async_to_sync(self._aforward)(request, decision, headers)
            else:
                response = self._forward(request, decision, headers)
            if response is not None:
                return response
        elif decision.action != LOCAL:
            return _plain(*NO_KEY_REJECTED)
        self._serve_here(request, decision)
        return self._finish_local(self.get_response(request), decision)

    async def __acall__(self, request: Any) -> Any:
        answer = self._internal(request)
        if answer is not None:
            return answer
        decided = self._decide(request)
        if isinstance(decided, HttpResponse):
            return decided
        decision, headers = decided
        if decision.action == FORWARD:
            response = await self._aforward(request, decision, headers)
            if response is not None:
                return response
        elif decision.action != LOCAL:
            return _plain(*NO_KEY_REJECTED)
        self._serve_here(request, decision)
        return self._finish_local(await self.get_response(request), decision)

    def _internal(self, request: Any) -> HttpResponse | None:
        """The middleware's own paths (health, introspection), answered before routing: they are about this
        node, not about a key."""
        prefixes = self.core.internal_prefixes
        if prefixes and request.path_info.startswith(prefixes):
            meta = request.META
            answer = self.core.internal_response(
                request.method,
                request.path_info,
                meta.get("REMOTE_ADDR"),
                meta.get("QUERY_STRING", ""),
                lambda name: meta.get("HTTP_" + name.upper().replace("-", "_")),
            )
            if answer is not None:
                return _plain(*answer)
        return None

    def _decide(self, request: Any) -> tuple[Decision, Headers] | HttpResponse:
        """Route from ``request.META``: WSGI-style keys under both handlers, so one header conversion serves both.

        Path, query and scheme come from what each server parsed: the ASGI scope (bytes query, exact path), or
        the WSGI environ as Django decoded it. A request over the size limits gets its 431/413 here, before any
        routing (under ASGI Django has already spooled the body, so its actual size is what counts).
        """
        hop = request.META.get(_HOP_META)
        marker = self.router.check_marker(hop.encode("latin-1")) if hop is not None else None
        if marker is not None or any(key.startswith(_INTERNAL_META) for key in request.META):
            # Strip our headers, and on a hop show the request as the first node saw it before the key is
            # extracted: both nodes then extract it from the same request (an `ip` key included).
            _restore_request(request, marker)
        meta = request.META
        headers = environ_headers(meta)
        core = self.core
        length = None
        if core.max_body:
            length = meta.get("CONTENT_LENGTH") or None
            if length is None and isinstance(request, ASGIRequest):
                length = str(_spooled_size(request) or "") or None
        refusal = core.refusal(sum(len(name) + len(value) for name, value in headers), length)
        if refusal is not None:
            return _plain(*refusal)
        if isinstance(request, ASGIRequest):
            scope = request.scope
            path, query, scheme = scope["path"], scope.get("query_string", b""), scope.get("scheme") or "http"
        else:
            path = request.path_info
            query = meta.get("QUERY_STRING", "").encode("latin-1")
            scheme = meta.get("wsgi.url_scheme", "http")
        view = RequestView(request.method, path, query, headers, meta.get("REMOTE_ADDR") or None, scheme)
        return self.router.decide(view, marker), headers

    def _serve_here(self, request: Any, decision: Decision) -> None:
        request.affinity = decision
        if decision.served_by != self.core.self_id:  # cached local decisions are shared: no write to them
            decision.served_by = self.core.self_id

    def _finish_local(self, response: Any, decision: Decision) -> Any:
        if self.core.debug_headers or self.core.draining:
            extra = self.core.debug_headers_for(decision) if self.core.debug_headers else []
            if self.core.draining:
                extra.append(DRAINING)
            for name, value in extra:
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
        return response

    def _forward(self, request: Any, decision: Decision, headers: Headers) -> Any:
        """Forward under WSGI; ``None`` means this node should serve it (every candidate refused, or
        ``OPTIONS *``)."""
        meta = request.META
        method = request.method
        target = meta.get("RAW_URI") or meta.get("REQUEST_URI") or request.get_full_path()
        if not target.startswith("/"):
            # Only origin-form targets are forwarded: "http://x/..." or "@host/..." must never choose the host.
            return None if method == "OPTIONS" and target == "*" else _plain(*BAD_TARGET)
        try:
            length = body_framing(headers)
        except BadFraming:
            return _plain(*BAD_FRAMING)
        body = None
        if length != 0:
            # Django's own stream stops at CONTENT_LENGTH and so reads nothing of a chunked body: read those from
            # the server's input, which ends where the chunked body ends (``wsgi.input_terminated``).
            limit = self.core.body_limit() if length is None else None
            body = _RequestBody(request if length is not None else meta["wsgi.input"], length, limit)
        transport = self.sync_transport
        assert transport is not None  # a sync-mode instance always has one
        with self.core.plan(decision, headers, _client(meta), meta.get("wsgi.url_scheme", "http")) as plan:
            for node, upstream in plan.attempts(method, target, length, body.stream if body else None):
                slot = self.sync_slots.acquire(node.id)
                if slot is None:
                    return _plain(*POOL_EXHAUSTED, retry_after=True)
                try:
                    response = transport.send(upstream)
                except ClientGone:
                    slot.release()
                    if body is not None and body.over:
                        return _plain(*BODY_TOO_LARGE)  # the chunked body went over max_body
                    return _plain(*_CLIENT_GONE)  # nobody reads it; it is for the access log
                except ForwardError as exc:
                    slot.release()
                    if body is not None and body.over:
                        return _plain(*BODY_TOO_LARGE)
                    verdict = plan.failed(node, exc, method, body is not None and body.started)
                    if verdict is None:
                        if plan.backoff:
                            time.sleep(plan.backoff)
                        continue
                    return _plain(*verdict)
                except BaseException:
                    slot.release()
                    raise
                down = plan.answered(node, response.status, response.headers)
                try:
                    relay = _Relay(response, _expected_length(method, response.status, down), slot)
                except BaseException:
                    response.close(reusable=False)
                    slot.release()
                    raise
                try:
                    return self._relayed(relay, response.status, response.reason, down, decision)
                except BaseException:
                    relay.close()
                    raise
        if self.router.serve_after_failover(decision, self.core.fallback_local):
            return None
        return _plain(*plan.exhausted())

    async def _aforward(self, request: Any, decision: Decision, headers: Headers) -> Any:
        """Forward under ASGI; ``None`` means this node should serve it (every candidate refused, or
        ``OPTIONS *``).

        Django's ASGI handler has already read the whole body into a ``SpooledTemporaryFile`` (memory up to
        ``FILE_UPLOAD_MAX_MEMORY_SIZE``, disk beyond) before any middleware runs, so the body is streamed from
        that file and framed with its exact length, also when the client sent it chunked: owners that cannot
        read a chunked body (Django under WSGI) then can, and framing is per hop anyway.
        """
        meta = request.META
        method = request.method
        scope = request.scope
        target = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
        if not target.startswith(b"/"):
            # Only origin-form targets are forwarded: "http://x/..." or "@host/..." must never choose the host.
            return None if method == "OPTIONS" and target == b"*" else _plain(*BAD_TARGET)
        if scope.get("query_string"):
            target = target + b"?" + scope["query_string"]
        length = _spooled_size(request)
        if length is None:
            try:
                length = body_framing(headers)
            except BadFraming:
                return _plain(*BAD_FRAMING)
        body = _RequestBody(request, length) if length != 0 else None
        with self.core.plan(decision, headers, _client(meta), scope.get("scheme") or "http") as plan:
            stream = (lambda: _async_chunks(body.stream())) if body else None
            for node, upstream in plan.attempts(method, target.decode("latin-1"), length, stream):
                try:
                    slot = await self.async_slots.acquire(node.id)
                except PoolExhausted:
                    return _plain(*POOL_EXHAUSTED, retry_after=True)
                try:
                    response = await self.async_transport.send(upstream)
                except ForwardError as exc:
                    slot.release()
                    verdict = plan.failed(node, exc, method, body is not None and body.started)
                    if verdict is None:
                        if plan.backoff:
                            await asyncio.sleep(plan.backoff)
                        continue
                    return _plain(*verdict)
                except BaseException:
                    slot.release()
                    raise
                down = plan.answered(node, response.status, response.headers)
                try:
                    relay = _AsyncRelay(response, _expected_length(method, response.status, down), slot)
                except BaseException:
                    slot.release()
                    await response.aclose(reusable=False)
                    raise
                return self._relayed(relay, response.status, "", down, decision)
        if self.router.serve_after_failover(decision, self.core.fallback_local):
            return None
        return _plain(*plan.exhausted())

    def _relayed(self, content: Any, status: int, reason: str, headers: Headers, decision: Decision) -> Any:
        if self.core.debug_headers and not any(name == SERVED_BY_HEADER for name, _ in headers):
            headers = [*headers, *self.core.debug_headers_for(decision)]
        return RelayedResponse(content, status, reason, headers)


def _restore_request(request: Any, marker: HopMarker | None) -> None:
    """Without our internal headers; on a hop, as the first node saw it: client address, scheme, and no
    ``X-Forwarded-*`` values the forwarder added (the environ rules are :mod:`affinity_mw.wsgi`'s)."""
    meta = _restore(request.META, marker)
    asgi = isinstance(request, ASGIRequest)
    if marker is not None and marker.client_host:
        if "REMOTE_HOST" in meta:
            meta["REMOTE_HOST"] = marker.client_host
        if asgi:
            meta["REMOTE_PORT"] = marker.client_port  # Django's ASGI request keeps the port an int
    if asgi:
        if marker is not None:
            scope = dict(request.scope, scheme=marker.scheme)
            if marker.client_host:
                scope["client"] = (marker.client_host, marker.client_port)
            request.scope = scope
    else:
        request.environ = meta
    request.META = meta
    request.__dict__.pop("headers", None)  # HttpRequest.headers is cached from META


class RelayedResponse(StreamingHttpResponse):  # type: ignore[misc]
    """A peer's response relayed through Django with every header line exactly as the peer sent it.

    Django keeps response headers in a mapping with one value per name, and cookies in a ``SimpleCookie`` keyed
    by cookie name, so neither can hold repeated ``Set-Cookie`` lines faithfully (two cookies of one name on
    different paths collapse into one, attributes are re-serialised). Both Django handlers, WSGI and ASGI, build
    the header list they send from ``response.items()`` plus ``response.cookies``; this class returns the peer's
    list from ``items()``, so what reaches the client is byte for byte what the owner sent.

    ``headers`` holds a view for code that inspects the response: repeated values joined with ``", "``
    (``Set-Cookie`` left out). A middleware placed before :class:`AffinityMiddleware` that changes or deletes a
    header there replaces all lines of that name; headers it adds, and cookies it sets with ``set_cookie()``,
    are sent in addition. ``cookies`` starts empty.
    """

    def __init__(
        self, content: Iterable[bytes] | AsyncIterator[bytes], status: int, reason: str, headers: Headers
    ) -> None:
        super().__init__(content, status=status, reason=reason or None)
        self.affinity_lines = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
        joined: dict[str, str] = {}
        for name, value in self.affinity_lines:
            if name != "set-cookie":
                joined[name] = value if name not in joined else f"{joined[name]}, {value}"
        self._affinity_joined = joined
        # Replaces the mapping StreamingHttpResponse filled, which includes a Content-Type the peer never sent.
        self.headers = ResponseHeaders(joined)

    def items(self) -> list[tuple[str, str]]:
        current = {name.lower(): (name, value) for name, value in self.headers.items()}
        joined = self._affinity_joined
        out: list[tuple[str, str]] = []
        replaced: set[str] = set()
        for name, value in self.affinity_lines:
            if name in joined:
                now = current.get(name)
                if now is None:  # deleted by a middleware
                    continue
                if now[1] != joined[name]:  # changed by a middleware: its one value replaces the peer's lines
                    if name not in replaced:
                        replaced.add(name)
                        out.append(now)
                    continue
            out.append((name, value))
        out.extend(pair for name, pair in current.items() if name not in joined)
        return out


def _expected_length(method: str, status: int, headers: Headers) -> int | None:
    """The body length the peer announced, to detect a truncated body; ``None`` when there is no body to check."""
    if bodiless(method, status):
        return None
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


class _AsyncRelay:
    """The peer's body for Django's ASGI handler: an async iterable, so Django streams it instead of collecting it.

    The peer connection and the peer slot are freed exactly once: by the iterator's ``finally`` when the body is
    done, when the peer breaks, or when Django cancels the response because the client went away; or, when
    Django drops the response without ever iterating it (the client left before the body started), as this
    object is collected. Only a complete body returns the connection to the pool. A body that ends short of its
    Content-Length raises, so the server aborts the client's connection instead of ending a truncated body.
    """

    __slots__ = ("_length", "_loop", "_response", "_slot")

    def __init__(self, response: UpstreamResponse, length: int | None, slot: _Slots) -> None:
        self._response = response
        self._length = length
        self._slot: _Slots | None = slot
        self._loop = asyncio.get_running_loop()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        slot, self._slot = self._slot, None  # from the first read on, the finally below frees everything
        reusable = False
        try:
            sent = 0
            async for chunk in self._response.aiter_raw():
                sent += len(chunk)
                yield chunk
            if self._length is not None and sent < self._length:
                raise ForwardError("peer closed the response before its Content-Length was sent")
            reusable = True
        finally:
            try:
                await self._response.aclose(reusable=reusable)
            finally:
                if slot is not None:
                    slot.release()

    def __del__(self) -> None:
        if self._slot is not None:  # never iterated
            slot, self._slot = self._slot, None
            with contextlib.suppress(RuntimeError):  # a closed loop has nothing left to free
                self._loop.call_soon_threadsafe(_discard, self._response, slot)


_discarding: set[asyncio.Future[None]] = set()


def _discard(response: UpstreamResponse, slot: _Slots) -> None:
    slot.release()
    task = asyncio.ensure_future(response.aclose(reusable=False))
    _discarding.add(task)
    task.add_done_callback(_discarding.discard)


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Django's spooled body as the async iterable the async transports want (reads of a local file, 64 KiB at a
    time)."""
    for chunk in chunks:
        yield chunk


def _spooled_size(request: Any) -> int | None:
    """Bytes left in the body file Django's ASGI handler spooled, or ``None`` (forward chunked) if unknown."""
    stream: Any = getattr(request, "_stream", None)
    try:
        position = stream.tell()
        size = stream.seek(0, os.SEEK_END) - position
        stream.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return int(size)


def _client(meta: Mapping[str, Any]) -> tuple[str, int] | None:
    remote = meta.get("REMOTE_ADDR")
    return (remote, int(meta.get("REMOTE_PORT") or 0)) if remote else None


def _plain(
    status: int, text: bytes, content_type: str = "text/plain; charset=utf-8", *, retry_after: bool = False
) -> HttpResponse:
    response = HttpResponse(text, status=status, content_type=content_type)
    response.headers["Content-Length"] = str(len(text))
    if retry_after:
        response.headers["Retry-After"] = "1"
    return response


# ------------------------------------------------------------------------------------------------- system checks


def _is_affinity_middleware(path: str) -> bool:
    """Our middleware, or a subclass of it under another name."""
    if path == MIDDLEWARE_PATH:
        return True
    if path.startswith("django."):
        return False
    try:
        cls = import_string(path)
    except Exception:  # a broken entry is Django's own error to report, not ours
        return False
    return isinstance(cls, type) and issubclass(cls, AffinityMiddleware)


def _position_messages(*, require: bool = True) -> list[checks.CheckMessage]:
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    positions = [i for i, path in enumerate(middleware) if _is_affinity_middleware(path)]
    if not positions:
        if not require:
            return []
        return [
            checks.Warning(
                "affinity-mw is installed but its middleware is not in MIDDLEWARE, so no request is routed.",
                hint=f"Add {MIDDLEWARE_PATH!r} as the first entry of MIDDLEWARE.",
                id="affinity_mw.W002",
            )
        ]
    messages = []
    if positions[0] != 0:
        messages.append(
            checks.Warning(
                f"{middleware[positions[0]]} is not the first entry of MIDDLEWARE: the middleware before it "
                f"({', '.join(middleware[: positions[0]])}) runs on every request, also on those that are then "
                "forwarded, and sees (and may change) every relayed response.",
                hint=f"Move {MIDDLEWARE_PATH!r} to the top of MIDDLEWARE.",
                id="affinity_mw.W001",
            )
        )
    if len(positions) > 1:
        messages.append(
            checks.Error(
                "The affinity-mw middleware is listed more than once in MIDDLEWARE.",
                hint="Keep one entry, the first.",
                id="affinity_mw.E002",
            )
        )
    return messages


def check_affinity(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validate ``settings.AFFINITY`` under the current ``AFFINITY_*`` environment, and the middleware's place.

    Only validation happens here: the settings are parsed and a static peer list is checked, but no membership
    is started (no DNS lookups, no health-check thread), so ``manage.py check`` stays side-effect free.
    """
    messages: list[checks.CheckMessage] = _position_messages()
    try:
        options, env, _, membership = _resolve(os.environ)
        settings = Settings.load(options, env)
        if membership is None and not getattr(settings, "dns", None):
            StaticMembership(settings.peers, settings.self_url, vnodes=settings.vnodes, algorithm=settings.ring)
    except ValueError as exc:  # ConfigurationError, and the peer-list errors of StaticMembership
        messages.append(
            checks.Error(
                str(exc),
                hint="Fix settings.AFFINITY or the AFFINITY_* environment variables (the environment wins).",
                id="affinity_mw.E001",
            )
        )
    return messages


# Registered on import: by INSTALLED_APPS (AffinityConfig) for manage.py check, or with the middleware itself.
checks.register(check_affinity, "affinity_mw")
