"""Verified sources: a claim of a verified JSON Web Token, a field of an itsdangerous-signed cookie.

Only a value that passed its signature check becomes a key; every failure on request data means no key.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from itsdangerous import URLSafeTimedSerializer

from ..request import RequestView
from ._base import Extractor, _cookie_name, _Extractor, _header_name, _log, _nonempty_str, _scalar_key

if TYPE_CHECKING:
    from jwt.types import Options as _JwtOptions

    from ._jwks import JwksKeys

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


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
    _jwks: JwksKeys | None
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
            from ._jwks import FETCH_TIMEOUT, JwksKeys

            url = _public_url(text.strip())
            try:
                client = jwt.PyJWKClient(text.strip(), cache_jwk_set=False, cache_keys=False, timeout=FETCH_TIMEOUT)
            except jwt.PyJWKClientError as exc:
                raise ValueError(f"The JWKS URL {text!r} is not usable: {exc}.") from exc
            self._jwks = JwksKeys(client, url)
            return f"<JWKS {url}>"
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

    def _jwks_key(self, jwks: JwksKeys, token: str) -> Any:
        # Refuse a token whose algorithm is not configured, or that names no key, before asking for keys, so
        # garbage cannot make this node refresh the key set.
        header = self._unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") not in self._algorithms or not isinstance(kid, str) or not kid:
            return None
        signing_key = jwks.get(kid)
        if signing_key is None or signing_key.algorithm_name not in self._algorithms:
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
            the token's ``kid``. The key set is fetched on a background thread, never on a request's path:
            first when this source is built, then every 5 minutes, and when a token names an unknown ``kid``
            (at most once per 30 seconds, and never two fetches at once, so made-up ``kid`` values cannot
            flood the issuer). Until the first fetch succeeds, and for a ``kid`` not yet fetched, a token
            gives no key; a failed fetch keeps the last good keys and is retried after 1 s, doubling up to
            30 s. A hung issuer therefore delays no request. Use ``https`` outside tests.

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


def _signing_setup(
    secret_keys: str | bytes | Sequence[str | bytes], salt: object, max_age: object
) -> list[str | bytes]:
    """The checks every itsdangerous-signed cookie's settings pass: keys for rotation (oldest to newest), a
    salt per purpose, a finite age. Returns the keys as a list."""
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
    return keys


def _signed_payload(req: RequestView, cookie: str, serializer: URLSafeTimedSerializer, max_age: int) -> object:
    """The payload of a signed cookie, or ``None`` when the cookie is missing, forged, expired or unreadable."""
    value = req.cookies.get(cookie)
    if not value:
        return None
    try:
        return serializer.loads(value, max_age=max_age)
    except Exception as exc:
        # BadSignature, SignatureExpired and BadPayload are the expected failures; anything else on attacker
        # input still means "no verified key".
        _log.debug("Signed cookie %r rejected for affinity key: %s", cookie, type(exc).__name__)
        return None


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
        keys = _signing_setup(secret_keys, salt, max_age)
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
        data = _signed_payload(req, self._cookie, self._serializer, self._max_age)
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
