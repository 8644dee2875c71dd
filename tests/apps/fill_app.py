"""An app with a per-process cache that counts its fills: what workers-as-members must keep at one per tenant.

``GET /t/{tenant}`` fills this process's cache for the tenant if it is cold; ``GET /fills`` answers this
process's fill counts and its ``AFFINITY_SELF``. ``app`` is ASGI (uvicorn), ``wsgi_app`` the same for gunicorn.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from affinity_mw import AffinityMiddleware, AffinityWSGIMiddleware

cache: dict[str, int] = {}
fills: Counter[str] = Counter()


def answer(path: str) -> bytes:
    if path.startswith("/t/"):
        tenant = path[3:]
        if tenant not in cache:  # a cold cache: the expensive fill this deployment wants once per tenant
            cache[tenant] = len(cache)
            fills[tenant] += 1
    return json.dumps({"self": os.environ.get("AFFINITY_SELF"), "pid": os.getpid(), "fills": fills}).encode()


async def _asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    body = answer(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = answer(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = AffinityMiddleware(_asgi)
wsgi_app = AffinityWSGIMiddleware(_wsgi)
