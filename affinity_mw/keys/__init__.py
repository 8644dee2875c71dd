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
:func:`signed_cookie` (itsdangerous signatures), :func:`generated_cookie` (one the middleware issues), or
:func:`client_ip` (the socket peer, with an explicit count of trusted proxies). Affinity is about *locality*,
not security: the node that serves a request must still authenticate and authorize it as usual.
"""

from __future__ import annotations

from ._base import Extractor
from ._generated import GeneratedCookie, generated_cookie
from ._plain import client_ip, cookie, header, path, query, region

# Not public: the router's fast path asks which header a plain header extractor reads.
from ._plain import plain_header_name as plain_header_name
from ._spec import KeyOptions, first_of, from_spec

# Not public: the adapters ask which generated cookie (if any) a request without a key should get.
from ._spec import generating_cookie as generating_cookie
from ._verified import jwt_claim, signed_cookie

__all__ = [
    "Extractor",
    "GeneratedCookie",
    "KeyOptions",
    "client_ip",
    "cookie",
    "first_of",
    "from_spec",
    "generated_cookie",
    "header",
    "jwt_claim",
    "path",
    "query",
    "region",
    "signed_cookie",
]
