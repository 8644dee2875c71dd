"""A peer that tries to poison the forwarders' connection pools, as ASGI (``app``) and WSGI (``wsgi``) apps.

``/poison/<key>/<status>``: answers with a status that carries no body by rule (304, 204; or any status to a
HEAD) but declares ``content-length`` for a forged HTTP response, whose bytes it writes ~30 ms later (uvicorn's
httptools protocol writes them; h11's refuses). A forwarder that pooled the connection would hand those bytes to
the next user as their response, ``set-cookie: sid=attacker`` included. Every other path answers who asked, so a
test can tell whose response it got.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from affinity_mw import AffinityMiddleware, AffinityWSGIMiddleware

FORGED_BODY = b"attacker's body"
FORGED = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nset-cookie: sid=attacker\r\ncontent-length: %d\r\n\r\n%b" % (
    len(FORGED_BODY),
    FORGED_BODY,
)


async def _poisoner(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path.startswith("/poison/"):
        status = int(path.rsplit("/", 1)[1])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"%d" % len(FORGED)), (b"set-cookie", b"sid=user-a")],
            }
        )
        await asyncio.sleep(0.03)
        with contextlib.suppress(Exception):  # uvicorn's h11 protocol refuses a body for a 304
            await send({"type": "http.response.body", "body": FORGED})
        return
    body = ("you are " + dict(scope["headers"]).get(b"x-user", b"?").decode()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = ("you are " + environ.get("HTTP_X_USER", "?")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = AffinityMiddleware(_poisoner)
wsgi = AffinityWSGIMiddleware(_wsgi)
