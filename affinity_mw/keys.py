"""Extractors: how a request yields its affinity key.

An *extractor* is any callable that takes a :class:`~affinity_mw.request.RequestView` and returns the
request's affinity key as a string, or ``None`` when the request carries none. A plain function is an
extractor::

    def tenant_key(req: RequestView) -> str | None:
        return req.header("x-tenant")

The factories in this module build the common ones. They share three rules:

*   **Request data never raises.** A malformed header, a forged token or a non-UTF-8 byte yields ``None`` (and
    the middleware's documented no-key policy applies: serve locally, or reject with 400/401). An exception
    here would turn a hostile request into a 500 on every node it reaches.
*   **Construction arguments are checked once, up front**, with a full-sentence :class:`ValueError` (or
    :class:`TypeError` for a wrong type), so a bad setting stops the process at start-up instead of silently
    routing nothing. Patterns are compiled and keys are parsed at that point, never per request.
*   **An empty value is no key.** ``""`` and whitespace-only values become ``None``, so an empty header cannot
    send every keyless client to the same node.

Trust model. A key chooses which node serves a request, so a client that can choose its key can choose its
node. That is harmless for load (the ring spreads keys) but it matters when the key also stands for an
identity: routing on a ``X-Tenant`` header lets any client land on any tenant's node. Where that matters, use
a key the client cannot forge: :func:`jwt_claim` (verified tokens only, never unverified claims),
:func:`signed_cookie` (itsdangerous signatures), or :func:`client_ip` (the socket peer, with an explicit count
of trusted proxies). Affinity is about *locality*, not security: the node that serves a request must still
authenticate and authorize it as usual.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

from itsdangerous import URLSafeTimedSerializer

from .request import RequestView

if TYPE_CHECKING:
    from jwt import PyJWKClient
    from jwt.types import Options as _JwtOptions

__all__ = [
    "Extractor",
    "KeyOptions",
    "client_ip",
    "cookie",
    "first_of",
    "from_spec",
    "header",
    "jwt_claim",
    "path",
    "query",
    "region",
    "signed_cookie",
]

Extractor: TypeAlias = Callable[[RequestView], str | None]
"""A callable that maps a request to its affinity key, or ``None`` when the request has none."""

_log = logging.getLogger("affinity_mw.keys")

# RFC 9110 section 5.6.2: a header name is a "token".
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REGION_RE = re.compile(r"[a-z0-9._-]{1,64}")
_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_JWKS_TIMEOUT = 5.0
_JWKS_LIFESPAN = 300.0
_XFF = b"x-forwarded-for"
# The longest textual IP address ipaddress accepts is an IPv6 address with an embedded IPv4 tail and a scope
# id; anything far longer is not an address and is refused before parsing.
_MAX_IP_TEXT = 100


class _Extractor:
    """Shared base of the built-in extractors: a callable object with a readable ``repr``.

    Objects with ``__slots__`` and ``__call__`` cost no more per call than a closure, and unlike a closure
    they can say what they are when configuration docs, logs or the introspection endpoint print them.
    """

    __slots__ = ("_desc",)

    _desc: str

    def __call__(self, req: RequestView) -> str | None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __repr__(self) -> str:
        return self._desc


# ------------------------------------------------------------------------------------------------------------
# Validation helpers
# ------------------------------------------------------------------------------------------------------------


def _header_name(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"The {what} must be a string such as 'X-Tenant', not {type(value).__name__}.")
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(
            f"The {what} {value!r} is not a valid HTTP header name: use letters, digits and !#$%&'*+-.^_`|~ "
            "only, with no spaces or colons."
        )
    return value.lower().encode("ascii")


def _cookie_name(value: object, what: str = "cookie name") -> str:
    if not isinstance(value, str):
        raise TypeError(f"The {what} must be a string such as 'sid', not {type(value).__name__}.")
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(
            f"The {what} {value!r} is not a valid cookie name: it must be non-empty and may not contain "
            "spaces, '=', ';', ',' or quotes."
        )
    return value


def _nonempty_str(value: object, what: str, example: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"The {what} must be a string such as {example!r}, not {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"The {what} must not be empty; give one such as {example!r}.")
    return value


def _scalar_key(value: object) -> str | None:
    """A claim or session field becomes a key only when it is a string or an integer.

    ``bool`` is excluded although it is an ``int``: ``True`` as a tenant id is a bug upstream, and routing
    every such request to the owner of ``"True"`` would hide it. Lists, objects and floats have no single
    canonical text form, so they give no key rather than one that differs between producers.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    return None


# ------------------------------------------------------------------------------------------------------------
# Plain request fields
# ------------------------------------------------------------------------------------------------------------


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
            regex = _compile_template(pattern)
        self._regex = regex
        self._desc = f"path({pattern!r})"

    def __call__(self, req: RequestView) -> str | None:
        match = self._regex.search(req.path)
        if match is None:
            return None
        return match.group("key") or None


def _compile_template(template: str) -> re.Pattern[str]:
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


# ------------------------------------------------------------------------------------------------------------
# Verified sources: JWT claims and signed cookies
# ------------------------------------------------------------------------------------------------------------


def _import_jwt() -> Any:
    try:
        import jwt
        import jwt.algorithms
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "jwt_claim() and the 'jwt:' key source need PyJWT with cryptography; install them with "
            "`pip install 'affinity-mw[jwt]'`."
        ) from exc
    return jwt


def _check_algorithms(algorithms: object, jwt: Any) -> tuple[str, ...]:
    if isinstance(algorithms, (str, bytes)) or not isinstance(algorithms, Iterable):
        raise TypeError(
            "algorithms must be a list of algorithm names such as ['RS256'], not a single string or "
            f"{type(algorithms).__name__}: a string would be matched by substring."
        )
    names: list[str] = []
    for name in algorithms:
        if not isinstance(name, str):
            raise TypeError(f"Each algorithm must be a string such as 'RS256', not {type(name).__name__}.")
        name = name.strip()
        if name.lower() == "none":
            raise ValueError(
                "The 'none' algorithm is refused: an unsigned token can carry any claim, so routing on it "
                "would let every client choose its own key."
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(
            "algorithms must list at least one algorithm, such as ['RS256'] or ['HS256']: the accepted "
            "algorithms are a security decision and are never guessed from the token."
        )
    supported = jwt.algorithms.get_default_algorithms()
    for name in names:
        if name not in supported:
            if name in jwt.algorithms.requires_cryptography:
                raise ImportError(
                    f"The algorithm {name!r} needs the cryptography package; install it with "
                    "`pip install 'affinity-mw[jwt]'`."
                )
            known = ", ".join(sorted(n for n in supported if n != "none"))
            raise ValueError(f"The algorithm {name!r} is not supported; choose from {known}.")
    hmac_names = [n for n in names if n in _HMAC_ALGORITHMS]
    if hmac_names and len(hmac_names) != len(names):
        raise ValueError(
            f"The algorithms {names!r} mix HMAC (HS*) with public-key algorithms; that is the "
            "algorithm-confusion attack (a token signed with the public key as an HMAC secret would verify). "
            "Use one family."
        )
    return tuple(names)


def _parse_token_source(source: object) -> tuple[str, bytes, str]:
    """Split ``header:NAME`` / ``cookie:NAME`` into a reader kind, a header name (bytes) and a cookie name."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a string such as 'header:Authorization', not {type(source).__name__}.")
    kind, sep, name = source.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if sep and kind == "header" and name:
        wanted = _header_name(name, "token header name")
        return ("bearer" if wanted == b"authorization" else "header"), wanted, ""
    if sep and kind == "cookie" and name:
        return "cookie", b"", _cookie_name(name, "token cookie name")
    raise ValueError(
        f"The token source {source!r} is not valid; use 'header:Authorization' (a Bearer token), "
        "'header:NAME' (a raw or Bearer token in another header) or 'cookie:NAME'."
    )


def _strip_bearer(value: str) -> str | None:
    scheme, sep, token = value.strip().partition(" ")
    if not sep or scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _public_url(url: str) -> str:
    """The URL without credentials or query string, fit for a ``repr`` that ends up in logs."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"The JWKS URL {url!r} has an invalid port.") from exc
    if not parts.hostname:
        raise ValueError(f"The JWKS URL {url!r} has no host name.")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


class _JwtClaim(_Extractor):
    __slots__ = (
        "_algorithms",
        "_audience",
        "_claim",
        "_decode",
        "_issuer",
        "_jwks",
        "_key",
        "_leeway",
        "_options",
        "_source_cookie",
        "_source_header",
        "_source_kind",
        "_unverified_header",
    )

    _key: Any
    _jwks: PyJWKClient | None
    _options: _JwtOptions

    def __init__(
        self,
        claim: str,
        key: str | bytes,
        algorithms: Sequence[str],
        audience: str | None,
        issuer: str | None,
        source: str,
        leeway: float,
    ) -> None:
        jwt = _import_jwt()
        self._claim = _nonempty_str(claim, "JWT claim name", "tenant")
        self._algorithms = _check_algorithms(algorithms, jwt)
        if audience is not None:
            audience = _nonempty_str(audience, "JWT audience", "https://api.example.com")
        if issuer is not None:
            issuer = _nonempty_str(issuer, "JWT issuer", "https://issuer.example.com/")
        self._audience = audience
        self._issuer = issuer
        if isinstance(leeway, bool) or not isinstance(leeway, (int, float)):
            raise TypeError(f"leeway must be a number of seconds, not {type(leeway).__name__}.")
        if not math.isfinite(leeway) or leeway < 0:
            raise ValueError(f"leeway must be a finite number of seconds, 0 or more, not {leeway!r}.")
        self._leeway = float(leeway)
        self._source_kind, self._source_header, self._source_cookie = _parse_token_source(source)
        self._decode = jwt.decode
        self._unverified_header = jwt.get_unverified_header
        self._options = {"require": ["exp"], "verify_signature": True, "verify_exp": True}
        self._jwks = None
        key_desc = self._load_key(key, jwt)
        extras = "".join(
            f", {name}={value!r}" for name, value in (("audience", audience), ("issuer", issuer)) if value is not None
        )
        if self._leeway:
            extras += f", leeway={self._leeway!r}"
        self._desc = f"jwt_claim({claim!r}, key={key_desc}, algorithms={self._algorithms!r}{extras}, source={source!r})"

    def _load_key(self, key: object, jwt: Any) -> str:
        if isinstance(key, bytes):
            text = key.decode("latin-1")
        elif isinstance(key, str):
            text = key
        else:
            raise TypeError(
                f"key must be a string: an HMAC secret, a PEM public key or a JWKS URL, not {type(key).__name__}."
            )
        if not text.strip():
            raise ValueError("The JWT key is empty; give an HMAC secret, a PEM public key or a JWKS URL.")
        hmac = self._algorithms[0] in _HMAC_ALGORITHMS
        if text.strip().lower().startswith(("https://", "http://")):
            if hmac:
                raise ValueError(
                    "A JWKS URL publishes public keys, so it cannot be used with HMAC (HS*) algorithms; "
                    "configure RS*, PS*, ES* or EdDSA, or give the HMAC secret itself."
                )
            desc = f"<JWKS {_public_url(text.strip())}>"
            try:
                self._jwks = jwt.PyJWKClient(
                    text.strip(), cache_jwk_set=True, lifespan=_JWKS_LIFESPAN, timeout=_JWKS_TIMEOUT
                )
            except jwt.PyJWKClientError as exc:
                raise ValueError(f"The JWKS URL {text!r} is not usable: {exc}.") from exc
            return desc
        if "PRIVATE KEY" in text:
            raise ValueError(
                "The JWT key is a private key; give the public key (or a JWKS URL). Verifying needs only the "
                "public half, and the private key must not be copied to every node."
            )
        prepared: Any = None
        available = jwt.algorithms.get_default_algorithms()
        for name in self._algorithms:
            algorithm = available[name]
            try:
                prepared = algorithm.prepare_key(key if prepared is None or hmac else prepared)
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
                if hmac:
                    raise ValueError(
                        "The HMAC secret looks like a PEM or SSH public key; a public key used as an HMAC "
                        "secret is the algorithm-confusion attack. Configure the matching public-key "
                        "algorithm instead."
                    ) from exc
                raise ValueError(
                    f"The JWT key is not a PEM public key usable with {name}: {exc}. Give the issuer's "
                    "public key in PEM form ('-----BEGIN PUBLIC KEY-----') or a JWKS URL."
                ) from exc
            weakness = algorithm.check_key_length(prepared)
            if weakness:
                warnings.warn(
                    f"{weakness} Tokens signed with a weak key can be forged, and a forged token picks its "
                    "own affinity key.",
                    jwt.InsecureKeyLengthWarning,
                    stacklevel=4,
                )
        self._key = prepared
        return "<HMAC secret>" if hmac else "<PEM public key>"

    def _token(self, req: RequestView) -> str | None:
        kind = self._source_kind
        if kind == "cookie":
            raw = req.cookies.get(self._source_cookie)
            if raw is None:
                return None
            return raw.strip() or None
        value = req.first(self._source_header)
        if value is None:
            return None
        text = value.decode("latin-1")
        if kind == "bearer":
            return _strip_bearer(text)
        text = text.strip()
        return _strip_bearer(text) if text[:7].lower() == "bearer " else text or None

    def __call__(self, req: RequestView) -> str | None:
        token = self._token(req)
        if token is None:
            return None
        try:
            jwks = self._jwks
            key = self._key if jwks is None else self._jwks_key(jwks, token)
            if key is None:
                return None
            payload = self._decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except Exception as exc:
            # Verification libraries raise outside their documented trees on hostile input (cryptography's
            # ValueError, urllib's OSError from a JWKS fetch); every failure means "no verified key", never a
            # 500.
            _log.debug("JWT rejected for affinity key: %s", type(exc).__name__)
            return None
        if not isinstance(payload, dict):
            return None
        return _scalar_key(payload.get(self._claim))

    def _jwks_key(self, jwks: PyJWKClient, token: str) -> Any:
        # Refuse a token whose algorithm is not configured before any network I/O, so garbage cannot make this
        # node fetch the key set.
        if self._unverified_header(token).get("alg") not in self._algorithms:
            return None
        signing_key = jwks.get_signing_key_from_jwt(token)
        if signing_key.algorithm_name not in self._algorithms:
            return None
        return signing_key


def jwt_claim(
    claim: str,
    *,
    key: str | bytes,
    algorithms: Sequence[str],
    audience: str | None = None,
    issuer: str | None = None,
    source: str = "header:Authorization",
    leeway: float = 0.0,
) -> Extractor:
    """A claim of a verified JSON Web Token (PyJWT), such as the ``tenant`` of a bearer token.

    Only a token that passes every check yields a key; anything else (malformed, expired, bad signature, wrong
    audience or issuer, unknown ``crit`` extension, a failed key-set fetch, a missing claim) yields ``None``.
    Unverified claims are never used: a client could then mint a token that names any tenant and choose its
    node.

    Checks: the signature, with an algorithm from *algorithms* only; ``exp`` is required and must be in the
    future (within *leeway* seconds); ``aud`` and ``iss`` must equal *audience* and *issuer* exactly when they
    are configured. Following PyJWT, a token that carries an ``aud`` claim is refused when no *audience* is
    configured, so tokens minted for another service do not route here; set *audience* if your tokens have
    one.

    :param claim: the top-level claim whose value is the key. A string or an integer (not a boolean) becomes
        the key; any other value gives none.
    :param key: how signatures are checked, one of

        *   an HMAC secret (with ``HS256``/``HS384``/``HS512``);
        *   a PEM public key (``-----BEGIN PUBLIC KEY-----``) for RS*, PS*, ES* or EdDSA. Private keys are
            refused: verifying needs only the public half;
        *   a JWKS URL (``https://issuer.example.com/.well-known/jwks.json``). The signing key is chosen by
            the token's ``kid``. The key set is fetched on first use, **which blocks the calling thread** (up
            to 5 seconds, also inside an event loop), then cached for 5 minutes; an unknown ``kid`` triggers
            at most one refresh per 30 seconds, so made-up ``kid`` values cannot flood the issuer. Use
            ``https`` outside tests.

    :param algorithms: the accepted algorithms, required and never guessed from the token (``alg`` is chosen
        by whoever made the token). ``none`` is refused, and HMAC may not be mixed with public-key algorithms:
        with both allowed, a token HMAC-signed with the (public) key would verify.
    :param audience: the exact ``aud`` this service accepts.
    :param issuer: the exact ``iss`` this service accepts (no prefix matching).
    :param source: where the token is read: ``"header:Authorization"`` (``Bearer <token>``, scheme in any
        case), ``"header:NAME"`` (a raw token, or ``Bearer <token>``) or ``"cookie:NAME"``.
    :param leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    :raises ImportError: when PyJWT (``pip install 'affinity-mw[jwt]'``) is not installed.
    """
    return _JwtClaim(claim, key, algorithms, audience, issuer, source, leeway)


class _SignedCookie(_Extractor):
    __slots__ = ("_cookie", "_field", "_max_age", "_serializer")

    def __init__(
        self,
        cookie_name: str,
        field: str,
        secret_keys: str | bytes | Sequence[str | bytes],
        salt: str,
        max_age: int,
        flask_format: bool,
    ) -> None:
        self._cookie = _cookie_name(cookie_name)
        self._field = _nonempty_str(field, "signed cookie field", "user_id")
        keys: list[str | bytes]
        if isinstance(secret_keys, (str, bytes)):
            keys = [secret_keys]
        elif isinstance(secret_keys, Iterable):
            keys = list(secret_keys)
        else:
            raise TypeError(f"secret_keys must be a string or a list of strings, not {type(secret_keys).__name__}.")
        for secret in keys:
            if not isinstance(secret, (str, bytes)):
                raise TypeError(f"Each secret key must be a string, not {type(secret).__name__}.")
            if not secret:
                raise ValueError("A secret key is empty; an empty key signs nothing that a client cannot forge.")
        if not keys:
            raise ValueError("secret_keys must hold at least one key (oldest to newest; the newest signs).")
        if not isinstance(salt, (str, bytes)) or not salt:
            raise ValueError(
                "salt must be a non-empty string: a salt per purpose keeps a value signed for one use from "
                "being accepted as another."
            )
        if isinstance(max_age, bool) or not isinstance(max_age, int):
            raise TypeError(f"max_age must be a whole number of seconds, not {type(max_age).__name__}.")
        if max_age <= 0:
            raise ValueError(
                f"max_age must be a positive number of seconds, not {max_age}: a signed cookie must expire, "
                "or a leaked one is valid forever."
            )
        self._max_age = max_age
        signer_kwargs: dict[str, Any] | None = None
        if flask_format:
            # Flask's SecureCookieSessionInterface: HMAC key derivation and SHA-1 (its signing digest, not a
            # password hash). Flask's TaggedJSONSerializer writes plain JSON for strings and integers.
            signer_kwargs = {"key_derivation": "hmac", "digest_method": hashlib.sha1}
        self._serializer = URLSafeTimedSerializer(keys, salt=salt, signer_kwargs=signer_kwargs)  # type: ignore[arg-type]
        self._desc = (
            f"signed_cookie({cookie_name!r}, {field!r}, salt={salt!r}, max_age={max_age}, "
            f"flask_format={bool(flask_format)})"
        )

    def __call__(self, req: RequestView) -> str | None:
        value = req.cookies.get(self._cookie)
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=self._max_age)
        except Exception as exc:
            # BadSignature, SignatureExpired and BadPayload are the expected failures; anything else on
            # attacker input still means "no verified key".
            _log.debug("Signed cookie rejected for affinity key: %s", type(exc).__name__)
            return None
        if not isinstance(data, dict):
            return None
        return _scalar_key(data.get(self._field))


def signed_cookie(
    cookie_name: str,
    field: str,
    *,
    secret_keys: str | bytes | Sequence[str | bytes],
    salt: str = "cookie-session",
    max_age: int = 31 * 24 * 3600,
    flask_format: bool = True,
) -> Extractor:
    """A field of a cookie signed with itsdangerous, such as ``user_id`` in a Flask session.

    The signature and its timestamp are checked before the payload is read, so the key is a value the
    application itself wrote. A tampered, expired or foreign cookie, a payload that is not an object, or a
    missing field gives no key. The field's value must be a string or an integer (not a boolean).

    :param cookie_name: the cookie, ``"session"`` for Flask.
    :param field: the key inside the signed object.
    :param secret_keys: one secret, or a list for rotation ordered oldest to newest: every key verifies, the
        newest is the one the application signs with. For Flask that is ``[*SECRET_KEY_FALLBACKS,
        SECRET_KEY]``. Drop an old key from the list once cookies signed with it have expired.
    :param salt: the itsdangerous salt: Flask's ``"cookie-session"`` by default. A distinct salt per purpose
        keeps a value signed for one use from being replayed as another.
    :param max_age: seconds a cookie stays valid after signing; always finite, 31 days by default (Flask's
        ``PERMANENT_SESSION_LIFETIME``). Lower it to match the application's own lifetime.
    :param flask_format: ``True`` reads exactly Flask's default session cookie (``URLSafeTimedSerializer``
        with HMAC key derivation and SHA-1, JSON payload, compressed payloads included). ``False`` uses
        itsdangerous's defaults (``URLSafeTimedSerializer(secret_keys, salt=salt)``), for cookies an
        application signs itself.
    """
    return _SignedCookie(cookie_name, field, secret_keys, salt, max_age, flask_format)


# ------------------------------------------------------------------------------------------------------------
# Composition and configuration
# ------------------------------------------------------------------------------------------------------------


class _FirstOf(_Extractor):
    __slots__ = ("_extractors",)

    _extractors: tuple[Extractor, ...]

    def __init__(self, extractors: tuple[Extractor, ...]) -> None:
        if not extractors:
            raise ValueError("first_of() needs at least one extractor.")
        flat: list[Extractor] = []
        for extractor in extractors:
            if not callable(extractor):
                raise TypeError(
                    f"first_of() takes extractors (callables taking a RequestView), not {type(extractor).__name__}."
                )
            if isinstance(extractor, _FirstOf):
                flat.extend(extractor._extractors)
            else:
                flat.append(extractor)
        self._extractors = tuple(flat)
        self._desc = "first_of(" + ", ".join(_describe(e) for e in flat) + ")"

    def __call__(self, req: RequestView) -> str | None:
        for extractor in self._extractors:
            key = extractor(req)
            if key:
                return key
        return None


def _describe(extractor: Extractor) -> str:
    if isinstance(extractor, _Extractor):
        return repr(extractor)
    return getattr(extractor, "__qualname__", None) or repr(extractor)


def first_of(*extractors: Extractor) -> Extractor:
    """The first key any of *extractors* finds, tried in order.

    Typical use is a verified key with a fallback, ``first_of(jwt_claim("tenant", ...), client_ip())``:
    requests with a valid token follow the tenant, the rest still spread by address. An empty string from a
    user function counts as no key, like ``None``. Exceptions from user functions propagate; built-in
    extractors raise none.
    """
    return _FirstOf(extractors)


@dataclass(frozen=True)
class KeyOptions:
    """Settings for the key sources of :func:`from_spec` that need more than a name.

    Each field mirrors an environment variable (``jwt_key`` is ``AFFINITY_JWT_KEY``, ``cookie_secret`` is
    ``AFFINITY_COOKIE_SECRET`` split on commas, ...); the configuration module fills it in.
    """

    jwt_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_from: str = "header:Authorization"
    jwt_leeway: float = 0.0
    cookie_secret: tuple[str, ...] = ()
    cookie_salt: str = "cookie-session"
    cookie_max_age: int = 31 * 24 * 3600
    trusted_proxies: int = 0


_DEFAULT_OPTIONS = KeyOptions()

_VALID_FORMS = (
    "header:NAME, cookie:NAME, query:NAME, path:/prefix/{key}/, path:re:REGEX, ip, region, region:NAME, "
    "jwt:CLAIM, signed-cookie:COOKIE:FIELD"
)
_KINDS = ("header", "cookie", "query", "path", "ip", "region", "jwt", "signed-cookie")


def _starts_source(text: str) -> bool:
    text = text.strip().lower()
    return text in ("ip", "region") or any(text.startswith(kind + ":") for kind in _KINDS)


def _split_spec(spec: str) -> list[str]:
    """Split on commas, except commas inside a ``path:re:`` regex (``{1,5}`` is common there).

    A piece after a ``path:re:`` source that does not start a known source is part of the regex.
    """
    parts: list[str] = []
    for piece in spec.split(","):
        if parts and parts[-1].strip().lower().startswith("path:re:") and not _starts_source(piece):
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    return [part.strip() for part in parts]


def _bad_source(part: str, why: str) -> ValueError:
    return ValueError(f"AFFINITY_KEY source {part!r} is not valid: {why}. Valid forms: {_VALID_FORMS}.")


def _from_source(part: str, options: KeyOptions) -> Extractor:
    kind, sep, rest = part.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if kind == "ip":
        if sep:
            raise _bad_source(part, "'ip' takes no argument (the trusted proxy count is a separate setting)")
        return client_ip(options.trusted_proxies)
    if kind == "region" and not sep:
        return region()
    if kind not in _KINDS:
        raise _bad_source(part, f"unknown source kind {kind!r}")
    if not rest:
        raise _bad_source(part, f"'{kind}' needs a name after the colon")
    if kind == "header":
        return header(rest)
    if kind == "cookie":
        return cookie(rest)
    if kind == "query":
        return query(rest)
    if kind == "path":
        return path(rest)
    if kind == "region":
        return region(rest)
    if kind == "jwt":
        if not options.jwt_key:
            raise ValueError(
                f"AFFINITY_KEY source {part!r} needs a verification key: set AFFINITY_JWT_KEY to an HMAC "
                "secret, a PEM public key or a JWKS URL."
            )
        if not options.jwt_algorithms:
            raise ValueError(
                f"AFFINITY_KEY source {part!r} needs AFFINITY_JWT_ALGORITHMS, the accepted algorithms "
                "(for example 'RS256'); they are never guessed from the token."
            )
        return jwt_claim(
            rest,
            key=options.jwt_key,
            algorithms=tuple(options.jwt_algorithms),
            audience=options.jwt_audience,
            issuer=options.jwt_issuer,
            source=options.jwt_from,
            leeway=options.jwt_leeway,
        )
    # signed-cookie:COOKIE:FIELD
    cookie_name, sep, field = rest.partition(":")
    if not sep or not cookie_name.strip() or not field.strip():
        raise _bad_source(part, "'signed-cookie' needs a cookie name and a field, like signed-cookie:session:user_id")
    if not options.cookie_secret:
        raise ValueError(
            f"AFFINITY_KEY source {part!r} needs AFFINITY_COOKIE_SECRET, the key(s) the cookie is signed "
            "with (comma-separated, oldest to newest)."
        )
    return signed_cookie(
        cookie_name.strip(),
        field.strip(),
        secret_keys=tuple(options.cookie_secret),
        salt=options.cookie_salt,
        max_age=options.cookie_max_age,
    )


def from_spec(spec: str, options: KeyOptions = _DEFAULT_OPTIONS) -> Extractor:
    """Build an extractor from the ``AFFINITY_KEY`` format: sources tried in order, comma-separated.

    ``header:X-Tenant,ip`` routes by the ``X-Tenant`` header and falls back to the client address. The
    sources:

    ``header:NAME``, ``cookie:NAME``, ``query:NAME``
        :func:`header`, :func:`cookie`, :func:`query`.
    ``path:/tenants/{key}/``, ``path:re:^/t/(?P<key>[^/]+)``
        :func:`path`. A comma inside a regex is kept when the text after it does not start another source.
    ``ip``
        :func:`client_ip` with ``options.trusted_proxies``.
    ``region``, ``region:NAME``
        :func:`region`, from ``X-Region`` or the named header.
    ``jwt:CLAIM``
        :func:`jwt_claim`, with ``AFFINITY_JWT_KEY``, ``AFFINITY_JWT_ALGORITHMS`` (both required),
        ``AFFINITY_JWT_AUDIENCE``, ``AFFINITY_JWT_ISSUER`` and ``AFFINITY_JWT_FROM`` from *options*.
    ``signed-cookie:COOKIE:FIELD``
        :func:`signed_cookie` in Flask's session format, with ``AFFINITY_COOKIE_SECRET`` (required) and
        ``AFFINITY_COOKIE_SALT`` from *options*.

    Source kinds are case-insensitive; names keep their case. Any error raises :class:`ValueError` naming the
    offending part, at start-up rather than on the first request.
    """
    if not isinstance(spec, str):
        raise TypeError(f"AFFINITY_KEY must be a string such as 'header:X-Tenant', not {type(spec).__name__}.")
    if not spec.strip():
        raise ValueError(
            f"AFFINITY_KEY is empty; give one or more comma-separated sources. Valid forms: {_VALID_FORMS}."
        )
    extractors: list[Extractor] = []
    for part in _split_spec(spec):
        if not part:
            raise ValueError(
                f"AFFINITY_KEY {spec!r} has an empty source (two commas in a row, or a comma at an end). "
                f"Valid forms: {_VALID_FORMS}."
            )
        try:
            extractors.append(_from_source(part, options))
        except (ValueError, TypeError) as exc:
            if str(exc).startswith("AFFINITY_KEY"):
                raise
            raise ValueError(f"AFFINITY_KEY source {part!r} is not valid: {exc}") from exc
    return extractors[0] if len(extractors) == 1 else first_of(*extractors)
