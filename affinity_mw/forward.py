"""The proxy: header rules shared by every adapter, and the asynchronous transports that carry a forward.

Header handling is a security boundary, so it lives in one place for ASGI and WSGI alike:

* Hop-by-hop headers (RFC 9110 section 7.6.1: ``Connection``, ``Keep-Alive``, ``Proxy-Connection``, ``TE``,
  ``Trailer``, ``Transfer-Encoding``, ``Upgrade``, ``Proxy-Authorization``) are dropped in both directions
  *before* the forwarder adds its own. The headers a response's ``Connection`` names are dropped too; those a
  client's request names are not (:func:`request_headers`): the owner's app sees the request as it would have
  served it locally, and ``Connection: x-affinity-hop`` cannot delete the marker.
* The client's ``Content-Length``/``Transfer-Encoding`` are never copied: the forward is framed from the body
  the server actually parsed (a length the server enforced, or chunked).
* Internal ``X-Affinity-*`` headers from the client, and names that fold onto them (``X_Affinity_Hop``), are
  dropped: only the forwarder's own signed marker goes upstream.
* The upstream's ``Date`` and ``Server`` are replaced by the answering server's own, as nginx does by default;
  every other response header, repeated ``Set-Cookie`` included, passes byte for byte, and bodies are never
  decoded (``Content-Encoding`` stays the owner's).

The network client sits behind :class:`AsyncTransport` (ASGI) or :class:`SyncTransport` (WSGI); the
implementations are in :mod:`affinity_mw.transports`. What a failed attempt means is decided in
:mod:`affinity_mw._forwarding` (``docs/design.md``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Protocol

from .hop import INTERNAL_SPELLINGS

__all__ = [
    "AsyncTransport",
    "ConnectFailed",
    "ForwardError",
    "SendFailed",
    "SyncTransport",
    "SyncUpstreamResponse",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTimeout",
    "lowered_response_headers",
    "request_headers",
    "response_headers",
]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
_NOT_COPIED_UP = HOP_BY_HOP | {b"content-length", b"expect"}
_NOT_COPIED_DOWN = HOP_BY_HOP | {b"date", b"server"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ForwardError(Exception):
    """A forward failed; the subclass says whether anything reached the peer."""


class ConnectFailed(ForwardError):
    """No connection could be made: nothing was sent, so any method may go to the next successor."""


class SendFailed(ForwardError):
    """The connection broke after the request (or part of it) was sent and before response headers arrived."""


class UpstreamTimeout(ForwardError):
    """The peer did not answer in time (504)."""


class BadResponse(ForwardError):
    """The peer answered something that cannot be relayed (e.g. a header over the client's limits): 502, final."""


class Unforwardable(ForwardError):
    """The request itself cannot be written as HTTP/1.1 (a CR, LF or NUL in its target or a header value, which
    the server in front should have refused): 400, final, and not the peer's fault."""


class ClientGone(Exception):
    """The client went away (disconnected mid-upload or mid-download): nothing to answer, and not the peer's fault."""


class BodyTooLarge(ClientGone):
    """The request body grew past ``max_body`` while it streamed: 413 if no response has started, else an abort.

    A subclass of :class:`ClientGone` so the transports, which recognise that on the cause chain of their own
    errors, stop the forward the same way; the adapters tell the two apart by :attr:`BodyLimit.over`."""


class BodyLimit:
    """Counts a streamed request body against ``max_body`` (413 rather than an unbounded upload); one per request,
    shared by every adapter. :meth:`add` raises :class:`BodyTooLarge` once the running total passes the limit."""

    __slots__ = ("limit", "over", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.over = False

    def add(self, size: int) -> None:
        self.seen += size
        if self.seen > self.limit:
            self.over = True
            raise BodyTooLarge(f"request body over {self.limit} bytes (AFFINITY_MAX_BODY)")


class PoolExhausted(Exception):
    """Every connection to the peer stayed busy for the whole pool wait: 503 with Retry-After, never a queue."""


def client_gone(exc: BaseException) -> bool:
    """True when a transport error was caused by our own body iterator seeing the client disconnect.

    aiohttp and urllib3 wrap exceptions raised while writing the request body in their own errors; the
    original is on the cause/context chain.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ClientGone):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tokens(value: bytes) -> set[bytes]:
    """The header names a ``Connection`` value lists, lower-cased: hop-by-hop for this one message."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client_host: str | None,
    scheme: str,
    forwarded: bool = False,
) -> tuple[Headers, str]:
    """Headers for the upstream request, and the X-Forwarded-* headers added ("f", "p", "h") for the marker.

    By default nothing is added: the signed marker carries the client's address and scheme, the client's
    ``Host`` is passed on, and the owner's adapter shows its app the request as this node saw it. Every header
    added here would be parsed by the owner's server and removed again by its adapter before the app, so they
    only serve layers outside the middleware on the owner (an access log, an outer middleware), at a measured
    cost to every hop (docs/benchmarks.md). With ``forwarded=True`` (``AFFINITY_FORWARDED_HEADERS=1``),
    ``X-Forwarded-For`` gets the client's address appended and ``X-Forwarded-Proto``/``-Host`` are set when the
    client request has none (an edge proxy's values are more truthful than ours); the owner's adapter removes
    exactly what was added (the marker says what).

    The client's ``Connection`` header is dropped with the other hop-by-hop headers, but the names it lists are
    not: a forward is an internal re-dispatch, and the owner's app must see the request as it would have seen it
    served where it landed, where nothing the client names is removed. Honouring them would let a client strip,
    on forwarded requests only, what a front proxy added (``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``), its
    own credentials (``Authorization``, ``Cookie``) or the very header its key was read from.
    """
    drop = _NOT_COPIED_UP
    out: Headers = []
    if not forwarded:
        for name, value in headers:
            lname = name.lower()
            if lname not in drop and lname[:11] not in INTERNAL_SPELLINGS:
                out.append((lname, value))
        return out, ""
    xff: bytes | None = None
    host: bytes | None = None
    has_proto = has_xhost = False
    for name, value in headers:
        lname = name.lower()
        if lname in drop or lname[:11] in INTERNAL_SPELLINGS:
            continue
        if lname == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if lname == b"host" and host is None:
            host = value
        elif lname == b"x-forwarded-proto":
            has_proto = True
        elif lname == b"x-forwarded-host":
            has_xhost = True
        out.append((lname, value))
    added = ""
    if client_host:
        client = client_host.encode("latin-1")
        out.append((b"x-forwarded-for", client if xff is None else xff + b", " + client))
        added += "f"
    elif xff is not None:
        out.append((b"x-forwarded-for", xff))
    if not has_proto:
        out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
        added += "p"
    if not has_xhost and host is not None:
        out.append((b"x-forwarded-host", host))
        added += "h"
    return out, added


def restore_forwarded(headers: Sequence[tuple[bytes, bytes]], added: str) -> Headers:
    """Undo what :func:`request_headers` added, and drop internal headers, for the owner's app."""
    out: Headers = []
    for name, value in headers:
        if name[:11].lower() in INTERNAL_SPELLINGS:
            continue
        if name == b"x-forwarded-proto" and "p" in added:
            continue
        if name == b"x-forwarded-host" and "h" in added:
            continue
        if name == b"x-forwarded-for" and "f" in added:
            head, sep, _ = value.rpartition(b",")
            if not sep:
                continue
            value = head.rstrip()
        out.append((name, value))
    return out


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream response's headers to pass downstream, lower-cased as ASGI wants, repeats and order kept."""
    return lowered_response_headers([(name.lower(), value) for name, value in raw])


def lowered_response_headers(items: list[tuple[bytes, bytes]]) -> Headers:
    """:func:`response_headers` for a client that lower-cased the names as it parsed them."""
    drop = _NOT_COPIED_DOWN
    for name, value in items:
        if name == b"connection":  # names are lower-case already
            drop = drop | _tokens(value)
    return [(name, value) for name, value in items if name not in drop]


class BadFraming(ValueError):
    """The request's Content-Length / Transfer-Encoding disagree or are malformed (a smuggling attempt)."""


def body_framing(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request body's length as the server parsed it: ``0`` for none, ``None`` for chunked.

    The server enforces its framing while delivering the body, so this length is what will actually be sent.
    Servers disagree on ambiguous framing, though (h11 lets Transfer-Encoding win over a Content-Length, as RFC
    9112 6.3 permits), so a request whose framing two parsers could read differently raises ``BadFraming`` and is
    answered 400 rather than forwarded: Content-Length with Transfer-Encoding, Content-Lengths that differ, a
    Transfer-Encoding other than ``chunked``, a Content-Length that is not all digits.
    """
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                raise BadFraming("Transfer-Encoding must be exactly one 'chunked'")
            chunked = True
        elif name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise BadFraming("malformed or conflicting Content-Length")
            length = int(value)
    if chunked:
        if length is not None:
            raise BadFraming("both Content-Length and Transfer-Encoding")
        return None
    return length or 0


def bodiless(method: str, status: int) -> bool:
    """Responses that carry no body whatever their headers say (RFC 9110 6.4.1): HEAD, 1xx, 204, 304."""
    return method == "HEAD" or status < 200 or status in (204, 304)


DRAINING_HEADER = b"x-affinity-draining"
CANNOT_REACH = (502, b"No owner of this key could be reached.\n")
GATEWAY_TIMEOUT = (504, b"The key's owner did not answer in time.\n")
BAD_TARGET = (400, b"The request target must be a path (origin-form).\n")
BAD_FRAMING = (400, b"The request's Content-Length and Transfer-Encoding conflict or are malformed.\n")
POOL_EXHAUSTED = (503, b"The key's owner is busy; retry shortly.\n")
HEADERS_TOO_LARGE = (431, b"The request's header fields are too large (AFFINITY_MAX_HEADER_BYTES).\n")
BODY_TOO_LARGE = (413, b"The request body is too large (AFFINITY_MAX_BODY).\n")


class UpstreamRequest:
    """One attempt's request. ``target`` is origin-form (starts with ``/``; adapters refuse anything else).
    ``body`` is ``None`` (no body), or an iterable plus ``content_length`` (``None`` means chunked).
    ``read_timeout`` bounds the wait for response headers (the lesser of the per-try timeout and what is left of
    the overall deadline)."""

    __slots__ = ("body", "content_length", "headers", "method", "read_timeout", "target", "url_base")

    def __init__(
        self,
        method: str,
        url_base: str,
        target: str,
        headers: Headers,
        body: AsyncIterable[bytes] | Iterable[bytes] | None = None,
        content_length: int | None = 0,
        read_timeout: float | None = None,
    ) -> None:
        self.method = method
        self.url_base = url_base
        self.target = target
        self.headers = headers
        self.body = body
        self.content_length = content_length
        self.read_timeout = read_timeout


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self, *, reusable: bool) -> None: ...


class AsyncTransport(Protocol):
    """What the ASGI middleware needs from a client: send one request, get headers back, stream the body."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class SyncUpstreamResponse(Protocol):
    status: int
    reason: str
    headers: Headers

    def iter_raw(self) -> Iterator[bytes]: ...

    def close(self, *, reusable: bool) -> None: ...


class SyncTransport(Protocol):
    """What the WSGI middleware needs from a client; thread-safe, one per worker process."""

    def send(self, request: UpstreamRequest) -> SyncUpstreamResponse: ...

    def close(self) -> None: ...
