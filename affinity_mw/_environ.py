"""A WSGI environ as a request: its headers in ASGI's shape, a view for extractors, and the restored first node's
view on a hop. Shared by the WSGI adapter and the Django integration (whose ``request.META`` is an environ)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from .forward import BodyLimit, ClientGone, ForwardError, Headers, restore_forwarded
from .hop import HopMarker
from .request import RequestView

__all__ = [
    "EnvironRequest",
    "EnvironView",
    "RequestBody",
    "environ_headers",
    "environ_key",
    "header_scan",
    "restore_environ",
]

Environ = dict[str, Any]

HOP_ENV = "HTTP_X_AFFINITY_HOP"
_INTERNAL_ENV = "HTTP_X_AFFINITY_"
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
_ENVIRON_KEYS: dict[bytes, str] = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
# The X-Forwarded-* headers restore_forwarded may change, and where an environ keeps them.
_FORWARDED = ((b"x-forwarded-for", "HTTP_X_FORWARDED_FOR"), (b"x-forwarded-proto", "HTTP_X_FORWARDED_PROTO"),
              (b"x-forwarded-host", "HTTP_X_FORWARDED_HOST"))  # fmt: skip


def environ_key(name: bytes) -> str:
    """The environ key of a request header (lower-case bytes): ``x-tenant`` is ``HTTP_X_TENANT``."""
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        key = _ENVIRON_KEYS[name] = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    return key


def header_scan(environ: Environ) -> tuple[int, bool]:
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


def restore_environ(environ: Environ, marker: HopMarker | None) -> Environ:
    """A copy of ``environ`` without our internal headers; on a hop, also as the first node saw it: the client
    address and scheme from the signed marker, and the X-Forwarded-* values as
    :func:`~affinity_mw.forward.restore_forwarded` leaves them."""
    environ = {k: v for k, v in environ.items() if not k.startswith(_INTERNAL_ENV)}
    if marker is None:
        return environ
    if marker.added:
        pairs = [(name, environ.pop(key).encode("latin-1")) for name, key in _FORWARDED if key in environ]
        for name, value in restore_forwarded(pairs, marker.added):
            environ[environ_key(name)] = value.decode("latin-1")
    if marker.client_host:
        environ["REMOTE_ADDR"] = marker.client_host
        environ["REMOTE_PORT"] = str(marker.client_port)
    environ["wsgi.url_scheme"] = marker.scheme
    return environ


class EnvironView(RequestView):
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
        value = self._environ.get(environ_key(name))
        return None if value is None else value.encode("latin-1")


class EnvironRequest:
    """The request as admission and the forward read it, over a WSGI environ: the header keys scanned once when
    built (their size, our internal headers), the hop marker and the key header read where WSGI keeps them."""

    __slots__ = (
        "_headers", "_view", "environ", "header_bytes", "hop_token", "internal", "key_env", "key_value", "method",
        "path",
    )  # fmt: skip
    unframed = False  # a WSGI server hands over a body it framed

    def __init__(self, environ: Environ, key_env: str | None) -> None:
        self.environ = environ
        self.key_env = key_env
        self.method: str = environ.get("REQUEST_METHOD", "GET")
        self.path: str = environ.get("PATH_INFO", "")
        self.header_bytes, self.internal = header_scan(environ)
        hop = environ.get(HOP_ENV)
        self.hop_token = hop.encode("latin-1") if hop is not None else None
        self.key_value: str | None = environ.get(key_env) if key_env is not None else None
        self._view: EnvironView | None = None
        self._headers: Headers | None = None

    def restore(self, marker: HopMarker | None) -> None:
        self.environ = environ = restore_environ(self.environ, marker)
        self._view = self._headers = None
        self.header_bytes = header_scan(environ)[0]
        self.key_value = environ.get(self.key_env) if self.key_env is not None else None

    @property
    def headers(self) -> Headers:
        """The headers in ASGI's shape, built once (shared with the view, if an extractor asked for them first)."""
        if self._headers is None:
            self._headers = self._view.headers if self._view is not None else environ_headers(self.environ)
        return self._headers

    @property
    def client_host(self) -> str | None:
        return self.environ.get("REMOTE_ADDR")

    @property
    def client(self) -> tuple[str, int] | None:
        remote = self.environ.get("REMOTE_ADDR")
        return (remote, int(self.environ.get("REMOTE_PORT") or 0)) if remote else None

    @property
    def scheme(self) -> str:
        return self.environ.get("wsgi.url_scheme", "http")  # type: ignore[no-any-return]

    @property
    def query(self) -> str:
        return self.environ.get("QUERY_STRING", "")  # type: ignore[no-any-return]

    def content_length(self) -> str | None:
        return self.environ.get("CONTENT_LENGTH")

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    def view(self) -> RequestView:
        if self._view is None:
            self._view = EnvironView(self.environ)
        return self._view

    def target(self) -> str:
        environ = self.environ
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if not target:
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            target = quote(path.encode("latin-1"), safe="/%:@!$&'()*+,;=~")
            if environ.get("QUERY_STRING"):
                target += "?" + environ["QUERY_STRING"]
        return target

    def body(self, content_length: int | None, limit: BodyLimit | None) -> RequestBody:
        return RequestBody(self.environ["wsgi.input"], content_length, limit)


class RequestBody:
    """The client's body read from ``wsgi.input`` once, in blocks; records whether reading began (after which
    the request cannot be re-sent elsewhere) and whether the client left."""

    __slots__ = ("gone", "length", "limit", "started", "stream_in")

    def __init__(self, stream_in: Any, length: int | None, limit: BodyLimit | None = None) -> None:
        self.stream_in = stream_in
        self.length = length
        self.limit = limit
        self.started = self.gone = False

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
                    self.gone = True
                    raise ClientGone("client closed the connection before sending the whole body")
                remaining -= len(chunk)
                yield chunk
        except OSError as exc:  # the server's input stream fails when the client disconnects mid-upload
            self.gone = True
            raise ClientGone(str(exc)) from exc
