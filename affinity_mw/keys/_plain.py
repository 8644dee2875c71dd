"""Plain sources: request fields a client sends as it likes (header, cookie, query, path, address, region)."""

from __future__ import annotations

import functools
import ipaddress
import re

from ..request import RequestView
from ._base import Extractor, _cookie_name, _Extractor, _header_name, _nonempty_str

_REGION_RE = re.compile(r"[a-z0-9._-]{1,64}")
_XFF = b"x-forwarded-for"
# The longest textual IP address ipaddress accepts is an IPv6 address with an embedded IPv4 tail and a scope
# id; anything far longer is not an address and is refused before parsing.
_MAX_IP_TEXT = 100


class _Header(_Extractor):
    __slots__ = ("_wanted",)

    def __init__(self, name: str) -> None:
        self._wanted = _header_name(name, "header name")
        self._desc = f"header({name!r})"

    def __call__(self, req: RequestView) -> str | None:
        value = req.first(self._wanted)
        return None if value is None else value.decode("latin-1").strip() or None


def plain_header_name(extractor: object) -> bytes | None:
    """The header a plain :func:`header` extractor reads (lower-case bytes), else ``None``.

    Adapters scan every request's headers anyway (for the hop marker and spoofed internal headers); with a plain
    header key they pick the key up in that same pass instead of building a request view to search again.
    """
    return extractor._wanted if type(extractor) is _Header else None


def header(name: str) -> Extractor:
    """The first value of the request header *name*, stripped of surrounding whitespace.

    Only the first occurrence counts: an intermediary that appends a second copy cannot override the value the
    client (or the proxy in front) sent first. The client controls this value; see the module's trust model.

    :param name: the header name, any case (``"X-Tenant"``).
    """
    return _Header(name)


class _Cookie(_Extractor):
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = _cookie_name(name)
        self._desc = f"cookie({name!r})"

    def __call__(self, req: RequestView) -> str | None:
        value = req.cookies.get(self._name)
        if value is None:
            return None
        return value.strip() or None


def cookie(name: str) -> Extractor:
    """The value of the cookie *name* (the first one sent, if the client repeats it).

    The value is used as sent, unsigned: a client can set any value. For a cookie the application signs, such
    as a Flask session, use :func:`signed_cookie` instead.
    """
    return _Cookie(name)


class _Query(_Extractor):
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = _nonempty_str(name, "query parameter name", "tenant")
        self._desc = f"query({name!r})"

    def __call__(self, req: RequestView) -> str | None:
        values = req.query.get(self._name)
        if not values:
            return None
        return values[0].strip() or None


def query(name: str) -> Extractor:
    """The first value of the query-string parameter *name*, percent-decoded and stripped.

    Undecodable bytes are replaced (U+FFFD) rather than rejected, so the same bytes always give the same key.
    """
    return _Query(name)


class _Path(_Extractor):
    __slots__ = ("_regex",)

    def __init__(self, pattern: str) -> None:
        pattern = _nonempty_str(pattern, "path pattern", "/tenants/{key}/")
        if pattern.startswith("re:"):
            source = pattern[3:]
            try:
                regex = re.compile(source)
            except re.error as exc:
                raise ValueError(f"The path regex {source!r} does not compile: {exc}.") from exc
            if "key" not in regex.groupindex:
                raise ValueError(
                    f"The path regex {source!r} has no named group 'key'; write the part that is the "
                    "affinity key as (?P<key>...), for example 're:^/t/(?P<key>[^/]+)'."
                )
        else:
            regex = compile_template(pattern)
        self._regex = regex
        self._desc = f"path({pattern!r})"

    def __call__(self, req: RequestView) -> str | None:
        match = self._regex.search(req.path)
        if match is None:
            return None
        return match.group("key") or None


def compile_template(template: str) -> re.Pattern[str]:
    if not template.startswith("/"):
        raise ValueError(f"The path template {template!r} must start with '/', like '/tenants/{{key}}/'.")
    if template.count("{key}") != 1 or "{" in template.replace("{key}", "") or "}" in template.replace("{key}", ""):
        raise ValueError(
            f"The path template {template!r} must contain the placeholder {{key}} exactly once and no other "
            "braces, like '/tenants/{key}/'; for anything more complex use 're:' and a regular expression."
        )
    before, after = template.split("{key}")
    trailing_slash = after.endswith("/")
    if trailing_slash:
        after = after[:-1]
    source = "^" + re.escape(before) + "(?P<key>[^/]+)" + re.escape(after) + ("(?:/|$)" if trailing_slash else "")
    return re.compile(source)


def path(pattern: str) -> Extractor:
    """A segment of the URL path.

    Two forms:

    *   A template, ``"/tenants/{key}/"``: matched against the start of the path, ``{key}`` standing for one
        non-empty segment (no ``/``). Text after the template is ignored, so ``/tenants/acme/orders/7`` gives
        ``acme``. A trailing ``/`` in the template also matches the end of the path, so ``/tenants/acme`` is
        the same tenant as ``/tenants/acme/``.
    *   A regular expression, ``"re:^/t/(?P<key>[0-9]+)"``: searched in the path (anchor it with ``^``
        yourself) and the named group ``key`` is the key. Write patterns that cannot backtrack
        catastrophically: they run on every request against client-chosen text.

    The path is matched as the server decoded it (percent-escapes already resolved).
    """
    return _Path(pattern)


# ------------------------------------------------------------------------------------------------------------
# Client address and region
# ------------------------------------------------------------------------------------------------------------


def _normalize_ip(text: str) -> str | None:
    text = text.strip()
    if not text or len(text) > _MAX_IP_TEXT:
        return None
    return _parse_ip(text)


# Parsing with ipaddress costs microseconds; the same few addresses (clients, proxies) recur, so a bounded
# cache makes the common case nearly free, and distinct junk values only cost what an uncached parse would.
@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d; it is the same client as a.b.c.d and
        # must get the same key whichever way it arrived.
        return str(address.ipv4_mapped)
    return str(address)


class _ClientIP(_Extractor):
    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: int) -> None:
        if isinstance(trusted_proxies, bool) or not isinstance(trusted_proxies, int):
            raise TypeError(
                f"trusted_proxies must be an integer count of proxies, not {type(trusted_proxies).__name__}."
            )
        if trusted_proxies < 0:
            raise ValueError(f"trusted_proxies must be 0 or more, not {trusted_proxies}.")
        self._trusted = trusted_proxies
        self._desc = f"client_ip(trusted_proxies={trusted_proxies})"

    def __call__(self, req: RequestView) -> str | None:
        trusted = self._trusted
        if trusted:
            values: list[str] = []
            for key, value in req.headers:
                if key == _XFF:
                    values.extend(value.decode("latin-1").split(","))
            if len(values) >= trusted:
                address = _normalize_ip(values[-trusted])
                if address is not None:
                    return address
        peer = req.client
        if not peer:
            return None
        peer = peer.strip()
        return _normalize_ip(peer) or peer or None


def client_ip(trusted_proxies: int = 0) -> Extractor:
    """The client's IP address, normalized (``2001:db8::1``, and ``::ffff:10.0.0.1`` becomes ``10.0.0.1``).

    By default this is the socket peer as the server saw it, and ``X-Forwarded-For`` is ignored: any client
    can send that header, so trusting it by default would let every client pick its own key.

    Behind proxies, set *trusted_proxies* to the number of proxies in front of this application that each
    append to ``X-Forwarded-For`` (a load balancer alone: ``1``; a CDN then a load balancer: ``2``). The key
    is then the *trusted_proxies*-th value from the right of all ``X-Forwarded-For`` headers joined in order,
    the address the outermost trusted proxy saw. Values further left were written by the client and are never
    used. This is the rule of Werkzeug's ``ProxyFix(x_for=N)`` and Envoy's ``xff_num_trusted_hops``.

    If the header holds fewer values than *trusted_proxies*, the request did not come through the full chain
    (or the count is wrong), and if the chosen value is not an IP address, the header is ignored; in both
    cases the socket peer is used. Setting the count higher than the real number of proxies hands the choice
    back to the client; setting it lower routes by a proxy's address.

    A socket peer that is not an IP address (a Unix socket path, a test client's name) is returned unchanged:
    it comes from the server, not the client, and stays stable.

    :param trusted_proxies: how many proxies in front of the application are trusted, ``0`` (the default) for
        none.
    """
    return _ClientIP(trusted_proxies)


class _Region(_Extractor):
    __slots__ = ("_wanted",)

    def __init__(self, header_name: str) -> None:
        self._wanted = _header_name(header_name, "region header name")
        self._desc = f"region({header_name!r})"

    def __call__(self, req: RequestView) -> str | None:
        value = req.first(self._wanted)
        if value is None or len(value) > 256:
            return None
        text = value.decode("latin-1").strip().lower()
        return text if _REGION_RE.fullmatch(text) else None


def region(header_name: str = "X-Region") -> Extractor:
    """A region or zone name from a header, lower-cased, such as ``eu-west-1``.

    Values are normalized (stripped, lower-cased) so ``EU-West-1`` and ``eu-west-1`` route alike, and anything
    that is not 1 to 64 characters of ``[a-z0-9._-]`` gives no key, so an arbitrary header value can never
    turn into a stream of distinct keys. As with :func:`header`, the first occurrence wins and the client
    controls the value unless a trusted proxy in front sets (and overwrites) it.
    """
    return _Region(header_name)
