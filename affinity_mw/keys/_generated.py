"""A generated affinity cookie (``generated-cookie:NAME``): the key of a client that brought none, issued by the
node that served it, as a load balancer inserts its own cookie.

The request that starts a session carries no key, so it is served wherever it lands. With this source the
middleware then mints an identifier that this node owns (:func:`affinity_mw.ownership.mint_key`) and sets it in
a cookie signed with itsdangerous under the cluster secret: the client's next requests carry a key this node
owns, so they are served here with no hop, and they move only when this node leaves the ring (the key then has
a new owner, like any key). A cookie that is missing, tampered with, signed under a retired secret or older
than ``max_age`` gives no key, so a fresh one is issued.

The cookie is a routing hint, not a credential: it names no user and grants nothing. ``HttpOnly`` and
``SameSite=Lax`` by default; ``Secure`` by default when the client's request was HTTPS (as the first node saw
it); ``SameSite=None`` always comes with ``Secure``, which browsers require.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from itsdangerous import URLSafeTimedSerializer

from ..request import RequestView
from ._base import _cookie_name, _Extractor
from ._verified import _signed_payload, _signing_setup

SALT = "affinity-mw.generated-cookie"
"""The itsdangerous salt: a value signed for another purpose under the same secret is never accepted here."""

DEFAULT_MAX_AGE = 24 * 3600
_SAME_SITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
_DOMAIN_RE = re.compile(
    r"\.?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_PATH_RE = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")  # visible ASCII but ';' (the attribute separator)
_MAX_KEY = 256


class GeneratedCookie(_Extractor):
    """The extractor (it reads and verifies the cookie) and the issuer (:meth:`set_cookie`) of one generated
    cookie; build it with :func:`generated_cookie`."""

    __slots__ = ("_attributes", "_max_age", "_same_site_none", "_secure", "_serializer", "name")

    def __init__(
        self,
        name: str,
        secret_keys: str | bytes | Sequence[str | bytes],
        *,
        max_age: int,
        secure: bool | None,
        http_only: bool,
        same_site: str,
        path: str,
        domain: str | None,
    ) -> None:
        self.name = _cookie_name(name)
        keys = _signing_setup(secret_keys, SALT, max_age)
        self._max_age = max_age
        self._serializer = URLSafeTimedSerializer(keys, salt=SALT)  # type: ignore[arg-type]
        site = _SAME_SITE.get(str(same_site).lower())
        if site is None:
            raise ValueError(f"same_site must be Lax, Strict or None, not {same_site!r}.")
        if site == "None" and secure is False:
            raise ValueError("same_site=None needs Secure: browsers drop a SameSite=None cookie that is not Secure.")
        if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
            raise ValueError(f"The cookie path must start with '/' and hold no ';', space or control, not {path!r}.")
        if domain is not None and (not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain)):
            raise ValueError(f"The cookie domain {domain!r} is not a host name such as 'example.com'.")
        attributes = f"; Max-Age={max_age}; Path={path}"
        if domain:
            attributes += f"; Domain={domain}"
        if http_only:
            attributes += "; HttpOnly"
        attributes += f"; SameSite={site}"
        self._attributes = attributes
        self._secure = secure
        self._same_site_none = site == "None"
        self._desc = (
            f"generated_cookie({name!r}, max_age={max_age}, secure={secure!r}, http_only={bool(http_only)}, "
            f"same_site={site!r}, path={path!r}, domain={domain!r})"
        )

    def __call__(self, req: RequestView) -> str | None:
        key = _signed_payload(req, self.name, self._serializer, self._max_age)
        if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
            return None
        return key

    def set_cookie(self, key: str, *, https: bool) -> bytes:
        """The ``Set-Cookie`` header value that gives the client ``key``; ``https`` is whether the client's
        request was HTTPS (``Secure`` follows it unless ``secure`` was set either way)."""
        secure = self._same_site_none or (https if self._secure is None else self._secure)
        value = self._serializer.dumps(key)
        return f"{self.name}={value}{self._attributes}{'; Secure' if secure else ''}".encode("ascii")


def generated_cookie(
    name: str,
    secret_keys: str | bytes | Sequence[str | bytes],
    *,
    max_age: int = DEFAULT_MAX_AGE,
    secure: bool | None = None,
    http_only: bool = True,
    same_site: str = "Lax",
    path: str = "/",
    domain: str | None = None,
) -> GeneratedCookie:
    """A cookie named ``name`` whose signed value is a key the issuing node owns; the middleware sets it on the
    response to a request that carried no key.

    :param secret_keys: the cluster secret (``AFFINITY_SECRET``), one key or a list for rotation ordered oldest
        to newest: every key verifies, the newest signs.
    :param max_age: seconds the cookie lives and its signature stays valid (one day by default); always finite.
    :param secure: ``True`` or ``False`` to force the ``Secure`` attribute; ``None`` (the default) sets it when
        the client's request was HTTPS.
    :param http_only: the ``HttpOnly`` attribute (scripts never need this cookie).
    :param same_site: ``Lax`` (the default), ``Strict`` or ``None`` (which implies ``Secure``).
    :param path: the cookie's ``Path``, ``/`` by default.
    :param domain: the cookie's ``Domain``; by default none, so the cookie goes back to this host only.
    """
    return GeneratedCookie(
        name,
        secret_keys,
        max_age=max_age,
        secure=secure,
        http_only=http_only,
        same_site=same_site,
        path=path,
        domain=domain,
    )
