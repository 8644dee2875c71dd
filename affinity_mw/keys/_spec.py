"""The ``AFFINITY_KEY`` grammar: sources tried in order, their composition (:func:`first_of`) and options."""

from __future__ import annotations

from dataclasses import dataclass

from ..request import RequestView
from ._base import Extractor, _Extractor
from ._generated import DEFAULT_MAX_AGE, GeneratedCookie, generated_cookie
from ._plain import client_ip, cookie, header, path, query, region
from ._verified import jwt_claim, signed_cookie


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
    cookie_secret: tuple[str | bytes, ...] = ()
    cookie_salt: str = "cookie-session"
    cookie_max_age: int = 31 * 24 * 3600
    trusted_proxies: int = 0
    secret: tuple[str, ...] = ()
    generated_cookie_max_age: int = DEFAULT_MAX_AGE
    generated_cookie_secure: bool | None = None
    generated_cookie_http_only: bool = True
    generated_cookie_same_site: str = "Lax"
    generated_cookie_path: str = "/"
    generated_cookie_domain: str | None = None


_DEFAULT_OPTIONS = KeyOptions()

_VALID_FORMS = (
    "header:NAME, cookie:NAME, query:NAME, path:/prefix/{key}/, path:re:REGEX, ip, region, region:NAME, "
    "jwt:CLAIM, signed-cookie:COOKIE:FIELD, generated-cookie:NAME"
)
_KINDS = ("header", "cookie", "query", "path", "ip", "region", "jwt", "signed-cookie", "generated-cookie")


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
    if kind == "generated-cookie":
        if not options.secret:
            raise ValueError(
                f"AFFINITY_KEY source {part!r} signs its cookie with the cluster secret: set AFFINITY_SECRET."
            )
        return generated_cookie(
            rest,
            options.secret,
            max_age=options.generated_cookie_max_age,
            secure=options.generated_cookie_secure,
            http_only=options.generated_cookie_http_only,
            same_site=options.generated_cookie_same_site,
            path=options.generated_cookie_path,
            domain=options.generated_cookie_domain,
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
    ``generated-cookie:NAME``
        :func:`generated_cookie`, signed with the cluster secret (``AFFINITY_SECRET``, required); the
        middleware issues it to a request that carries no key. Its attributes come from the
        ``AFFINITY_GENERATED_COOKIE_*`` options.

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


def generating_cookie(extractor: Extractor) -> GeneratedCookie | None:
    """The :class:`GeneratedCookie` among an extractor's sources, if any: a request for which ``extractor``
    finds no key gets this cookie."""
    if isinstance(extractor, GeneratedCookie):
        return extractor
    if isinstance(extractor, _FirstOf):
        for source in extractor._extractors:
            if isinstance(source, GeneratedCookie):
                return source
    return None
