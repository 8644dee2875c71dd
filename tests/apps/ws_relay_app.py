"""An ASGI app that relays every websocket to the first reachable URL of ``WS_OWNERS`` with
:mod:`affinity_mw.websocket` alone: the relay module tested on its own, before any routing."""

from __future__ import annotations

import os
from typing import Any

from affinity_mw.forward import ConnectFailed, ForwardError, request_headers
from affinity_mw.websocket import OwnerRefused, RelayOptions, connect_owner, deny, relay

OWNERS = [url for url in os.environ.get("WS_OWNERS", "").split(",") if url]
PING = float(os.environ.get("WS_PING", "5"))
OPTIONS = RelayOptions(ping_interval=PING, ping_timeout=PING, close_timeout=min(PING, 2.0))
stats = {"connect_failed": 0, "relayed": 0}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":
        body = str(stats).replace("'", '"').encode() if scope["path"] == "/probe/relay" else b"ok\n"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    target = scope["raw_path"].decode("latin-1") + (
        "?" + scope["query_string"].decode() if scope["query_string"] else ""
    )
    client = scope.get("client")
    headers, _ = request_headers(scope["headers"], client_host=client[0] if client else None, scheme="http")
    for url in OWNERS:
        try:
            owner = await connect_owner(url, target, headers, scope.get("subprotocols", ()), OPTIONS)
        except ConnectFailed:
            stats["connect_failed"] += 1
            continue
        except ForwardError as exc:
            await deny(scope, send, 502, f"{type(exc).__name__}\n".encode())
            return
        if isinstance(owner, OwnerRefused):
            await deny(scope, send, owner.status, owner.body, owner.headers)
            return
        stats["relayed"] += 1
        await relay(owner, receive, send)
        return
    await deny(scope, send, 502, b"no owner could be reached\n")
