"""The FastAPI example app plus probe routes the integration tests use to check what survives a forward.

The example stays a clean example; the probes (body hashing, slow streams, repeated cookies, gzip, header echo)
live here so the tests exercise exactly the example's middleware set-up.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware import Middleware

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "fastapi_tenants"))

from app import NODE, app

served: Counter[str] = Counter()
GZIP_BODY = gzip.compress(b"affinity " * 5000, mtime=0)


class CountServed:
    """Pure ASGI, appended after AffinityMiddleware so it counts only the requests this node serves."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            served[scope["path"]] += 1
            served["__all__"] += 1
        await self.app(scope, receive, send)


app.user_middleware.append(Middleware(CountServed))


@app.get("/probe/stats")
async def stats() -> dict[str, object]:
    return {"node": NODE, "served": dict(served)}


@app.post("/probe/{tenant}/sha256")
async def sha256(tenant: str, request: Request) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return {"node": NODE, "sha256": digest.hexdigest(), "size": size}


@app.get("/probe/{tenant}/stream")
async def stream(tenant: str, chunks: int = 5, pause: float = 0.3) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(pause)

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/probe/{tenant}/download")
async def download(tenant: str, size: int = 1024) -> StreamingResponse:
    block = bytes(range(256)) * 256

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            part = block[: min(left, len(block))]
            left -= len(part)
            yield part

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.get("/probe/{tenant}/cookies")
async def cookies(tenant: str, who: str = "anon") -> Response:
    response = JSONResponse({"node": NODE})
    for name in ("a", "b", "c"):
        response.set_cookie(f"{name}_{who}", f"value-{name}-{who}", httponly=True)
    return response


@app.api_route("/probe/{tenant}/gzip", methods=["GET", "HEAD"])
async def gzipped(tenant: str) -> Response:
    return Response(GZIP_BODY, media_type="text/plain", headers={"Content-Encoding": "gzip", "X-Node": NODE})


@app.api_route("/probe/{tenant}/echo", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
async def echo(tenant: str, request: Request) -> dict[str, object]:
    body = await request.body()
    decision = request.state.affinity
    return {
        "node": NODE,
        "method": request.method,
        "headers": [[k, v] for k, v in request.headers.items()],
        "client": request.client.host if request.client else None,
        "scheme": request.url.scheme,
        "body_size": len(body),
        "decision": decision.as_dict(),
    }


@app.get("/probe/{tenant}/status/{code}")
async def status(tenant: str, code: int) -> Response:
    return Response(status_code=code)
