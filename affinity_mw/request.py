"""A small, framework-neutral view of an incoming request.

Extractors see only this view, so one extractor works unchanged behind the ASGI, WSGI, Flask and Django
adapters. It is built once per request from what the server already parsed; cookies and the query string are
parsed lazily, because most extractors never look at them and the local path must stay nearly free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

__all__ = ["RequestView"]


class RequestView:
    """What an extractor may read of a request: immutable by convention, cheap to build.

    ``headers`` uses the ASGI shape: a sequence of ``(name, value)`` byte pairs with lower-case names, in the
    order received, repeats kept. Adapters that start from another shape (a WSGI environ) convert once.
    ``client`` is the socket peer's address as the server saw it, never a header's claim.
    """

    __slots__ = ("_cookies", "_headers", "_query", "client", "method", "path", "raw_query", "scheme")

    method: str
    path: str
    raw_query: bytes
    client: str | None
    scheme: str

    def __init__(
        self,
        method: str,
        path: str,
        raw_query: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
        client: str | None = None,
        scheme: str = "http",
    ) -> None:
        self.method = method
        self.path = path
        self.raw_query = raw_query
        self._headers: Sequence[tuple[bytes, bytes]] | None = headers
        self.client = client
        self.scheme = scheme
        self._cookies: dict[str, str] | None = None
        self._query: dict[str, list[str]] | None = None

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._headers or ()

    def first(self, name: bytes) -> bytes | None:
        """First raw value of the header ``name`` (lower-case bytes): the hot-path lookup extractors use."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive name), or ``None``.

        Values are decoded as latin-1, as HTTP/1.1 defines; the first occurrence wins so that a value appended
        by an intermediary later in the list cannot override the original.
        """
        value = self.first(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def header_all(self, name: str) -> list[str]:
        """Every value of a header, in order received."""
        wanted = name.lower().encode("latin-1")
        return [value.decode("latin-1") for key, value in self.headers if key == wanted]

    @property
    def cookies(self) -> Mapping[str, str]:
        """Cookies from every ``Cookie`` header; the first occurrence of a name wins, malformed pairs are skipped."""
        if self._cookies is None:
            jar: dict[str, str] = {}
            for raw in self.header_all("cookie"):
                for name, value in _parse_cookie_header(raw):
                    jar.setdefault(name, value)
            self._cookies = jar
        return self._cookies

    @property
    def query(self) -> Mapping[str, list[str]]:
        """Query parameters (all values per name, blank values kept), decoded leniently as UTF-8."""
        if self._query is None:
            self._query = parse_qs(self.raw_query.decode("latin-1"), keep_blank_values=True, errors="replace")
        return self._query

    def __repr__(self) -> str:
        return f"RequestView({self.method} {self.path!r} client={self.client!r})"


def _parse_cookie_header(raw: str) -> list[tuple[str, str]]:
    """Split a Cookie header the way browsers send it (``a=1; b=2``).

    ``SimpleCookie`` rejects a whole header when one pair is malformed, which would let a client hide a cookie by
    adding garbage next to it; splitting by hand keeps every well-formed pair.
    """
    pairs: list[tuple[str, str]] = []
    for chunk in raw.split(";"):
        name, sep, value = chunk.strip().partition("=")
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            # Quoted values may contain octal escapes (RFC 2109 style) that SimpleCookie knows how to undo.
            parsed: SimpleCookie = SimpleCookie()
            try:
                parsed.load(f"{name}={value}")
                morsel = parsed.get(name)
                value = morsel.value if morsel is not None else value[1:-1]
            except Exception:
                value = value[1:-1]
        pairs.append((name, value))
    return pairs
