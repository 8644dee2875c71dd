"""The built-in app of ``affinity-mw demo``: a per-tenant counter in memory, pure ASGI, no framework needed.

``POST /tenants/{t}/hits`` counts one hit for ``t`` in this process and answers the count; ``GET`` reads it;
``/healthz`` answers ok. Wrapped in :class:`~affinity_mw.AffinityMiddleware`, configured from the environment.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

from .asgi import AffinityMiddleware

counters: Counter[str] = Counter()


async def _app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    parts = scope["path"].strip("/").split("/")
    decision = scope.get("state", {}).get("affinity")
    node = decision.served_by if decision is not None else None
    if len(parts) == 3 and parts[0] == "tenants" and parts[2] == "hits":
        if scope["method"] == "POST":
            counters[parts[1]] += 1
        status, body = 200, {"tenant": parts[1], "count": counters[parts[1]], "node": node}
    elif scope["path"] == "/healthz":
        status, body = 200, {"status": "ok", "node": node}
    else:
        status, body = 404, {"error": "not found"}
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


app = AffinityMiddleware(_app)
